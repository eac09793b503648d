"""Finalize at scale: how long the last worker takes to collect N results, merge and commit.

Workers 0..N-2 are simulated by real published forks (each writes its own
chunks through the public step API, seeded straight into moto so the seeding
costs nothing); then the last worker runs in a process of its own, talking
through the counting proxy, which adds ``--latency-ms`` to every request (a
small S3 GET takes 10-30 ms; moto answers in under 2). Reported per case:
the last worker's seconds (collect = waiting for and reading the results,
commit = plan, merge, checks, compare-and-set, cleanup), its peak memory,
and the requests it made.

    uv run python benchmarks/finalize.py --quick          # N = 10, 100 x 10 chunks
    uv run python benchmarks/finalize.py --workers 1000 --chunks 100 --latency-ms 0 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import icechunk
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from _servers import S3, clean_environ, s3_servers

from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    WorkerIdentity,
    commit_merged,
    get_forked_session,
    get_merged_sessions,
    icechunk_storage,
    publish_result,
)

SECRET = "finalize-bench-secret-0123456789"  # noqa: S105 - a benchmark's own


def _job(index: int, total: int, bucket: str, name: str, env: dict[str, str]) -> CooperativeJob:
    return CooperativeJob.create(
        identity=WorkerIdentity(worker_index=index, workers_total=total, job_name=name),
        rendezvous_url=f"s3://{bucket}/rendezvous",
        primary=IcechunkTarget(
            name="primary", storage=icechunk_storage(f"s3://{bucket}/repo", env)
        ),
        environ={**env, "ICECHUNK_COOP_SECRET": SECRET},
    )


def seed(s3: S3, bucket: str, name: str, workers: int, chunks: int) -> None:
    """Workers 0..N-2: setup, forks with ``chunks`` chunks each, results; all straight to moto."""
    env = s3.direct_env
    os.environ.update(env)  # the rendezvous's s3fs reads AWS_ENDPOINT_URL
    rows = workers * chunks

    def prepare(stores: Any) -> None:
        zarr.open_group(stores.primary, mode="a").create_array(
            "a", shape=(rows,), chunks=(1,), dtype="i2", fill_value=0
        )

    for index in range(workers - 1):
        job = _job(index, workers, bucket, name, env)
        forks = get_forked_session(job, prepare if index == 0 else None)
        array = zarr.open_array(forks.stores.primary, path="a", mode="r+")
        array[index * chunks : (index + 1) * chunks] = index % 30000
        publish_result(job, forks, {"worker": index})


def finalize_main(bucket: str, name: str, workers: int, chunks: int) -> None:
    """The last worker, in its own process: timed, with its peak memory."""
    env = dict(os.environ)
    job = _job(workers - 1, workers, bucket, name, env)
    started = time.perf_counter()
    forks = get_forked_session(job)
    array = zarr.open_array(forks.stores.primary, path="a", mode="r+")
    array[(workers - 1) * chunks :] = 1
    merged = get_merged_sessions(job, forks, {"worker": workers - 1})
    collected = time.perf_counter()
    commit_merged(job, merged, message="bench")
    done = time.perf_counter()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"collect_s": collected - started, "commit_s": done - collected,
                      "total_s": done - started, "peak_mib": peak_kib / 1024}))  # fmt: skip


def case(s3: S3, workers: int, chunks: int) -> dict[str, Any]:
    bucket = f"fin-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    name = f"fin{workers}x{chunks}"
    t0 = time.perf_counter()
    seed(s3, bucket, name, workers, chunks)
    seeded = time.perf_counter() - t0
    before = sum(s3.counts(bucket).values())
    proc = subprocess.run(
        [sys.executable, __file__, "--finalize", bucket, name, str(workers), str(chunks)],
        env=clean_environ({**s3.env(), "ICECHUNK_LOG": "error"}),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(workers=workers, chunks=chunks, seed_s=seeded)
    row["requests"] = sum(s3.counts(bucket).values()) - before
    repo = icechunk.Repository.open(icechunk_storage(f"s3://{bucket}/repo", s3.direct_env))
    tip = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    if int(tip[0]) != 0 or int(tip[-1]) != 1:
        raise RuntimeError("the commit does not hold every worker's chunks")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--chunks", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    parser.add_argument("--quick", action="store_true", help="N = 10, 100 x 10 chunks")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--finalize", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.finalize:
        bucket, name, workers, chunks = args.finalize
        finalize_main(bucket, name, int(workers), int(chunks))
        return 0
    if args.quick:
        args.workers, args.chunks = [10, 100], [10]
    rows = []
    print(f"{'latency':>8} {'N':>6} {'chunks':>6} {'collect s':>10} {'commit s':>9} "
          f"{'total s':>8} {'peak MiB':>9} {'requests':>9}")  # fmt: skip
    for latency in args.latency_ms:
        with s3_servers(latency_ms=latency) as s3:
            for workers in args.workers:
                for chunks in args.chunks:
                    row = case(s3, workers, chunks) | {"latency_ms": latency}
                    rows.append(row)
                    print(f"{latency:>8.0f} {workers:>6} {chunks:>6} {row['collect_s']:>10.2f} "
                          f"{row['commit_s']:>9.2f} {row['total_s']:>8.2f} "
                          f"{row['peak_mib']:>9.0f} {row['requests']:>9}", flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
