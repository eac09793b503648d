"""End to end with the example: 1 vs 8 ``run-local`` workers, and the protocol's critical path.

Each run is ``icechunk-coop run-local --workers W -- python
examples/synthetic_forecast.py backfill --source-latency S`` against moto
(through the counting proxy, ``--latency-ms`` added per request), as real
processes. The example's region jobs are one init time each; each job
"downloads" for ``--source-latency`` seconds, so J jobs are J x S seconds of
work in all.

Reported per run: wall seconds from starting ``run-local`` to its exit (so
Python start-up counts, as it would in pods), the speed-up over one worker,
and, for multi-worker runs, the **critical-path overhead** read from the
``committed`` marker's timeline: the span from the moment the last worker
had started (start-up excluded: every worker released) to the end of the
commit, minus the slowest worker's own ``work`` span. That is what the
protocol adds to the job: setup, waiting for the setup, publishing, waiting
for results, merge, commit. When start-up spreads the workers' starts (busy
cores), that figure undercounts, so two more are given: the longest any
worker spent before its work (setup, or waiting for it and loading it) and
the time from the end of the last work to the end of the commit.

Runs in one go (the ratios are of the same run):

- ``1 x J``: one worker, J jobs (``--jobs``, default 64, of 2 s);
- ``8 x J``: eight workers, the same J jobs;
- ``8 x 8``: eight workers, one job each: the critical path at N = 8.

Between a run and W times faster than one worker, the report shows
(``gap_s``): start-up (launching W processes and their imports, before the
last worker is released), the slowest worker's work beyond its share of the
jobs (W processes' CPU on the machine's cores), and the protocol's overhead.

    uv run python benchmarks/e2e.py --quick     # 8 jobs of 1 s: 1 and 8 workers
    uv run python benchmarks/e2e.py             # 64 jobs of 2 s
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import icechunk
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, table, write_results
from _servers import S3, clean_environ, s3_servers

from icechunk_coop import icechunk_storage
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "synthetic_forecast.py"
START = datetime(2025, 1, 1, tzinfo=UTC)
STEP = timedelta(hours=6)


def run(s3: S3, workers: int, jobs: int, seconds: float) -> dict[str, Any]:
    bucket = f"e2e-{workers}x{jobs}-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(bucket)
    name, uid, secret = f"e2e{workers}x{jobs}", uuid.uuid4().hex[:8], secrets.token_hex(32)
    end = (START + jobs * STEP).strftime("%Y-%m-%dT%H:%MZ")
    repo_url, rv_url = f"s3://{bucket}/forecast", f"s3://{bucket}/rendezvous"
    argv = [sys.executable, "-m", "icechunk_coop.cli", "run-local", "--workers", str(workers),
            "--job-name", name, "--job-uid", uid, "-q", "--",
            sys.executable, str(EXAMPLE), "backfill", "--end", end,
            "--source-latency", str(seconds), "--repo", repo_url,
            "--rendezvous", rv_url]  # fmt: skip
    env = clean_environ({**s3.env(), "ICECHUNK_COOP_SECRET": secret, "ICECHUNK_LOG": "error"})
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"run-local exit {proc.returncode}: {proc.stdout[-2000:]}"
                           f"{proc.stderr[-2000:]}")  # fmt: skip
    repo = icechunk.Repository.open(icechunk_storage(repo_url, s3.direct_env))
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    if root["init_time"].shape[0] != jobs:
        raise RuntimeError(f"main holds {root['init_time'].shape[0]} init times, not {jobs}")
    row: dict[str, Any] = {"workers": workers, "jobs": jobs, "job_seconds": seconds,
                           "wall_s": wall}  # fmt: skip
    if workers > 1:
        job_id = f"{name}-{uid}"
        sealer = Sealer.from_env(job_id, {"ICECHUNK_COOP_SECRET": secret})
        rv = Rendezvous.for_job(rv_url, job_id=job_id, sealer=sealer,
                                storage_options={"endpoint_url": s3.direct_url})  # fmt: skip
        wire = rv.read(COMMITTED)
        if wire is None:
            raise RuntimeError("no committed marker")
        marker = Committed.from_wire(wire, rv.location(COMMITTED))
        row.update(critical_path(marker.timeline, workers))
    return row


def critical_path(timeline: Any, workers: int) -> dict[str, Any]:
    """Released = the last worker's start of its setup step; overhead = job - slowest work."""
    spans = {int(i): dict(steps) for i, steps in timeline.items()}
    released = max(steps["setup"][0] for steps in spans.values())
    ended = max(span[1] for steps in spans.values() for span in steps.values())
    slowest = max(steps["work"][1] - steps["work"][0] for steps in spans.values())
    last = spans[workers - 1]
    last_work_end = max(steps["work"][1] for steps in spans.values())
    return {
        "released_to_commit_s": ended - released,
        "slowest_work_s": slowest,
        "overhead_s": ended - released - slowest,
        # Robust to workers starting at different moments (start-up on busy cores):
        # before work (setup, or waiting for it and loading it), and after the last
        # work ends (publishing, noticing, merging, committing).
        "before_work_max_s": max(steps["work"][0] - steps["setup"][0] for steps in spans.values()),
        "after_last_work_s": ended - last_work_end,
        "timeline": {str(i): steps for i, steps in spans.items()},
        "last_worker_steps_s": {k: v[1] - v[0] for k, v in last.items()},
        "start_spread_s": released - min(steps["setup"][0] for steps in spans.values()),
    }


