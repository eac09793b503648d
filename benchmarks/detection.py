"""Detection latency and the cost of waiting, LIST-based, for jobs of N = 10 .. 10,000 workers.

The last worker of a job of N workers waits with one LIST of the job's
namespace per poll; S3 returns 1,000 names a page, so a poll costs
ceil(N / 1000) requests. Here the namespace of each N holds N - 1 result
blobs already (the steady state of a long wait: the last worker has read
them), and **waiters** wait for one more blob each, through the library's
own ``Rendezvous.wait_for_all`` (the same probe and backoff as a real
worker). Waiters are threads of this process (``--waiters`` at once, one N
after another: moto lists in Python, and many waiters listing 10,000 names
at once would measure moto); the harness lands each waiter's blob straight into moto at a
random moment of its rhythm's window, and measures

- **detection latency**: the blob landed -> the waiter returned with it
  (one poll pause at most, plus the listing and one GET); "one listing"
  says what a poll's listing costs here (moto is far slower than S3 at it);
- **requests per waiting worker per minute** (counted by the proxy, LIST
  and GET, with ``--latency-ms`` added to each), overall and in the steady
  state (once the rhythm's pauses have settled: ``STEADY_AFTER``).

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import cell, machine, table, write_results
from _servers import S3, s3_servers

from icechunk_coop import WaitPolicy
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._records import result_name

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


#: When each rhythm's blobs land (seconds after its waiters start): past the default
#: policy's 18.5 s warm-up for coop-default, so its pauses are the steady 5-10 s.
WINDOWS = {"coop-default": (25.0, 65.0), "coop-fast": (5.0, 25.0), "ls-every-10s": (5.0, 35.0)}
#: When each rhythm's pauses have settled: the default policy needs 18.5 s to reach its
#: cap, the fast one about 3 s; a fixed interval is steady from the start.
STEADY_AFTER = {"coop-default": 20.0, "coop-fast": 3.0, "ls-every-10s": 0.0}


def list_seconds(s3: S3, bucket: str, job: str) -> float:
    """How long one poll's listing of the namespace takes here (median of 3)."""
    rv = _rendezvous(s3, bucket, job, WaitPolicy())
    times = []
    for _ in range(3):
        began = time.monotonic()
        rv.arrived()
        times.append(time.monotonic() - began)
    return sorted(times)[1]


