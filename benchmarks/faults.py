"""Where jobs stop completing: a cooperative job through the fault proxy at rising rates.

::

    uv run python benchmarks/faults.py                       # 3 workers, mixed faults
    uv run python benchmarks/faults.py --rates 0,0.5,0.9 --runs 2 --mix reset
    uv run python benchmarks/faults.py --budgets tight       # the test suite's tighter retries

It starts moto and ``icechunk_coop.testing._faults`` (both subprocesses), and for each
rate runs ``--runs`` jobs of ``--workers`` processes of ``tests/coop_worker.py``
(the repository and the rendezvous both through the proxy), each job in a
fresh bucket, with ``--timeout`` as the workers' wait deadline. ``--mix
mixed`` splits a rate R as 30% resets, 30% 503 SlowDown, 20% 500, 20% lost
replies of writes (so writes see R and other requests 0.8 R), plus
delays of 200 ms at R/2; ``--mix reset`` (or ``slowdown``, ``error500``) is
that fault alone at R.

Each job is judged from moto directly, past the proxy: ``completed`` (every
worker exited 0, exactly one commit of the job on ``main``, the data as
expected), ``failed`` (nothing of the job committed), or ``WRONG`` (anything
else: a torn or doubled commit; never expected). A failed worker's error is
``clear`` when it is a ``CoopError`` or icechunk's own error naming the
operation, else ``raw`` with its class. Timings on a shared 2-core machine
are noise; the completion counts are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import icechunk
import numpy as np
import zarr

from icechunk_coop import icechunk_storage
from icechunk_coop.testing import (
    FaultProxy,
    LocalS3,
    fault_proxy,
    job_commits,
    local_s3,
    start_workers,
)
from schedules import expected_temp, final_error, is_clear

WORKERS = {
    "default": ROOT / "tests" / "coop_worker.py",
    "tight": ROOT / "tests" / "test_faults.py",  # coop_worker with tighter retry budgets
}
SECRET = "bench-secret-0123456789abcdef"  # noqa: S105 - a local test secret
ROWS = 16
EXCLUSIVE = ("reset", "slowdown", "error500", "lose_reply")


def rates_for(mix: str, rate: float) -> dict[str, float]:
    if mix == "mixed":
        return {
            "reset": 0.3 * rate,
            "slowdown": 0.3 * rate,
            "error500": 0.2 * rate,
            "lose_reply": 0.2 * rate,
            "delay": rate / 2,
            "delay_ms": 200,
        }
    return {mix: rate}


def describe_error(out: str) -> str:
    """``clear <class>`` or ``raw <class>`` (or ``none``) for a failed worker's output."""
    cls, name, _ = final_error(out)
    if not name:
        return "none"
    return f"{'clear' if is_clear(out) else 'raw'} {name.rpartition('.')[2] if cls else name}"


def judge(moto: LocalS3, bucket: str, job_id: str, codes: dict[int, int]) -> str:
    try:
        repo = icechunk.Repository.open(icechunk_storage(f"s3://{bucket}/repo", moto.env))
    except icechunk.IcechunkError:
        return "failed"  # not even created
    ours = job_commits(repo, job_id)
    if not ours:
        return "failed"
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    exact = "temp" in root and np.array_equal(root["temp"][:], expected_temp(ROWS))
    if len(ours) == 1 and exact:
        return "completed" if all(c == 0 for c in codes.values()) else "completed*"
    return "WRONG"


def run_one(
    moto: LocalS3, proxy: FaultProxy, worker: Path, workers: int, timeout: float
) -> tuple[dict[int, int], dict[int, str], float, str, str]:
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    moto.create_bucket(bucket)
    name, uid = f"job-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_", "AWS_")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **proxy.env}
    argv = [
        sys.executable,
        str(worker),
        "--repo",
        f"s3://{bucket}/repo",
        "--rendezvous",
        f"s3://{bucket}/rendezvous",
        "--timeout",
        str(timeout),
    ]
    started = time.monotonic()
    procs = start_workers(argv, workers, job_name=name, job_uid=uid, secret=SECRET, env=env)
    outs: dict[int, str] = {}

    def drain(index: int) -> None:
        outs[index] = procs[index].communicate(timeout=1800)[0]

    threads = [threading.Thread(target=drain, args=(i,)) for i in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    codes = {i: p.returncode for i, p in procs.items()}
    errors = {i: describe_error(outs[i]) for i in procs if codes[i] != 0}
    return codes, errors, seconds, f"{name}-{uid}", bucket


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rates", default="0,0.1,0.2,0.3,0.5,0.7,0.8,0.9")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60, help="the workers' wait deadline")
    parser.add_argument("--mix", choices=["mixed", *EXCLUSIVE[:3]], default="mixed")
    parser.add_argument("--budgets", choices=sorted(WORKERS), default="default")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    rows: list[dict[str, Any]] = []
    with local_s3() as moto, fault_proxy(moto.endpoint_url) as proxy:
        os.environ.update(moto.env)  # for judging, straight to moto
        for rate in rates:
            for run in range(args.runs):
                proxy.clear()
                proxy.set_rates(**rates_for(args.mix, rate), seed=run)
                before = proxy.counts()
                codes, errors, seconds, job_id, bucket = run_one(
                    moto, proxy, WORKERS[args.budgets], args.workers, args.timeout
                )
                proxy.clear()
                after = proxy.counts()
                got = {k: after[k] - before[k] for k in after}
                faults = sum(got[k] for k in EXCLUSIVE)
                row = {
                    "rate": rate,
                    "run": run,
                    "outcome": judge(moto, bucket, job_id, codes),
                    "seconds": round(seconds, 1),
                    "requests": got["requests"],
                    "faults": faults,
                    "injected": {k: got[k] for k in (*EXCLUSIVE, "delay")},
                    "errors": errors,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        f"{args.workers} workers, --mix {args.mix}, --budgets {args.budgets}, "
        f"wait deadline {args.timeout:g} s, {args.runs} runs per rate"
    )
    print()
    print(
        "| rate | completed | failed | wrong | faults / requests | seconds (median) "
        "| failed workers died of |"
    )
    print("|---|---|---|---|---|---|---|")
    for rate in rates:
        mine = [r for r in rows if r["rate"] == rate]
        outcomes = Counter(r["outcome"].rstrip("*") for r in mine)
        share = sum(r["faults"] for r in mine) / max(1, sum(r["requests"] for r in mine))
        died = Counter(e for r in mine for e in r["errors"].values())
        print(
            f"| {rate:.0%} | {outcomes['completed']}/{len(mine)} | {outcomes['failed']} "
            f"| {outcomes['WRONG']} | {share:.0%} "
            f"| {statistics.median(r['seconds'] for r in mine):.0f} "
            f"| {', '.join(f'{n}x {e}' for e, n in died.most_common()) or '-'} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "rows": rows}))
    return 1 if any(r["outcome"] == "WRONG" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
