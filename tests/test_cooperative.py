"""Cooperative writes end to end: real worker processes, moto S3 for repos and rendezvous.

Every worker is a separate process started the way an Indexed Job starts a
pod: by environment variables (see ``coop_worker.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import pytest
import zarr

from icechunk_coop import SECRET_ENV, icechunk_storage
from icechunk_coop.inspect import METADATA_KEY
from icechunk_coop.testing import CRASH_EXIT_CODE

WORKER = str(Path(__file__).with_name("coop_worker.py"))
ROWS = 16

pytestmark = pytest.mark.slow


class Job:
    """One job's URLs and a way to start its workers as processes."""

    def __init__(
        self, base_env: dict[str, str], bucket: str, secret: str, name: str | None = None
    ) -> None:
        self.bucket = bucket
        self.secret = secret
        self.name = name or f"job-{uuid.uuid4().hex[:8]}"
        self.uid = uuid.uuid4().hex[:12]
        self.repo = f"s3://{bucket}/repo"
        self.rendezvous = f"s3://{bucket}/rendezvous"
        self.base_env = base_env
        self.extra: list[str] = []

    def another(self) -> Job:
        """The next job (a new name and uid) on the same bucket, environment and secret."""
        return Job(self.base_env, self.bucket, self.secret)

    def env(self, index: int, total: int, **extra: str) -> dict[str, str]:
        return {
            **self.base_env,
            "JOB_COMPLETION_INDEX": str(index),
            "WORKERS_TOTAL": str(total),
            "JOB_NAME": self.name,
            "JOB_UID": self.uid,
            SECRET_ENV: self.secret,
            **extra,
        }

    def start(self, index: int, total: int, *args: str, **extra: str) -> subprocess.Popen[str]:
        argv = [sys.executable, WORKER, "--repo", self.repo, "--rendezvous", self.rendezvous]
        return subprocess.Popen(
            [*argv, *self.extra, *args],
            env=self.env(index, total, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(
        self, total: int, indexes: Iterable[int] | None = None, *args: str, **extra: str
    ) -> list[tuple[int, str]]:
        procs = [self.start(i, total, *args, **extra) for i in (indexes or range(total))]
        return [finish(p) for p in procs]


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def ok(results: list[tuple[int, str]]) -> None:
    for code, out in results:
        assert code == 0, out


@pytest.fixture
def job(base_env: dict[str, str], s3_bucket: str, secret: str) -> Job:
    return Job(base_env, s3_bucket, secret)


def open_repo(url: str, env: dict[str, str]) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk_storage(url, env))


def read(repo: icechunk.Repository, branch: str = "main") -> dict[str, Any]:
    store = repo.readonly_session(branch).store
    root = zarr.open_group(store, mode="r")
    return {
        "temp": root["temp"][:],
        "time": root["time"][:],
        "attrs": dict(root.attrs),
        "arrays": sorted(root.array_keys()),
    }


def job_commits(repo: icechunk.Repository, job_name: str) -> list[str]:
    return [
        info.id
        for info in repo.ancestry(branch="main")
        if ((info.metadata or {}).get(METADATA_KEY) or {}).get("job_name") == job_name
    ]


def expected_temp(rows: int) -> np.ndarray:
    r = np.arange(rows, dtype="f8")[:, None]
    return r * 100 + np.arange(8)[None, :]


@pytest.fixture
def poll_main(base_env: dict[str, str]) -> Iterator[Any]:
    """A reader polling ``main`` in a thread; records what it saw."""
    stop = threading.Event()
    seen: list[tuple[str, int, Any]] = []
    threads: list[threading.Thread] = []

    def start(url: str) -> list[tuple[str, int, Any]]:
        def loop() -> None:
            while not stop.is_set():
                try:
                    repo = open_repo(url, base_env)
                    session = repo.readonly_session("main")
                    root = zarr.open_group(session.store, mode="r")
                    shape = root["temp"].shape[0] if "temp" in root else -1
                    filled = int(np.isfinite(root["temp"][:]).all()) if shape > 0 else 1
                    seen.append((session.snapshot_id, shape, filled))
                except Exception as exc:  # repo not created yet
                    seen.append(("error", -1, type(exc).__name__))
                stop.wait(0.05)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return seen

    yield start
    stop.set()
    for t in threads:
        t.join(10)


def test_eight_workers_equal_one_and_readers_see_old_or_new(
    job: Job, base_env: dict[str, str], s3_bucket: str, poll_main: Any
) -> None:
    # The reference: the same job done by one process.
    solo = job.another()
    solo.repo = f"s3://{s3_bucket}/solo-repo"
    ok(solo.run(1))

    # First job creates the repository (worker 0 alone); then a second job appends.
    ok(job.run(8))
    repo = open_repo(job.repo, base_env)
    before = repo.lookup_branch("main")
    seen = poll_main(job.repo)
    second = job.another()
    ok(second.run(8))
    after = repo.lookup_branch("main")

    assert [i.id for i in repo.ancestry(branch="main")][:2] == [after, before]
    assert len(job_commits(repo, second.name)) == 1
    got = read(repo)
    assert got["temp"].shape == (2 * ROWS, 8)
    np.testing.assert_array_equal(got["temp"], expected_temp(2 * ROWS))
    np.testing.assert_array_equal(got["time"], np.arange(2 * ROWS))
    assert got["attrs"]["rows_written"] == ROWS
    assert "pending_rows" not in got["attrs"]

    reference = read(open_repo(solo.repo, base_env))
    np.testing.assert_array_equal(reference["temp"], expected_temp(ROWS))
    np.testing.assert_array_equal(got["temp"][:ROWS], reference["temp"])

    # What a reader saw while the second job ran: the old snapshot or the new one.
    snapshots = {s for s, _, _ in seen if s != "error"}
    assert snapshots <= {before, after}, seen
    assert before in snapshots
    assert all(filled == 1 for s, _, filled in seen if s != "error")
    # No temporary refs or rendezvous leftovers but the committed marker.
    assert repo.list_branches() == {"main"}


def test_same_index_twice_and_a_killed_worker(job: Job, base_env: dict[str, str]) -> None:
    total = 4
    ok(job.run(total))  # create the repository
    second = job.another()
    ok(second.run(total, [0, 0]))  # two copies of worker 0 at once: one setup wins
    # Worker 1 dies half way through its writes (no marker: a hard kill).
    code, out = second.run(total, [1], COOP_TEST_DIE_IN_WORK="1")[0]
    assert code == 9, out
    # Worker 2 runs twice to completion (a duplicated pod).
    ok(second.run(total, [2, 2]))
    # The pod of worker 1 is restarted; then the last worker arrives.
    ok(second.run(total, [1, 3]))
    repo = open_repo(job.repo, base_env)
    assert len(job_commits(repo, second.name)) == 1
    np.testing.assert_array_equal(read(repo)["temp"], expected_temp(2 * ROWS))
    # A late retry of any worker finds the job done and writes nothing.
    tip = repo.lookup_branch("main")
    code, out = second.run(total, [0])[0]
    assert code == 0 and "already-committed" in out, out
    assert open_repo(job.repo, base_env).lookup_branch("main") == tip


def test_worker0_rerun_after_main_moved_reuses_its_setup(
    job: Job, base_env: dict[str, str]
) -> None:
    total = 3
    ok(job.run(total))
    second = job.another()
    ok(second.run(total, [0]))  # setup published, its result too
    other_writer_creates_array(job.repo, base_env, "other")
    ok(second.run(total, [0]))  # restarted after main moved: same setup
    ok(second.run(total, [1, 2]))
    repo = open_repo(job.repo, base_env)
    got = read(repo)
    assert "other" in got["arrays"]
    np.testing.assert_array_equal(got["temp"], expected_temp(2 * ROWS))
    assert len(job_commits(repo, second.name)) == 1


def other_writer_creates_array(url: str, env: dict[str, str], name: str) -> str:
    repo = open_repo(url, env)
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_array(
        name, shape=(2,), chunks=(1,), dtype="i4", fill_value=7
    )
    return session.commit(f"other writer adds {name}")


def other_writer_sets_attr(url: str, env: dict[str, str]) -> str:
    repo = open_repo(url, env)
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").attrs["owner"] = "other-writer"
    return session.commit("other writer sets an attribute")


def test_concurrent_commit_to_another_array_lands_beside_ours(
    job: Job, base_env: dict[str, str]
) -> None:
    total = 3
    ok(job.run(total))
    second = job.another()
    ok(second.run(total, [0, 1]))
    other = other_writer_creates_array(job.repo, base_env, "other")
    ok(second.run(total, [2]))
    repo = open_repo(job.repo, base_env)
    ancestry = [i.id for i in repo.ancestry(branch="main")]
    assert other in ancestry
    got = read(repo)
    assert "other" in got["arrays"]
    np.testing.assert_array_equal(got["temp"], expected_temp(2 * ROWS))
    assert len(job_commits(repo, second.name)) == 1


def test_overlapping_concurrent_commit_fails_naming_the_conflict(
    job: Job, base_env: dict[str, str]
) -> None:
    """The silent-overwrite trap as a regression test.

    The job changes the root group's attributes (finalize); another writer
    changes them too after the job forked. Merging into a session opened
    after that commit would silently drop the other writer's attribute; we
    must refuse instead and leave it intact.
    """
    total = 2
    ok(job.run(total))
    second = job.another()
    ok(second.run(total, [0]))
    other = other_writer_sets_attr(job.repo, base_env)
    code, out = second.run(total, [1])[0]
    assert code != 0
    assert "CommitConflictError" in out and "overlaps" in out and second.name in out, out
    repo = open_repo(job.repo, base_env)
    assert repo.lookup_branch("main") == other
    assert read(repo)["attrs"]["owner"] == "other-writer"
    assert job_commits(repo, second.name) == []
    assert repo.list_branches() == {"main"}  # the failed attempt's branch is gone


def test_concurrent_write_to_the_same_chunk_fails_naming_it(
    job: Job, base_env: dict[str, str]
) -> None:
    total = 2
    ok(job.run(total))
    second = job.another()
    ok(second.run(total, [0], COOP_TEST_NO_WRITE="1", COOP_TEST_REWRITE_ROW="3"))
    # Another writer overwrites row 3 after the job forked; the job's last worker
    # rewrites the same chunk in its fork.
    repo = open_repo(job.repo, base_env)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="temp", mode="r+")[3, :] = -1.0
    other = session.commit("other writer fixes row 3")
    code, out = second.run(total, [1], COOP_TEST_NO_WRITE="1", COOP_TEST_REWRITE_ROW="3")[0]
    assert code != 0
    assert "CommitConflictError" in out and second.name in out, out
    assert "Chunk double update at /temp (chunks (3, 0))" in out, out
    assert repo.lookup_branch("main") == other
    np.testing.assert_array_equal(read(repo)["temp"][3], np.full(8, -1.0))
    assert job_commits(repo, second.name) == []
    assert repo.list_branches() == {"main"}


