"""Commit strategies side by side: cooperative, per-worker rebase commits, one serial writer.

N workers append the same rows to ``temp``/``time`` (as in ``run.py``'s write
benchmark: ``--rows-per-worker`` rows of ``--cols`` float64 each, one chunk
per row, incompressible). Workers are **threads of this one process**: N up
to 128 processes do not fit on two cores (each Python start-up costs
seconds there), and what is compared is the commit phase, which is I/O and
compare-and-set contention, not CPU. All of them write through the counting
proxy with ``--latency-ms`` added to every request.

Every worker writes its rows first; a barrier then releases them all at
once, and the **commit phase** runs from that barrier until the job's data
is on ``main`` and the strategy has cleaned up:

- ``coop``: icechunk_coop's step API. Every worker publishes its fork and
  result; the last worker waits for all of them (one LIST per poll, merging
  each as it arrives), pins the plan, writes the final metadata, commits once
  and resets ``main`` by compare-and-set.
- ``rebase``: the production alternative. Worker 0 has created a temporary
  branch and committed the expansion there; every worker opened a writable
  session on it and, after the barrier, commits with
  ``rebase_with=ConflictDetector()`` (icechunk retries the rebase) and
  publishes a result in the same rendezvous; the last worker waits for all,
  commits the final metadata, resets ``main`` to the branch tip
  (compare-and-set) and deletes the branch.
- ``serial``: one writer, one session on ``main``, one commit of every row.

Reported: the commit phase's seconds, icechunk rebase attempts (from each
commit's metadata), requests during the commit phase and in all, the
snapshots the job left on ``main`` and branches left behind. The data on
``main`` is read back and checked; the script exits non-zero only if it is
wrong or a worker failed.

    uv run python benchmarks/commits.py --quick      # N = 4, 8, 16
    uv run python benchmarks/commits.py              # N = 4 .. 128
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import icechunk

sys.path.insert(0, str(Path(__file__).parent))
from _report import cell, machine, table, write_results
from _servers import S3, s3_servers
from _writes import WriteConfig, _init_repo, _verify
from write_worker import _rebase_attempts, finish, grow, my_rows, write_rows

from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    Stores,
    WaitPolicy,
    WorkerIdentity,
    commit_merged,
    get_forked_session,
    get_merged_sessions,
    icechunk_storage,
    publish_result,
)
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.wire import Sealer
from icechunk_coop.wire._records import result_name

STRATEGIES = ("coop", "rebase", "serial")


class Case:
    """One run of one strategy: N threads, a barrier, the clock of the commit phase."""

    def __init__(self, s3: S3, strategy: str, workers: int, args: argparse.Namespace) -> None:
        self.s3, self.strategy, self.workers, self.args = s3, strategy, workers, args
        self.bucket = f"c-{strategy}-{workers}-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(self.bucket)
        self.repo_url = f"s3://{self.bucket}/repo"
        self.rendezvous_url = f"s3://{self.bucket}/rendezvous"
        self.rows = workers * args.rows_per_worker
        self.before = _init_repo(s3, self.repo_url, args.cols)
        self.threads = 1 if strategy == "serial" else workers
        self.barrier = threading.Barrier(self.threads, action=self._released)
        self.released_at = 0.0
        self.released_unix = 0.0
        self.done_at = 0.0
        self.rebase_attempts = 0
        self.commits = 0
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.job_name, self.job_uid = f"{strategy}{workers}", uuid.uuid4().hex[:8]
        self.secret = secrets.token_hex(32)
        self.policy = WaitPolicy(initial_interval=0.05, max_interval=args.poll, timeout=1800)
        self.setup_ready = threading.Event()
        self.setup: dict[str, Any] = {}

    def _released(self) -> None:
        self.released_at, self.released_unix = time.perf_counter(), time.time()

    def _count(self, repo: icechunk.Repository, snapshot: str) -> None:
        with self.lock:
            self.commits += 1
            self.rebase_attempts += _rebase_attempts(repo, snapshot)

    def _storage(self) -> icechunk.Storage:
        return icechunk_storage(self.repo_url, self.s3.env())

    def _identity(self, index: int) -> WorkerIdentity:
        return WorkerIdentity(worker_index=index, workers_total=self.workers,
                              job_name=self.job_name, job_uid=self.job_uid)  # fmt: skip

    # ---- strategies ----------------------------------------------------------------

    def coop(self, index: int) -> None:
        job = CooperativeJob.create(
            identity=self._identity(index),
            rendezvous_url=self.rendezvous_url,
            primary=IcechunkTarget(name="primary", storage=self._storage()),
            environ={**self.s3.env(), "ICECHUNK_COOP_SECRET": self.secret},
            policy=self.policy,
        )
        per = self.args.rows_per_worker

        def prepare(stores: Stores) -> None:
            grow(stores.primary, self.rows, self.args.cols)

        forks = get_forked_session(job, prepare if index == 0 else None)
        rows = range(index * per, (index + 1) * per)
        write_rows(forks.stores.primary, rows, self.args.cols, 0.0)
        self.barrier.wait()
        if index != self.workers - 1:
            publish_result(job, forks, [rows.start, rows.stop])
            return
        merged = get_merged_sessions(job, forks, [rows.start, rows.stop])

        def final(stores: Stores, results: list[Any]) -> None:
            finish(stores.primary, sum(b - a for a, b in results), job.job_id)

        final(merged.stores, merged.results)
        snapshots = commit_merged(job, merged, message="append", finalize=final)
        self.done_at = time.perf_counter()
        repo = icechunk.Repository.open(self._storage())
        self._count(repo, snapshots["primary"])

    def rebase(self, index: int) -> None:
        identity = self._identity(index)
        rv = Rendezvous.for_job(
            self.rendezvous_url,
            job_id=identity.job_id,
            sealer=Sealer.from_env(identity.job_id, {"ICECHUNK_COOP_SECRET": self.secret}),
            policy=self.policy,
        )
        repo = icechunk.Repository.open(self._storage())
        branch = f"tmp/{identity.job_id}"
        if index == 0:
            base = repo.lookup_branch("main")
            repo.create_branch(branch, base)
            session = repo.writable_session(branch)
            first = grow(session.store, self.rows, self.args.cols)
            self._count(repo, session.commit("Expand dataset"))
            self.setup.update(base=base, first=first)
            self.setup_ready.set()
        self.setup_ready.wait()
        session = repo.writable_session(branch)
        rows = my_rows(self.setup["first"], self.rows, index, self.workers)
        write_rows(session.store, rows, self.args.cols, 0.0)
        self.barrier.wait()
        snapshot = session.commit(f"worker {index}", rebase_with=icechunk.ConflictDetector())
        self._count(repo, snapshot)
        rv.publish(result_name(index), [rows.start, rows.stop])
        if index != self.workers - 1:
            return
        results = rv.wait_for_all([result_name(i) for i in range(self.workers)])
        session = repo.writable_session(branch)
        finish(session.store, sum(b - a for a, b in results.values()), identity.job_id)
        final = session.commit("Final metadata", rebase_with=icechunk.ConflictDetector())
        self._count(repo, final)
        repo.reset_branch("main", final, from_snapshot_id=self.setup["base"])
        repo.delete_branch(branch)
        rv.remove_all()
        self.done_at = time.perf_counter()

    def serial(self, index: int) -> None:
        repo = icechunk.Repository.open(self._storage())
        session = repo.writable_session("main")
        first = grow(session.store, self.rows, self.args.cols)
        write_rows(session.store, range(first, first + self.rows), self.args.cols, 0.0)
        finish(session.store, self.rows, "serial")
        self.barrier.wait()
        self._count(repo, session.commit("append"))
        self.done_at = time.perf_counter()

    # ---- running -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        body: Callable[[int], None] = getattr(self, self.strategy)

        def thread(index: int) -> None:
            try:
                body(index)
            except BaseException as exc:  # reported, and the run counts as failed
                self.errors.append(exc)
                self.barrier.abort()
                self.setup_ready.set()

        started = time.perf_counter()
        threads = [threading.Thread(target=thread, args=(i,), daemon=True)
                   for i in range(self.threads)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=1800)
        wall = time.perf_counter() - started
        time.sleep(0.3)  # the proxy records a request when its answer is back
        events = self.s3.events(self.bucket)
        cfg = WriteConfig(rows=self.rows, cols=self.args.cols, row_seconds=0.0, max_interval=1.0)
        check = _verify(self.s3, self.repo_url, cfg, self.before) if not self.errors else {}
        return {
            "strategy": self.strategy,
            "workers": self.workers,
            "threads": self.threads,
            "commit_phase_s": self.done_at - self.released_at if not self.errors else None,
            "wall_s": wall,
            "rebase_attempts": self.rebase_attempts,
            "commits": self.commits,
            "requests_commit_phase": sum(1 for t, _, _ in events if t >= self.released_unix),
            "requests_total": len(events),
            **check,
            "errors": [repr(e)[:500] for e in self.errors],
        }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for strategy in STRATEGIES:
        sel = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["workers"])
        ns = [r["workers"] for r in sel]
        axes[0].plot(ns, [r["commit_phase_s"] for r in sel], marker="o", label=strategy)
        axes[1].plot(ns, [max(r["rebase_attempts"], 0.5) for r in sel], marker="o",
                     label=strategy)  # fmt: skip
        axes[2].plot(ns, [r["requests_commit_phase"] for r in sel], marker="o", label=strategy)
    titles = ("commit phase, s", "rebase attempts (0 drawn at 0.5)", "requests in commit phase")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers N (threads in one process)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Commit strategies (moto + 20 ms/request proxy, shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--rows-per-worker", type=int, default=2)
    parser.add_argument("--cols", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--poll", type=float, default=1.0, help="max interval of every wait, s")
    parser.add_argument("--quick", action="store_true", help="N = 4, 8, 16")
    parser.add_argument("--name", default="commits", help="file name under benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.workers = [4, 8, 16]
    # s3fs clients made in worker threads are closed by the collector on another
    # loop; aiohttp reports that as a "Task exception was never retrieved": noise.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    failed = False
    with s3_servers(latency_ms=args.latency_ms) as s3:
        for n in args.workers:
            for strategy in args.strategies:
                row = Case(s3, strategy, n, args).run()
                rows.append(row)
                failed |= bool(row["errors"]) or not row.get("data_ok", False)
                print(f"N={n:>4} {strategy:>7}: commit phase {cell(row['commit_phase_s'])} s, "
                      f"{row['rebase_attempts']} rebase attempts, "
                      f"{row['requests_commit_phase']} requests, "
                      f"{row.get('snapshots_on_main')} snapshots, data ok "
                      f"{row.get('data_ok')} {row['errors'] or ''}", flush=True)  # fmt: skip
    by = {(r["workers"], r["strategy"]): r for r in rows}
    headers = ["N", "strategy", "commit phase s", "x coop", "rebase attempts", "commits",
               "requests (commit phase)", "requests (all)", "snapshots on main",
               "branches left"]  # fmt: skip
    lines = []
    for r in rows:
        coop = by.get((r["workers"], "coop"))
        ratio = (r["commit_phase_s"] / coop["commit_phase_s"]
                 if coop and coop["commit_phase_s"] and r["commit_phase_s"] else None)  # fmt: skip
        lines.append([r["workers"], r["strategy"], cell(r["commit_phase_s"]), cell(ratio, 1),
                      r["rebase_attempts"], r["commits"], r["requests_commit_phase"],
                      r["requests_total"], r.get("snapshots_on_main", "-"),
                      len(r.get("branches_left", []))])  # fmt: skip
    print()
    print(table(headers, lines))
    print("\n'x coop': the strategy's commit phase divided by coop's at the same N, this run.")
    meta = {"command": " ".join(["uv run python benchmarks/commits.py", *sys.argv[1:]]),
            "workers_are": "threads of one process", "latency_ms": args.latency_ms,
            "rows_per_worker": args.rows_per_worker, "cols": args.cols,
            **machine(load)}  # fmt: skip
    write_results(args.name, meta, rows, plot)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
