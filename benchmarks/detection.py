"""Detection latency and the cost of waiting, LIST-based, for jobs of N = 10 .. 10,000 workers.

The last worker of a job of N workers waits with one LIST of the job's
namespace per poll; S3 returns 1,000 names a page, so a poll costs
ceil(N / 1000) requests. Here the namespace of each N holds N - 1 result
blobs already (the steady state of a long wait: the last worker has read
them), and **waiters** wait for one more blob each, through the library's
own ``Rendezvous.wait_for_all`` (the same probe and backoff as a real
worker). Waiters are threads of this process (``--waiters`` per N, all N
at once); the harness lands each waiter's blob straight into moto at a
random moment in ``--land`` seconds, and measures

- **detection latency**: the blob landed -> the waiter returned with it
  (one poll pause at most, plus the listing and one GET);
- **requests per waiting worker per minute** (counted by the proxy, LIST
  and GET, with ``--latency-ms`` added to each), overall and in the steady
  state (after ``--steady-after`` seconds, once the default backoff is capped).

Side by side in the same run, the same waiters with other rhythms:
``coop-default`` (``WaitPolicy()``: backoff to pauses of 5-10 s),
``coop-fast`` (``WaitPolicy(max_interval=1)``), and the production
alternative ``ls-every-10s`` (reformatters' ``wait_for_workers``: one listing
every 10 s, no backoff).

    uv run python benchmarks/detection.py --quick      # N = 10, 1000; 4 waiters; fast rhythms
    uv run python benchmarks/detection.py              # N = 10 .. 10,000; every rhythm
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import RESULTS, machine, save_json, table
from _servers import S3, s3_servers

from icechunk_coop import Rendezvous, Sealer, WaitPolicy
from icechunk_coop._records import result_name

SECRET = "detection-bench-secret-012345678"  # noqa: S105 - a benchmark's own
RHYTHMS = ("coop-default", "coop-fast", "ls-every-10s")


def _rendezvous(s3: S3, bucket: str, job: str, policy: WaitPolicy) -> Rendezvous:
    sealer = Sealer.from_env(job, {"ICECHUNK_COOP_SECRET": SECRET})
    url = f"s3://{bucket}/rendezvous"
    options = {"endpoint_url": s3.proxy_url}
    return Rendezvous.for_job(url, job_id=job, sealer=sealer, policy=policy,
                              storage_options=options)  # fmt: skip


def seed(s3: S3, bucket: str, job: str, workers: int) -> None:
    """N - 1 result names in the namespace (their bytes are never read: only listed)."""
    client = s3.boto3_client(counted=False, max_pool=32)

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"rendezvous/{job}/{result_name(i)}", Body=b"x")

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(workers - 1)))


def _fixed_interval(rv: Rendezvous, name: str, interval: float, deadline: float) -> None:
    """reformatters' wait: one listing every ``interval`` seconds, start to start."""
    while time.monotonic() < deadline:
        began = time.monotonic()
        if name in rv.arrived():
            rv.read(name)
            return
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    raise TimeoutError(name)


