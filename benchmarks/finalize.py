"""Finalize at scale: how long the last worker takes to collect N results, merge and commit.

Workers 0..N-2 are simulated by real forks (each writes its own chunks into
a fork of the real setup; their sealed results are made in this process and
stored straight into moto, so seeding is not counted); then the last worker
runs in a process of its own, talking through the counting proxy, which adds
``--latency-ms`` to every request (a small S3 GET takes 10-30 ms; moto
answers in under 2).

Two ways for the results to arrive (``--arrival``):

- ``before``: every result is there before the last worker starts (the
  worst case for collecting: N blobs to read at once);
- ``during``: the results land while the last worker waits, spread evenly
  over ``--spread`` seconds. "after last" is then the time from the last
  result landing to the commit: what the streaming merge leaves on the
  critical path (one poll, one blob, the plan, the checks, the commit).

Reported per case: the last worker's seconds (collect = its setup read, its
writes, the wait and the merge as results arrive; commit = plan, checks,
compare-and-set, marker, cleanup), its peak memory (VmHWM), and the
requests it made. A JSON file and a PNG plot go under ``benchmarks/results/``.

``--check on off`` (the default) runs every case twice, with the last
worker's overlap check (no chunk written by two workers, ``_overlap``) and
with it switched off in the finalizer's process, and prints the ratio of
the two side by side: what refusing silent loss costs.

    uv run python benchmarks/finalize.py --quick
    uv run python benchmarks/finalize.py --cases 1000x100 --latency-ms 20
    uv run python benchmarks/finalize.py --cases 10000x10 --latency-ms 0 --check on off
    uv run python benchmarks/finalize.py --cases 10x10 100x100 1000x100 10000x10 --latency-ms 0 20
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import icechunk
import numpy as np
import zarr
from zarr.core.buffer.cpu import Buffer
from zarr.core.sync import sync

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, machine, save_json, table
from _servers import S3, clean_environ, s3_servers

from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    WaitPolicy,
    WorkerIdentity,
    commit_merged,
    get_forked_session,
    get_merged_sessions,
    icechunk_storage,
)
from icechunk_coop.protocol import _finalize
from icechunk_coop.protocol._work import open_forks, result_of
from icechunk_coop.wire._records import result_name

SECRET = "finalize-bench-secret-0123456789"  # noqa: S105 - a benchmark's own
DEFAULT_CASES = ["10x10", "100x10", "100x100", "1000x10", "1000x100", "10x1000", "100x1000",
                 "10000x10"]  # fmt: skip
QUICK_CASES = ["10x10", "100x10"]


def _job(
    index: int, total: int, bucket: str, name: str, env: dict[str, str], poll: float = 10.0
) -> CooperativeJob:
    return CooperativeJob.create(
        identity=WorkerIdentity(worker_index=index, workers_total=total, job_name=name),
        rendezvous_url=f"s3://{bucket}/rendezvous",
        primary=IcechunkTarget(
            name="primary", storage=icechunk_storage(f"s3://{bucket}/repo", env)
        ),
        environ={**env, "ICECHUNK_COOP_SECRET": SECRET},
        policy=WaitPolicy(initial_interval=min(0.25, poll), max_interval=poll),
    )


def seed(s3: S3, bucket: str, name: str, workers: int, chunks: int) -> tuple[str, dict[str, bytes]]:
    """Worker 0's setup (published); the job id and the sealed results of workers 0..N-2.

    Each simulated worker forks the real setup and writes its own chunks, as
    a pod would; the setup is read once and the forks are made on 8 threads,
    so seeding 10,000 workers takes minutes, not an hour.
    """
    env = s3.direct_env
    os.environ.update(env)  # the rendezvous's s3fs reads AWS_ENDPOINT_URL
    rows = workers * chunks

    def prepare(stores: Any) -> None:
        zarr.open_group(stores.primary, mode="a").create_array(
            "a", shape=(rows,), chunks=(1,), dtype="<i2", fill_value=0, compressors=None
        )

    first = _job(0, workers, bucket, name, env)
    setup = get_forked_session(first, prepare).setup
    ctx = first._ctx
    sealer = first.meeting.rendezvous.sealer  # type: ignore[attr-defined]

    def one(index: int) -> tuple[str, bytes]:
        forks = open_forks(ctx, setup)
        # The chunks' bytes straight into the fork's store (what zarr would write for an
        # uncompressed little-endian int16): seeding 10,000 forks through zarr's array
        # machinery would take longer than the finalize it prepares.
        value = Buffer.from_bytes(np.int16(index % 30000).tobytes())
        keys = [f"a/c/{c}" for c in range(index * chunks, (index + 1) * chunks)]
        sync(_set_all(forks.stores.primary, keys, value))
        result = attrs.evolve(result_of(ctx, forks, {"worker": index}), index=index)
        blob = result_name(index)
        return blob, sealer.seal(result.to_wire(), name=blob, content="pickle")

    with ThreadPoolExecutor(8) as pool:
        return first.job_id, dict(pool.map(one, range(workers - 1)))


async def _set_all(store: Any, keys: list[str], value: Buffer) -> None:
    await asyncio.gather(*(store.set(key, value) for key in keys))


def land(s3: S3, bucket: str, job_id: str, blobs: dict[str, bytes], spread: float) -> float:
    """Store the sealed results straight into moto, evenly over ``spread`` seconds.

    Returns the Unix time at which the last one had landed.
    """
    client = s3.boto3_client(counted=False, max_pool=16)
    items = list(blobs.items())
    started = time.monotonic()

    def put(n: int) -> None:
        if spread:
            time.sleep(max(0.0, started + spread * (n + 1) / len(items) - time.monotonic()))
        name, data = items[n]
        client.put_object(Bucket=bucket, Key=f"rendezvous/{job_id}/{name}", Body=data)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(len(items))))
    return time.time()


def _peak_mib() -> float:
    """This process's own peak resident memory.

    Not ``ru_maxrss``: Linux carries it over ``execve`` from the process that
    spawned us, so it would report the harness's memory (all those seeded
    forks) as the finalizer's. ``VmHWM`` belongs to this address space only.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finalize_main(
    bucket: str, name: str, workers: int, chunks: int, poll: float, check: str
) -> None:
    """The last worker, in its own process: timed, with its peak memory."""
    if check == "off":  # the baseline: results merged unchecked, as before the check existed
        _finalize.overlap_check = lambda ctx: lambda result: None  # type: ignore[assignment]
    env = dict(os.environ)
    job = _job(workers - 1, workers, bucket, name, env, poll)
    print("READY", flush=True)  # imported and built: the results may start landing
    started = time.perf_counter()
    forks = get_forked_session(job)
    array = zarr.open_array(forks.stores.primary, path="a", mode="r+")
    array[(workers - 1) * chunks :] = 1
    merged = get_merged_sessions(job, forks, {"worker": workers - 1})
    collected = time.perf_counter()
    commit_merged(job, merged, message="bench")
    done = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"collect_s": collected - started, "commit_s": done - collected,
                      "total_s": done - started, "peak_mib": _peak_mib(),
                      "cpu_s": usage.ru_utime + usage.ru_stime,
                      "done_unix": time.time()}))  # fmt: skip


