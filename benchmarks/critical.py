"""The protocol's critical path: N worker processes released at once, each with 2 s of work.

What the protocol adds to a job is everything on the path from "every pod
is up" to "the commit is visible" that is not the slowest worker's own work:
worker 0's setup, the others noticing it, publishing, the last worker
noticing the last result, merging and committing. Python start-up is not
part of it (pods start in parallel on real machines; here eight of them
would share two cores), so every worker imports and builds its job first,
then sleeps until one shared instant (``--release-at``) and only then runs.

Each worker is ``write_worker.py --strategy coop`` started like a pod
(environment variables), against moto through the counting proxy (add
``--latency-ms 20`` to make every request as slow as a small S3 GET). Each
writes one row (one chunk) after ``--seconds`` of simulated source I/O.

Reported per run, from the workers' own clocks (one machine, one clock):

- **to outcome**: release -> the ``committed`` marker's time (readers and
  waiting twins see the outcome from then on);
- **overhead**: to outcome minus the slowest worker's ``work`` step; the
  target is 0.5 s at N = 8;
- **to exit**: release -> the last worker's return (cleanup included);
- the last worker's and worker 0's own steps, and requests through the proxy;
- the **critical chain** (``_chain.py``): worker 0's requests until its setup
  landed, then the last worker's from the moment the setup was visible until
  the primary's compare-and-set, by phase (setup, wait for setup, work,
  publish, wait for results, commit), in seconds and in **sequential round
  trips** (requests that overlap in time count once). The round trips are
  what a user multiplies by their store's latency; they should not grow
  with N.

Workers tell their requests apart by their access key: worker i signs with
``w<i>`` (moto accepts any key; ``_servers.S3.worker_env``), and the proxy
logs who sent what, when. Workers are processes at every N (64 fit in memory
here; their start-up, 1-2 s of CPU each, is before the release).

Each worker ends with ``os._exit`` once it has reported (``--exits normal``
for the interpreter's own teardown: 0.15-0.25 s of CPU a worker for numpy,
zarr, icechunk and botocore, which on two cores the workers that published
first take from the last one while it merges and commits; in pods each
spends its own).

    uv run python benchmarks/critical.py --quick   # N = 8, one run (~40 s)
    uv run python benchmarks/critical.py           # N = 2, 8, 32, 64; 0 and 20 ms
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _chain import PHASES, critical_chain
from _report import cell, machine, table, write_results
from _servers import S3, s3_servers
from _writes import WriteConfig, run_write

from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED


def committed_at(s3: S3, row: dict[str, Any]) -> float:
    """When the finalizer published the ``committed`` marker (unix time)."""
    job_id, bucket = row["job_id"], row["bucket"]
    sealer = Sealer.from_env(job_id, {"ICECHUNK_COOP_SECRET": row["secret"]})
    rv = Rendezvous.for_job(f"s3://{bucket}/rendezvous", job_id=job_id, sealer=sealer,
                            storage_options={"endpoint_url": s3.direct_url})  # fmt: skip
    wire = rv.read(COMMITTED)
    if wire is None:
        raise RuntimeError(f"job {job_id}: no committed marker")
    return Committed.from_wire(wire, rv.location(COMMITTED)).at


def servers_cpu() -> float:
    """CPU seconds spent so far by moto and the counting proxy (this process's children).

    Read from ``/proc`` (Linux): each server's utime + stime. 0 where there is no ``/proc``.
    """
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat, argv = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rpartition(")")[2].split()  # state, ppid, ..., utime (11), stime (12)
        if int(fields[1]) == os.getpid() and (b"moto" in argv or b"_proxy.py" in argv):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def one_run(s3: S3, workers: int, seconds: float, startup: float, *,
            quick_exit: bool = True) -> dict[str, Any]:  # fmt: skip
    release = time.time() + startup
    cfg = WriteConfig(rows=workers, cols=1000, row_seconds=seconds, max_interval=10.0,
                      timeout=300.0, release_at=release, quick_exit=quick_exit)  # fmt: skip
    at_release: list[float] = []
    timer = threading.Timer(startup, lambda: at_release.append(servers_cpu()))
    timer.start()
    run = run_write(s3, "coop", workers, cfg)
    servers = servers_cpu() - (at_release[0] if at_release else float("nan"))
    timer.cancel()
    if run["failures"] or not run.get("data_ok"):
        raise RuntimeError(f"run failed: {run['failures'] or 'wrong data on main'}")
    outcomes = run["outcomes"]
    late = max(o["released"] for o in outcomes) - release
    if late > 0.25:
        print(f"  note: a worker was still starting {late:.2f} s after the release "
              "(raise --startup)", flush=True)  # fmt: skip
    at = committed_at(s3, run)
    chain = critical_chain(s3.log(run["bucket"]), workers=workers, job_id=run["job_id"],
                           released=release)  # fmt: skip
    slowest = max(o["seconds"]["work"] for o in outcomes)
    last = next(o for o in outcomes if o["status"] == "committed")
    first = next(o for o in outcomes if o.get("index") == 0)
    return {
        "workers": workers,
        "work_s": seconds,
        "to_outcome_s": at - release,
        "slowest_work_s": slowest,
        "overhead_s": at - release - slowest,
        "to_exit_s": max(o["ended"] for o in outcomes) - release,
        "late_start_s": late,
        "last_steps_s": last["seconds"],
        "first_steps_s": first["seconds"],
        "requests": run["requests_total"],
        "chain": chain,
        # CPU seconds every worker spent in its run, summed: next to 2 cores x the
        # job's seconds it says how much of the overhead is waiting for a core.
        "run_cpu_s": sum(o["run_cpu_s"] for o in outcomes),
        # moto and the counting proxy, from the release until every worker had exited:
        # on two cores they share the CPU with the workers (on S3 they are not ours).
        "servers_cpu_s": servers,
    }


def _phase(phase: dict[str, Any]) -> str:
    return f"{phase['round_trips']} / {phase['seconds']:.2f} s"


def cpu_floor(row: dict[str, Any]) -> float:
    """The run's CPU (workers, moto and the proxy, release to exit) over the machine's cores.

    The work is a sleep, so nearly all of that CPU falls outside it: in the
    setup, publish, merge and commit that make the overhead. An overhead
    close to this figure is what the machine can serve, not time spent
    waiting on requests; with a core per worker and a real object store
    (whose CPU is not the job's) it shrinks to the last worker's own.
    """
    return float(row["run_cpu_s"] + row["servers_cpu_s"]) / (os.cpu_count() or 1)


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median run by overhead (its steps stay together), with every run's overhead."""
    ordered = sorted(runs, key=lambda r: r["overhead_s"])
    middle = dict(ordered[len(ordered) // 2])
    middle["overheads_s"] = [r["overhead_s"] for r in runs]
    middle["overhead_median_s"] = statistics.median(middle["overheads_s"])
    return middle


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"N={r['workers']}\n+{r['latency_ms']:g} ms\n{r['exit']} exit" for r in rows]
    work = [r["slowest_work_s"] for r in rows]
    over = [r["overhead_median_s"] for r in rows]
    ax.bar(labels, work, label="slowest worker's work", color="tab:green")
    ax.bar(labels, over, bottom=work, label="protocol overhead (median)", color="tab:red")
    ax.axhline(rows[0]["work_s"] + 0.5, color="black", lw=0.8, ls="--",
               label="work + 0.5 s (target)")  # fmt: skip
    ax.set_ylabel("seconds, release -> commit visible")
    ax.legend(fontsize=8)
    ax.set_title("Critical path, workers released at once (start-up excluded)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="2,8,32,64", help="comma-separated N")
    parser.add_argument("--seconds", type=float, default=2.0, help="work per worker")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated ms per request")
    parser.add_argument("--startup", type=float, default=0.0,
                        help="seconds from starting the workers to releasing them "
                             "(default 6 + 1.5 per worker)")  # fmt: skip
    parser.add_argument("--exits", default="quick",
                        help="comma-separated: quick (workers end with os._exit once reported), "
                             "normal (the interpreter's teardown, 0.15-0.25 s of CPU each, "
                             "while the last worker commits)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="N = 8, one run, 0 ms")
    parser.add_argument("--name", default="critical", help="file name under benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.repeat, args.latency_ms = "8", 1, "0"
        args.name = "critical-quick" if args.name == "critical" else args.name
    load = os.getloadavg()
    rows = []
    for latency in [float(x) for x in args.latency_ms.split(",")]:
        with s3_servers(latency_ms=latency) as s3:
            for n, exit_ in [(int(x), e) for x in args.workers.split(",")
                             for e in args.exits.split(",")]:  # fmt: skip
                if exit_ not in {"quick", "normal"}:
                    parser.error(f"--exits: {exit_!r} is neither quick nor normal")
                startup = args.startup or 6 + 1.5 * n
                runs = [one_run(s3, n, args.seconds, startup, quick_exit=exit_ == "quick")
                        for _ in range(args.repeat)]  # fmt: skip
                row = {**summarise(runs), "latency_ms": latency, "exit": exit_}
                rows.append(row)
                print(f"N={n} +{latency:g} ms, {exit_} exit: "
                      f"overhead {row['overhead_median_s']:.2f} s "
                      f"(runs: {', '.join(f'{o:.2f}' for o in row['overheads_s'])}); "
                      f"chain {row['chain']['round_trips']} round trips", flush=True)  # fmt: skip
    print()
    print(
        table(
            ["N", "ms/request", "exit", *PHASES, "chain"],
            [
                [
                    r["workers"],
                    f"{r['latency_ms']:g}",
                    r["exit"],
                    *(_phase(r["chain"]["phases"][p]) for p in PHASES),
                    f"{r['chain']['round_trips']} / {r['chain']['seconds']:.2f} s",
                ]
                for r in rows
            ],
        )
    )
    headers = ["N", "ms/request", "exit", "to outcome s", "slowest work s", "overhead s (median)",
               "to exit s", "requests", "CPU s (all workers)", "CPU s (moto + proxy)",
               "CPU / cores s", "last worker's steps", "worker 0's steps"]  # fmt: skip
    lines = [[r["workers"], f"{r['latency_ms']:g}", r["exit"], cell(r["to_outcome_s"]),
              cell(r["slowest_work_s"]), cell(r["overhead_median_s"]), cell(r["to_exit_s"]),
              r["requests"], cell(r["run_cpu_s"], 1), cell(r["servers_cpu_s"], 1),
              cell(cpu_floor(r)),
              ", ".join(f"{k} {v:.2f}" for k, v in r["last_steps_s"].items()),
              ", ".join(f"{k} {v:.2f}" for k, v in r["first_steps_s"].items())]
             for r in rows]  # fmt: skip
    print()
    print(table(headers, lines))
    meta = {"command": " ".join(["uv run python benchmarks/critical.py", *sys.argv[1:]]),
            "workers_are": "write_worker.py processes, released at one instant after start-up",
            **machine(load)}  # fmt: skip
    write_results(args.name, meta, rows, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