def run_rhythm(
    s3: S3, rhythm: str, sizes: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every N at once: ``--waiters`` waiters each, their blobs landing at random moments."""
    policies = {
        "coop-default": WaitPolicy(timeout=args.land[1] + 120),
        "coop-fast": WaitPolicy(timeout=args.land[1] + 120, max_interval=1.0),
    }
    rng = random.Random(args.seed)
    buckets = {}
    for n in sizes:
        bucket = f"d-{rhythm.replace('-', '')[:12]}-{n}-{uuid.uuid4().hex[:6]}".lower()
        s3.create_bucket(bucket)
        job = f"detect{n}"
        seed(s3, bucket, job, n)
        buckets[n] = (bucket, job)
    direct = s3.boto3_client(counted=False, max_pool=64)
    samples: list[dict[str, Any]] = []
    lock = threading.Lock()
    start_unix = time.time() + 1.0
    start = time.monotonic() + 1.0

    def waiter(n: int, k: int, land_after: float) -> None:
        bucket, job = buckets[n]
        name = result_name(10**8 + k)  # a name no worker of the job has
        policy = policies.get(rhythm, WaitPolicy())
        rv = _rendezvous(s3, bucket, job, policy)
        sealed = rv.sealer.seal({"k": k}, name=name, content="json")
        landed: list[float] = []

        def land() -> None:
            direct.put_object(Bucket=bucket, Key=f"rendezvous/{job}/{name}", Body=sealed)
            landed.append(time.monotonic())

        timer = threading.Timer(max(0.0, start + land_after - time.monotonic()), land)
        time.sleep(max(0.0, start - time.monotonic()))
        timer.start()
        began = time.monotonic()
        if rhythm == "ls-every-10s":
            _fixed_interval(rv, name, 10.0, began + args.land[1] + 120)
        else:
            rv.wait_for_all([name])
        seen = time.monotonic()
        timer.join()
        with lock:
            samples.append({"n": n, "waiter": k, "latency_s": seen - landed[0],
                            "waited_s": seen - began, "began": began, "seen": seen})  # fmt: skip

    jobs: list[Callable[[], None]] = []
    for n in sizes:
        for k in range(args.waiters):
            land_after = rng.uniform(*args.land)
            jobs.append(lambda n=n, k=k, a=land_after: waiter(n, k, a))  # type: ignore[misc]
    threads = [threading.Thread(target=j, daemon=True) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.3)  # the proxy records a request when its answer is back
    rows = []
    for n in sizes:
        bucket, _ = buckets[n]
        mine = [s for s in samples if s["n"] == n]
        events = s3.events(bucket)
        waited_min = sum(s["waited_s"] for s in mine) / 60
        steady_from = start_unix + args.steady_after
        steady_min = sum(max(0.0, s["seen"] - (start + args.steady_after)) for s in mine) / 60
        steady = [e for e in events if e[0] >= steady_from]
        lat = sorted(s["latency_s"] for s in mine)
        rows.append({
            "rhythm": rhythm, "workers": n, "waiters": len(mine),
            "latency_mean_s": sum(lat) / len(lat), "latency_max_s": lat[-1],
            "latency_p50_s": lat[len(lat) // 2],
            "requests_per_waiter_min": len(events) / waited_min if waited_min else None,
            "steady_requests_per_waiter_min": len(steady) / steady_min if steady_min else None,
            "lists": sum(1 for e in events if e[1] == "LIST"),
            "gets": sum(1 for e in events if e[1] in {"GET", "HEAD"}),
            "samples": mine,
        })  # fmt: skip
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for rhythm in RHYTHMS:
        sel = sorted((r for r in rows if r["rhythm"] == rhythm), key=lambda r: r["workers"])
        if not sel:
            continue
        ns = [r["workers"] for r in sel]
        ax_l.plot(ns, [r["latency_mean_s"] for r in sel], marker="o", label=f"{rhythm} mean")
        ax_l.plot(ns, [r["latency_max_s"] for r in sel], ls="--", marker=".",
                  label=f"{rhythm} max")  # fmt: skip
        ax_r.plot(ns, [r["steady_requests_per_waiter_min"] or r["requests_per_waiter_min"]
                       for r in sel], marker="o", label=rhythm)  # fmt: skip
    for ax, what in ((ax_l, "detection latency, s"), (ax_r, "requests per waiter per minute")):
        ax.set_xscale("log")
        ax.set_xlabel("workers N in the job (names listed per poll)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax_r.set_yscale("log")
    fig.suptitle("Waiting on a LIST: detection latency and cost (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--rhythms", nargs="+", choices=RHYTHMS, default=list(RHYTHMS))
    parser.add_argument("--waiters", type=int, default=6, help="per N")
    parser.add_argument("--land", type=float, nargs=2, default=[25.0, 85.0], metavar=("FROM", "TO"))
    parser.add_argument("--steady-after", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="detection", help="file name under benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.waiters = [10, 1000], 4
        args.rhythms, args.land, args.steady_after = ["coop-fast", "ls-every-10s"], [5.0, 25.0], 3.0
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with s3_servers(latency_ms=args.latency_ms) as s3:
        for rhythm in args.rhythms:
            got = run_rhythm(s3, rhythm, args.workers, args)
            rows.extend(got)
            for r in got:
                print(f"{rhythm:>13} N={r['workers']:>6}: latency mean {r['latency_mean_s']:.2f} "
                      f"max {r['latency_max_s']:.2f} s, "
                      f"{_f(r['steady_requests_per_waiter_min'], 1)} requests/waiter/min "
                      "(steady)", flush=True)  # fmt: skip
    by = {(r["rhythm"], r["workers"]): r for r in rows}
    headers = ["rhythm", "N", "latency mean s", "latency max s", "req/waiter/min (all)",
               "req/waiter/min (steady)", "LIST pages per poll",
               "x requests of coop-default"]  # fmt: skip
    lines = []
    for r in rows:
        base = by.get(("coop-default", r["workers"]))
        ratio = (r["steady_requests_per_waiter_min"] / base["steady_requests_per_waiter_min"]
                 if base and base["steady_requests_per_waiter_min"]
                 and r["steady_requests_per_waiter_min"] else None)  # fmt: skip
        lines.append([r["rhythm"], r["workers"], _f(r["latency_mean_s"]), _f(r["latency_max_s"]),
                      _f(r["requests_per_waiter_min"], 1),
                      _f(r["steady_requests_per_waiter_min"], 1),
                      -(-(r["workers"] + r["waiters"]) // 1000), _f(ratio, 2)])  # fmt: skip
    print()
    print(table(headers, lines))
    meta = {"command": " ".join(["uv run python benchmarks/detection.py", *sys.argv[1:]]),
            "waiters_are": "threads of one process", "latency_ms": args.latency_ms,
            "land_window_s": args.land, "steady_after_s": args.steady_after,
            **machine(load)}  # fmt: skip
    save_json(args.name, {"meta": meta, "rows": rows})
    plot(rows, RESULTS / f"{args.name}.png")
    print(f"wrote {RESULTS / (args.name + '.json')} and {RESULTS / (args.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