def test_naive_merge_would_have_lost_the_other_writers_change(
    base_env: dict[str, str], s3_bucket: str
) -> None:
    """Documents the trap the protocol avoids (icechunk's behaviour, not ours)."""
    repo = icechunk.Repository.create(icechunk_storage(f"s3://{s3_bucket}/trap", base_env))
    base = repo.writable_session("main")
    zarr.open_group(base.store, mode="a").attrs["v"] = 0
    base.commit("base")
    fork = repo.writable_session("main").fork()
    zarr.open_group(fork.store, mode="a").attrs["job"] = "ours"
    other = repo.writable_session("main")
    zarr.open_group(other.store, mode="a").attrs["owner"] = "other-writer"
    other.commit("other")
    naive = repo.writable_session("main")  # opened after the other commit
    naive.merge(fork)
    naive.commit("naive", rebase_with=icechunk.ConflictDetector())
    attrs = dict(zarr.open_group(repo.readonly_session("main").store, mode="r").attrs)
    assert "owner" not in attrs  # silently overwritten: why the protocol merges on S0


def test_a_failing_worker_stops_the_last_one_early(job: Job) -> None:
    total = 3
    ok(job.run(total))
    second = job.another()
    last = second.start(2, total, "--timeout", "600")
    failing = second.start(1, total, COOP_TEST_RAISE_IN_WORK="1")
    ok([finish(second.start(0, total))])
    code, out = finish(failing)
    assert code != 0 and "no source files" in out
    code, out = finish(last, timeout=120)  # far below its 600 s deadline
    assert code != 0
    assert "WorkerFailedError" in out and "result-1" in out and "no source files" in out, out


