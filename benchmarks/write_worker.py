"""One worker process of the write-strategy benchmark, started like an Indexed Job's pod.

Identity comes from the environment (``JOB_COMPLETION_INDEX``, ``WORKERS_TOTAL``,
``JOB_NAME``, ``JOB_UID``, ``ICECHUNK_COOP_SECRET``); S3 from ``AWS_*``.

The job: append ``--rows`` rows to ``temp`` (rows x ``--cols`` float64, one row
per chunk, so every chunk is a separate object) and ``time``, split into
contiguous, disjoint slices, one per worker. Writing a row costs
``--row-seconds`` of simulated source I/O (a sleep) before the write, so the
total work is the same whatever the number of workers.

Strategies:

``coop``    icechunk_coop: worker 0 prepares a fork, every worker writes into
            its own fork, the last merges and commits once.
``uncoop``  what the production code does: worker 0 creates a temporary branch
            and commits the expansion on it; every worker opens a writable
            session on that branch, writes its rows and commits with
            ``rebase_with=ConflictDetector()`` (icechunk retries the rebase);
            the last worker waits for all, commits the final metadata and
            resets ``main`` to the branch tip (compare-and-set), then deletes
            the branch. Workers meet through the same ``Rendezvous`` and wait
            policy as ``coop``, so only the write strategy differs.
``serial``  one process: one writable session on ``main``, every row, one commit.

Prints one line ``BENCH {json}`` with what this worker did.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import icechunk
import numpy as np
import zarr
from numpy.random import default_rng  # numpy imports it lazily: not inside the timed work

from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    Stores,
    WaitPolicy,
    WorkerIdentity,
    icechunk_storage,
)
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._records import SETUP, result_name

CALLS: dict[str, int] = {"commit": 0, "rebase": 0, "reset_branch": 0}
REBASE_ATTEMPTS: list[int] = []


def _count_calls() -> None:
    """Count the icechunk operations this process makes (the library is not touched)."""
    commit, rebase, reset = (
        icechunk.Session.commit,
        icechunk.Session.rebase,
        icechunk.Repository.reset_branch,
    )

    def counted_commit(self: icechunk.Session, *args: Any, **kwargs: Any) -> str:
        CALLS["commit"] += 1
        return str(commit(self, *args, **kwargs))

    def counted_rebase(self: icechunk.Session, *args: Any, **kwargs: Any) -> None:
        CALLS["rebase"] += 1
        rebase(self, *args, **kwargs)

    def counted_reset(self: icechunk.Repository, *args: Any, **kwargs: Any) -> None:
        CALLS["reset_branch"] += 1
        reset(self, *args, **kwargs)

    icechunk.Session.commit = counted_commit  # type: ignore[method-assign]
    icechunk.Session.rebase = counted_rebase  # type: ignore[method-assign]
    icechunk.Repository.reset_branch = counted_reset  # type: ignore[method-assign]


def values(row: int, cols: int) -> np.ndarray:
    """Row ``row``'s values: incompressible, so every chunk is its own object (not inlined)."""
    return default_rng(row).random(cols)