def case(
    s3: S3, workers: int, chunks: int, arrival: str, spread: float, poll: float, check: str
) -> dict[str, Any]:
    bucket = f"fin-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    name = f"fin{workers}x{chunks}"
    t0 = time.perf_counter()
    job_id, blobs = seed(s3, bucket, name, workers, chunks)
    seeded = time.perf_counter() - t0
    last_landed = 0.0
    if arrival == "before":
        last_landed = land(s3, bucket, job_id, blobs, 0.0)
    before = sum(s3.counts(bucket).values())
    argv = [sys.executable, __file__, "--finalize", bucket, name, str(workers), str(chunks),
            str(poll), check]  # fmt: skip
    env = clean_environ({**s3.env(), "ICECHUNK_LOG": "error"})
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    ready = proc.stdout.readline()  # after the process's imports: start-up is not measured
    if arrival == "during" and ready.startswith("READY"):
        last_landed = land(s3, bucket, job_id, blobs, spread)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err[-3000:])
    row = json.loads(out.strip().splitlines()[-1])
    row.update(workers=workers, chunks=chunks, seed_s=seeded, arrival=arrival, check=check)
    done_unix = row.pop("done_unix")
    row["after_last_s"] = done_unix - last_landed if arrival == "during" else None
    time.sleep(0.3)  # the proxy records a request when its answer is back
    row["requests"] = sum(s3.counts(bucket).values()) - before
    repo = icechunk.Repository.open(icechunk_storage(f"s3://{bucket}/repo", s3.direct_env))
    tip = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    step = max(1, (workers - 1) // 50)  # about 50 workers' first and last chunks, and the last's
    for index in [*range(0, workers - 1, step), workers - 2]:
        got = (int(tip[index * chunks]), int(tip[(index + 1) * chunks - 1]))
        if got != (index % 30000,) * 2:
            raise RuntimeError(f"worker {index}'s chunks are wrong in the commit: {got}")
    if int(tip[-1]) != 1:
        raise RuntimeError("the last worker's chunks are missing from the commit")
    return row


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


HEADERS = ["latency ms", "arrival", "check", "N", "chunks", "collect s", "commit s", "total s",
           "after last s", "cpu s", "peak MiB", "requests"]  # fmt: skip


def _cells(r: dict[str, Any]) -> list[object]:
    return [f"{r['latency_ms']:.0f}", r["arrival"], r.get("check", "on"), r["workers"],
            r["chunks"],
            f"{r['collect_s']:.2f}", f"{r['commit_s']:.2f}", f"{r['total_s']:.2f}",
            _f(r["after_last_s"]), f"{r.get('cpu_s', 0):.1f}", f"{r['peak_mib']:.0f}",
            r["requests"]]  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sorted({(r["latency_ms"], r["chunks"], r["arrival"]) for r in rows})
    for latency, chunks, arrival in keys:
        sel = sorted(
            (r for r in rows if (r["latency_ms"], r["chunks"], r["arrival"]) == (latency, chunks,
                                                                                  arrival)),
            key=lambda r: r["workers"],
        )  # fmt: skip
        # Results landing during the wait: what is left once the last one landed.
        when = "after the last landed" if arrival == "during" else "all there at start"
        label = f"{chunks} chunks, {latency:.0f} ms, {when}"
        ns = [r["workers"] for r in sel]
        key = "after_last_s" if arrival == "during" else "total_s"
        ax_t.plot(ns, [r[key] for r in sel], marker="o", label=label)
        ax_m.plot(ns, [r["peak_mib"] for r in sel], marker="o", label=label)
    for ax, what in ((ax_t, "last worker's seconds"), (ax_m, "peak memory, MiB")):
        ax.set_xscale("log")
        ax.set_xlabel("workers N")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    ax_t.set_yscale("log")
    ax_t.legend(fontsize=7)
    fig.suptitle("Finalize scaling (moto on a shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_check_cost(rows: list[dict[str, Any]]) -> None:
    """With the overlap check against without, case by case: seconds, memory, CPU."""
    key = ("latency_ms", "arrival", "workers", "chunks")
    on = {tuple(r[k] for k in key): r for r in rows if r.get("check", "on") == "on"}
    off = {tuple(r[k] for k in key): r for r in rows if r.get("check") == "off"}
    pairs = [(k, on[k], off[k]) for k in on if k in off]
    if not pairs:
        return
    cells = [[f"{k[0]:.0f}", k[1], k[2], k[3], f"{a['total_s']:.2f}", f"{b['total_s']:.2f}",
              f"{a['total_s'] / b['total_s']:.2f}x", f"{a['cpu_s']:.1f} / {b['cpu_s']:.1f}",
              f"{a['peak_mib']:.0f} / {b['peak_mib']:.0f}"]
             for k, a, b in pairs]  # fmt: skip
    print("\nthe overlap check's cost (with / without):")
    print(table(["latency ms", "arrival", "N", "chunks", "with s", "without s", "ratio",
                 "cpu s", "peak MiB"], cells))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="NxCHUNKS")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    parser.add_argument("--arrival", nargs="+", choices=("before", "during"), default=["before"])
    parser.add_argument("--spread", type=float, default=10.0, help="seconds, for 'during'")
    parser.add_argument("--poll", type=float, default=1.0, help="the last worker's max interval")
    parser.add_argument("--quick", action="store_true",
                        help=f"cases {' '.join(QUICK_CASES)}, 20 ms, both arrivals")  # fmt: skip
    parser.add_argument("--name", default="finalize", help="file name under benchmarks/results")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="measure nothing: one table and plot of these runs' rows")  # fmt: skip
    parser.add_argument("--check", nargs="+", choices=("on", "off"), default=["on", "off"],
                        help="the overlap check on, off, or both side by side")  # fmt: skip
    parser.add_argument("--finalize", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.finalize:
        bucket, name, workers, chunks, poll, check = args.finalize
        finalize_main(bucket, name, int(workers), int(chunks), float(poll), check)
        return 0
    if args.combine:
        runs = [json.loads(path.read_text()) for path in args.combine]
        rows = [row for run in runs for row in run["rows"]]
        print(table(HEADERS, [_cells(r) for r in rows]))
        meta = {"combined": [{"file": p.name, **run["meta"]}
                             for p, run in zip(args.combine, runs, strict=True)]}  # fmt: skip
        save_json(args.name, {"meta": meta, "rows": rows})
        plot(rows, RESULTS / f"{args.name}.png")
        print(f"\nwrote {RESULTS / (args.name + '.json')} and {RESULTS / (args.name + '.png')}")
        return 0
    if args.quick:
        args.cases, args.arrival, args.spread = QUICK_CASES, ["before", "during"], 3.0
        args.latency_ms = [20.0]
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases]
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    headers = HEADERS
    print(" | ".join(headers), flush=True)
    for latency in args.latency_ms:
        with s3_servers(latency_ms=latency) as s3:
            for arrival, (workers, chunks), check in itertools.product(
                args.arrival, cases, args.check
            ):
                row = case(s3, workers, chunks, arrival, args.spread, args.poll, check)
                row["latency_ms"] = latency
                rows.append(row)
                print(f"{latency:.0f} | {arrival} | {check} | {workers} | {chunks} | "
                          f"{row['collect_s']:.2f} | {row['commit_s']:.2f} | "
                      f"{row['total_s']:.2f} | {_f(row['after_last_s'])} | "
                      f"{row['cpu_s']:.1f} | {row['peak_mib']:.0f} | {row['requests']}",
                      flush=True)  # fmt: skip
    print()
    print(table(HEADERS, [_cells(r) for r in rows]))
    print_check_cost(rows)
    meta = {"command": " ".join(["uv run python benchmarks/finalize.py", *sys.argv[1:]]),
            "spread_s": args.spread, "poll_s": args.poll,
            **machine(load)}  # fmt: skip
    save_json(args.name, {"meta": meta, "rows": rows})
    plot(rows, RESULTS / f"{args.name}.png")
    print(f"\nwrote {RESULTS / (args.name + '.json')} and {RESULTS / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