def test_a_worker_that_never_starts_times_out_by_name(job: Job) -> None:
    total = 3
    ok(job.run(total))
    second = job.another()
    results = second.run(total, [0, 2], "--timeout", "3")
    assert results[0][0] == 0
    code, out = results[1]
    assert code != 0
    assert "WaitTimeoutError" in out and "result-1" in out and "1 of 3 never arrived" in out, out


def test_total_that_disagrees_is_refused(job: Job) -> None:
    ok(job.run(2))
    second = job.another()
    ok(second.run(3, [0]))
    code, out = second.run(4, [1])[0]
    assert code != 0 and "WORKERS_TOTAL=4" in out and "set up for 3" in out, out


def test_empty_job_and_worker_without_rows_complete(job: Job, base_env: dict[str, str]) -> None:
    ok(job.run(2))
    second = job.another()
    ok(second.run(3, None, COOP_TEST_NO_WRITE="1"))
    repo = open_repo(job.repo, base_env)
    assert len(job_commits(repo, second.name)) == 1
    np.testing.assert_array_equal(read(repo)["temp"], expected_temp(ROWS))
    # More workers than rows: some have nothing to do and still take part.
    third = job.another()
    ok(third.run(20 if os.environ.get("COOP_TEST_BIG") else 5))
    np.testing.assert_array_equal(read(repo)["temp"], expected_temp(2 * ROWS))