def gap(rows: list[dict[str, Any]], seconds: float) -> None:
    """What stands between each multi-worker run and the ideal (one worker's wall / W).

    The wall time splits into: start-up (from ``run-local``'s start to the
    last worker's release: process launch and imports, W processes on the
    machine's cores), the slowest worker's work beyond its share of the jobs
    (CPU contention inside the work), and the protocol's overhead (above).
    Each row gets these as ``gap_s``.
    """
    one = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        if r["workers"] == 1 or "overhead_s" not in r:
            continue
        share = r["jobs"] * seconds / r["workers"]
        r["gap_s"] = {
            "ideal": (one["wall_s"] if one and one["jobs"] == r["jobs"] else share * r["workers"])
            / r["workers"],
            "start-up": r["wall_s"] - r["released_to_commit_s"],
            "work beyond its share": r["slowest_work_s"] - share,
            "protocol overhead": r["overhead_s"],
        }
        print(f"{r['workers']} x {r['jobs']}: wall {r['wall_s']:.1f} s = "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["gap_s"].items())
              + " (s; the rest: the share of the jobs' own work)", flush=True)  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_w, ax_c) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [f"{r['workers']} x {r['jobs']}" for r in rows]
    ax_w.bar(labels, [r["wall_s"] for r in rows], color="tab:blue")
    ax_w.set_ylabel("wall seconds (start-up included)")
    ax_w.set_title("workers x region jobs", fontsize=10)
    multi = [r for r in rows if r["workers"] > 1]
    if multi:
        names = [f"{r['workers']} x {r['jobs']}" for r in multi]
        work = [r["slowest_work_s"] for r in multi]
        over = [r["overhead_s"] for r in multi]
        ax_c.bar(names, work, label="slowest worker's work", color="tab:green")
        ax_c.bar(names, over, bottom=work, label="protocol overhead", color="tab:red")
        ax_c.set_ylabel("seconds, every worker released -> commit")
        ax_c.legend(fontsize=8)
        ax_c.set_title("critical path (start-up excluded)", fontsize=10)
    fig.suptitle("End to end with examples/synthetic_forecast.py (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0, help="per region job")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="8 jobs of 1 s")
    parser.add_argument("--critical-only", action="store_true", help="only W workers x W jobs")
    parser.add_argument("--name", default="e2e", help="file name under benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.seconds = 8, 1.0
    load = os.getloadavg()
    plan = [(1, args.jobs), (args.workers, args.jobs), (args.workers, args.workers)]
    plan = list(dict.fromkeys(plan))  # with as many jobs as workers, the last two are one
    if args.critical_only:
        plan = [(args.workers, args.workers)]
    rows = []
    with s3_servers(latency_ms=args.latency_ms) as s3:
        for workers, jobs in plan:
            row = run(s3, workers, jobs, args.seconds)
            rows.append(row)
            print(f"{workers} workers x {jobs} jobs of {args.seconds:g} s: {row['wall_s']:.1f} s"
                  + (f", overhead {row['overhead_s']:.2f} s (before work at most "
                     f"{row['before_work_max_s']:.2f} s, after the last work "
                     f"{row['after_last_work_s']:.2f} s)" if "overhead_s" in row else ""),
                  flush=True)  # fmt: skip
    one = rows[0]["wall_s"] if rows[0]["workers"] == 1 else None
    gap(rows, args.seconds)
    headers = ["workers", "region jobs", "ideal s", "wall s", "speed-up vs 1",
               "released -> commit s", "slowest work s", "overhead s", "before work s",
               "after last work s", "last worker's steps"]  # fmt: skip
    lines = []
    for r in rows:
        steps = r.get("last_worker_steps_s", {})
        lines.append([r["workers"], r["jobs"],
                      f"{r['jobs'] * args.seconds / r['workers']:.0f}", f"{r['wall_s']:.1f}",
                      f"{one / r['wall_s']:.2f}" if one and r["jobs"] == args.jobs else "-",
                      f"{r.get('released_to_commit_s', 0):.2f}" if steps else "-",
                      f"{r.get('slowest_work_s', 0):.2f}" if steps else "-",
                      f"{r.get('overhead_s', 0):.2f}" if steps else "-",
                      f"{r.get('before_work_max_s', 0):.2f}" if steps else "-",
                      f"{r.get('after_last_work_s', 0):.2f}" if steps else "-",
                      ", ".join(f"{k} {v:.2f}" for k, v in steps.items()) or "-"])  # fmt: skip
    print()
    print(table(headers, lines))
    meta = {"command": " ".join(["uv run python benchmarks/e2e.py", *sys.argv[1:]]),
            "workers_are": "processes started by run-local", **machine(load)}  # fmt: skip
    write_results(args.name, meta, rows, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