def run_rhythm(
    s3: S3, rhythm: str, n: int, bucket: str, job: str, args: argparse.Namespace, first: int
) -> dict[str, Any]:
    """``--waiters`` waiters at once, for one N, their blobs landing at random moments."""
    window = WINDOWS[rhythm] if args.land is None else tuple(args.land)
    settle = STEADY_AFTER[rhythm] if args.steady_after is None else args.steady_after
    timeout = window[1] + 300
    policy = {"coop-default": WaitPolicy(timeout=timeout),
              "coop-fast": WaitPolicy(timeout=timeout, max_interval=1.0)}.get(rhythm)  # fmt: skip
    rng = random.Random(args.seed + n)
    direct = s3.boto3_client(counted=False, max_pool=16)
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_unix = time.time() + 1.0
    start = time.monotonic() + 1.0

    def waiter(k: int, land_after: float) -> None:
        name = result_name(10**8 + first + k)  # a name no worker of the job has
        rv = _rendezvous(s3, bucket, job, policy or WaitPolicy(timeout=timeout))
        sealed = rv.sealer.seal({"k": k}, name=name, content="json")
        landed: list[float] = []

        def land() -> None:
            direct.put_object(Bucket=bucket, Key=f"rendezvous/{job}/{name}", Body=sealed)
            landed.append(time.monotonic())

        time.sleep(max(0.0, start - time.monotonic()))
        timer = threading.Timer(land_after, land)
        timer.start()
        began = time.monotonic()
        try:
            if policy is None:
                _fixed_interval(rv, name, 10.0, began + timeout)
            else:
                rv.wait_for_all([name])
        except Exception as exc:  # reported in the row, not raised: a benchmark asserts nothing
            with lock:
                errors.append(repr(exc)[:300])
            timer.join()
            return
        seen = time.monotonic()
        timer.join()
        with lock:
            samples.append({"waiter": k, "latency_s": seen - landed[0], "waited_s": seen - began,
                            "seen": seen})  # fmt: skip

    threads = [threading.Thread(target=waiter, args=(k, rng.uniform(*window)), daemon=True)
               for k in range(args.waiters)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end_unix = time.time()
    time.sleep(0.3)  # the proxy records a request when its answer is back
    events = [e for e in s3.events(bucket) if start_unix - 1.0 <= e[0] <= end_unix]
    waited_min = sum(s["waited_s"] for s in samples) / 60
    steady_min = sum(max(0.0, s["seen"] - (start + settle)) for s in samples) / 60
    steady = [e for e in events if e[0] >= start_unix + settle]
    lat = sorted(s["latency_s"] for s in samples) or [float("nan")]
    return {
        "rhythm": rhythm, "workers": n, "waiters": len(samples), "land_window_s": window,
        "latency_mean_s": sum(lat) / len(lat), "latency_max_s": lat[-1],
        "latency_p50_s": lat[len(lat) // 2],
        "requests_per_waiter_min": len(events) / waited_min if waited_min else None,
        "steady_requests_per_waiter_min": len(steady) / steady_min if steady_min else None,
        "lists": sum(1 for e in events if e[1] == "LIST"),
        "gets": sum(1 for e in events if e[1] in {"GET", "HEAD"}),
        "samples": samples, "errors": errors,
    }  # fmt: skip


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
    return cell(value, digits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--rhythms", nargs="+", choices=RHYTHMS, default=list(RHYTHMS))
    parser.add_argument("--waiters", type=int, default=6, help="per N")
    parser.add_argument("--land", type=float, nargs=2, metavar=("FROM", "TO"),
                        help="when the blobs land, s after the waiters start "
                        "(default: per rhythm)")  # fmt: skip
    parser.add_argument("--steady-after", type=float, help="s (default: per rhythm)")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="detection", help="file name under benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.waiters = [10, 1000], 4
        args.rhythms, args.land = ["coop-fast", "ls-every-10s"], [5.0, 20.0]
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with s3_servers(latency_ms=args.latency_ms) as s3:
        for n in args.workers:
            bucket, job = f"det-{n}-{uuid.uuid4().hex[:6]}", f"detect{n}"
            s3.create_bucket(bucket)
            seed(s3, bucket, job, n)
            listing = list_seconds(s3, bucket, job)
            for number, rhythm in enumerate(args.rhythms):
                r = run_rhythm(s3, rhythm, n, bucket, job, args, first=100 * number)
                r["list_s"] = listing
                rows.append(r)
                print(f"{rhythm:>13} N={n:>6}: one listing {listing:.2f} s; latency mean "
                      f"{r['latency_mean_s']:.2f} max {r['latency_max_s']:.2f} s; "
                      f"{_f(r['steady_requests_per_waiter_min'], 1)} requests/waiter/min "
                      f"(steady) {r['errors'] or ''}", flush=True)  # fmt: skip
    by = {(r["rhythm"], r["workers"]): r for r in rows}
    headers = ["rhythm", "N", "latency mean s", "latency max s", "req/waiter/min (all)",
               "req/waiter/min (steady)", "LIST pages per poll", "one listing s",
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
                      -(-(r["workers"] + r["waiters"]) // 1000), _f(r["list_s"]),
                      _f(ratio, 2)])  # fmt: skip
    print()
    print(table(headers, lines))
    meta = {"command": " ".join(["uv run python benchmarks/detection.py", *sys.argv[1:]]),
            "waiters_are": "threads of one process", "latency_ms": args.latency_ms,
            "land_window_s": args.land or WINDOWS,
            "steady_after_s": args.steady_after or STEADY_AFTER,
            **machine(load)}  # fmt: skip
    write_results(args.name, meta, rows, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