def test_replicas_zarr_and_primary_with_a_crash_between_commits(
    job: Job, base_env: dict[str, str], s3_bucket: str, tmp_path: Path
) -> None:
    replica = f"s3://{s3_bucket}/replica"
    plain = str(tmp_path / "plain.zarr")
    job.extra = ["--replica", replica, "--zarr", plain]
    total = 3
    # The last worker dies right after its first target commit: the replica.
    results = job.run(total, None, ICECHUNK_COOP_CRASH_AT="between-commits")
    assert [c for c, _ in results] == [0, 0, CRASH_EXIT_CODE], results
    rep, prim = open_repo(replica, base_env), open_repo(job.repo, base_env)
    assert len(job_commits(rep, job.name)) == 1
    assert job_commits(prim, job.name) == []  # the primary is behind, never ahead
    # The restarted last worker finishes what is left and commits nothing twice.
    ok(job.run(total, [2]))
    assert len(job_commits(rep, job.name)) == 1
    assert len(job_commits(prim, job.name)) == 1
    for data in (read(rep), read(prim)):
        np.testing.assert_array_equal(data["temp"], expected_temp(ROWS))
    plain_root = zarr.open_group(plain, mode="r")
    np.testing.assert_array_equal(plain_root["temp"][:], expected_temp(ROWS))
    assert plain_root.attrs["rows_written"] == ROWS
    assert rep.list_branches() == {"main"} and prim.list_branches() == {"main"}