def my_rows(first: int, rows: int, index: int, total: int) -> range:
    return range(first + index * rows // total, first + (index + 1) * rows // total)


def grow(store: Any, rows: int, cols: int) -> int:
    """Append ``rows`` to both arrays; return the first new row."""
    temp = zarr.open_array(store, path="temp", mode="r+")
    first = int(temp.shape[0])
    temp.resize((first + rows, cols))
    zarr.open_array(store, path="time", mode="r+").resize((first + rows,))
    return first


def write_rows(store: Any, rows: range, cols: int, row_seconds: float) -> None:
    temp = zarr.open_array(store, path="temp", mode="r+")
    tcoord = zarr.open_array(store, path="time", mode="r+")
    for row in rows:
        if row_seconds:
            time.sleep(row_seconds)  # fetching and decoding a source file
        temp[row, :] = values(row, cols)
        tcoord[row] = row


def finish(store: Any, written: int, job: str) -> None:
    root = zarr.open_group(store, mode="a")
    root.attrs["last_job"] = job
    root.attrs["rows_written"] = written


def _rebase_attempts(repo: icechunk.Repository, snapshot: str) -> int:
    meta = repo.lookup_snapshot(snapshot).metadata or {}
    return int((meta.get("__icechunk") or {}).get("rebase_attempts", 0))


# ---- strategies -----------------------------------------------------------------------------


def coop_job(args: argparse.Namespace, policy: WaitPolicy) -> CooperativeJob:
    primary = IcechunkTarget(name="primary", storage=icechunk_storage(args.repo))
    return CooperativeJob.create(rendezvous_url=args.rendezvous, primary=primary, policy=policy)


def run_coop(args: argparse.Namespace, job: CooperativeJob) -> dict[str, Any]:
    index, total = job.identity.worker_index, job.identity.workers_total

    def prepare(stores: Stores) -> None:
        grow(stores.primary, args.rows, args.cols)

    def work(stores: Stores) -> dict[str, Any]:
        first = int(zarr.open_array(stores.primary, path="temp", mode="r").shape[0]) - args.rows
        rows = my_rows(first, args.rows, index, total)
        write_rows(stores.primary, rows, args.cols, args.row_seconds)
        return {"rows": [rows.start, rows.stop]}

    def finalize(stores: Stores, results: list[Any]) -> None:
        finish(stores.primary, sum(r["rows"][1] - r["rows"][0] for r in results), job.job_id)

    outcome = job.run(work=work, prepare=prepare, finalize=finalize, message="benchmark append")
    return {"status": outcome.status, "seconds": dict(outcome.seconds)}


def run_uncoop(args: argparse.Namespace, policy: WaitPolicy) -> dict[str, Any]:
    identity = WorkerIdentity.from_env()
    index, total = identity.worker_index, identity.workers_total
    rv = Rendezvous.for_job(
        args.rendezvous,
        job_id=identity.job_id,
        sealer=Sealer.from_env(identity.job_id),
        policy=policy,
    )
    repo = icechunk.Repository.open(icechunk_storage(args.repo))
    branch = f"uncoop/{identity.job_id}"
    seconds: dict[str, float] = {}
    t = time.monotonic()
    if identity.is_first:
        base = repo.lookup_branch("main")
        if branch in repo.list_branches():
            repo.reset_branch(branch, base)
        else:
            repo.create_branch(branch, base)
        session = repo.writable_session(branch)
        first = grow(session.store, args.rows, args.cols)
        session.commit("Expand dataset", rebase_with=icechunk.ConflictDetector())
        setup = {"base": base, "first": first}
        _, setup = rv.publish_once(SETUP, setup)
    else:
        setup = rv.wait_for(SETUP)
    seconds["setup"] = time.monotonic() - t

    t = time.monotonic()
    session = repo.writable_session(branch)
    rows = my_rows(setup["first"], args.rows, index, total)
    write_rows(session.store, rows, args.cols, args.row_seconds)
    seconds["work"] = time.monotonic() - t
    t = time.monotonic()
    snapshot = session.commit(
        f"worker {index} rows {rows.start}-{rows.stop}", rebase_with=icechunk.ConflictDetector()
    )
    REBASE_ATTEMPTS.append(_rebase_attempts(repo, snapshot))
    seconds["commit"] = time.monotonic() - t
    rv.publish(result_name(index), {"rows": [rows.start, rows.stop]})
    if not identity.is_last:
        return {"status": "published", "seconds": seconds}

    t = time.monotonic()
    results = rv.wait_for_all([result_name(i) for i in range(total)])
    seconds["wait"] = time.monotonic() - t
    t = time.monotonic()
    session = repo.writable_session(branch)
    finish(
        session.store,
        sum(r["rows"][1] - r["rows"][0] for r in results.values()),
        identity.job_id,
    )
    final = session.commit("Final metadata", rebase_with=icechunk.ConflictDetector())
    REBASE_ATTEMPTS.append(_rebase_attempts(repo, final))
    repo.reset_branch("main", final, from_snapshot_id=setup["base"])
    repo.delete_branch(branch)
    rv.remove_all()
    seconds["commit"] += time.monotonic() - t
    return {"status": "committed", "seconds": seconds}


def run_serial(args: argparse.Namespace) -> dict[str, Any]:
    repo = icechunk.Repository.open(icechunk_storage(args.repo))
    t = time.monotonic()
    session = repo.writable_session("main")
    first = grow(session.store, args.rows, args.cols)
    write_rows(session.store, range(first, first + args.rows), args.cols, args.row_seconds)
    finish(session.store, args.rows, "serial")
    work = time.monotonic() - t
    t = time.monotonic()
    session.commit("benchmark append")
    return {"status": "committed", "seconds": {"work": work, "commit": time.monotonic() - t}}


def main() -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--strategy", choices=("coop", "uncoop", "serial"), required=True)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--rendezvous", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--cols", type=int, required=True)
    parser.add_argument("--row-seconds", type=float, default=0.0)
    parser.add_argument("--max-interval", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--quick-exit",
        action="store_true",
        help="end with os._exit once reported: skip the interpreter's teardown (see main)",
    )
    parser.add_argument(
        "--release-at",
        type=float,
        default=0.0,
        help="unix time to start the job at, after start-up (every worker at once)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _count_calls()
    policy = WaitPolicy(timeout=args.timeout, max_interval=args.max_interval)
    # Building the job is start-up (a pod does it before anything else); running it is not.
    job = coop_job(args, policy) if args.strategy == "coop" else None
    if args.release_at:
        time.sleep(max(0.0, args.release_at - time.time()))
    released, cpu = time.time(), time.process_time()
    if job is not None:
        outcome = run_coop(args, job)
    elif args.strategy == "uncoop":
        outcome = run_uncoop(args, policy)
    else:
        outcome = run_serial(args)
    outcome.update(
        calls=CALLS,
        rebase_attempts=sum(REBASE_ATTEMPTS),
        process_seconds=time.monotonic() - started,
        index=int(os.environ.get("JOB_COMPLETION_INDEX", "0")),
        released=released,
        ended=time.time(),
        run_cpu_s=time.process_time() - cpu,
    )
    print("BENCH " + json.dumps(outcome), flush=True)
    if args.quick_exit:
        # Tearing down an interpreter that loaded numpy, zarr, icechunk and
        # botocore costs 0.15-0.25 s of CPU. In pods that is each pod's own
        # CPU; here the workers that published first tear down together while
        # the last one merges and commits, and on two cores they take its CPU
        # (at N = 8 the overhead measured 1.2 s with the teardown, 0.75 s
        # without). `critical.py --exits quick,normal` measures both.
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
