"""How the last worker commits: on the target itself when it can, nothing when nothing changed.

A job whose target still points at its base merges and commits on the target
branch (one compare-and-set, no temporary branch); a target that moved gets
the temporary-branch path with conflict detection; a job that changes nothing
leaves no snapshot, yet is done (its ``committed`` marker is out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import icechunk
import pytest
import zarr

from conftest import JobFactory
from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    Stores,
    WorkerOutcome,
    commit_merged,
    get_forked_session,
    get_merged_sessions,
)
from icechunk_coop.errors import BranchKeptMovingError
from icechunk_coop.targets import driver_for
from icechunk_coop.testing import at_crash_point, job_commits
from icechunk_coop.wire._records import COMMITTED


def storage(tmp_path: Path) -> icechunk.Storage:
    return icechunk.local_filesystem_storage(str(tmp_path / "repo"))


def make(tmp_path: Path, index: int, total: int = 2) -> CooperativeJob:
    return JobFactory(tmp_path)(index, total, name="cp")


def repo(tmp_path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(storage(tmp_path))


def history(tmp_path: Path) -> list[str]:
    return [s.id for s in repo(tmp_path).ancestry(branch="main")]


def seed(tmp_path: Path) -> None:
    created = icechunk.Repository.create(storage(tmp_path))
    session = created.writable_session("main")
    zarr.open_group(session.store, mode="a").create_array(
        "a", shape=(2,), chunks=(1,), dtype="i4", fill_value=0
    )
    session.commit("seed")


def run_all(tmp_path: Path, work: Any, total: int = 2) -> list[WorkerOutcome]:
    outcomes = []
    for index in range(total):

        def each(stores: Stores, index: int = index) -> Any:
            return work(stores, index)

        outcomes.append(make(tmp_path, index, total).run(work=each, message="cp"))
    return outcomes


def test_a_job_that_changes_nothing_commits_no_snapshot(tmp_path: Path) -> None:
    seed(tmp_path)
    before = history(tmp_path)
    last = run_all(tmp_path, lambda stores, index: None)[-1]
    assert last.status == "committed"  # the job is done ...
    assert last.snapshots == {} and last.unchanged == ("primary",)  # ... and committed nothing
    assert history(tmp_path) == before
    assert job_commits(repo(tmp_path), "cp-u") == []
    # Late pods find the job done: the marker is out, as for any committed job.
    late = make(tmp_path, 0)
    assert late.committed_snapshot() == (True, None)  # committed, with no snapshot
    assert late.run(work=lambda stores: None, message="cp").status == "already-committed"
    assert late.meeting.arrived() == {COMMITTED}
    assert repo(tmp_path).list_branches() == {"main"}


def write_own_chunk(stores: Stores, index: int) -> int:
    zarr.open_array(stores.primary, path="a", mode="r+")[index] = index + 1
    return index


def test_a_target_still_at_its_base_is_committed_on_itself_with_no_temporary_branch(
    tmp_path: Path,
) -> None:
    seed(tmp_path)
    created: list[str] = []
    real = icechunk.Repository.create_branch

    def counting(self: icechunk.Repository, branch: str, snapshot: str) -> None:
        created.append(branch)
        real(self, branch, snapshot)

    icechunk.Repository.create_branch = counting  # type: ignore[method-assign]
    try:
        last = run_all(tmp_path, write_own_chunk)[-1]
    finally:
        icechunk.Repository.create_branch = real  # type: ignore[method-assign]
    assert last.status == "committed" and last.unchanged == ()
    assert created == []  # merged and committed on main itself
    assert history(tmp_path)[0] == last.snapshots["primary"]
    assert len(job_commits(repo(tmp_path), "cp-u")) == 1
    root = zarr.open_group(repo(tmp_path).readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [1, 2]


def test_a_target_that_moved_before_the_merge_is_rebased_beside_it(tmp_path: Path) -> None:
    seed(tmp_path)
    make(tmp_path, 0).run(work=lambda stores: write_own_chunk(stores, 0), message="cp")
    other = repo(tmp_path).writable_session("main")
    zarr.open_group(other.store, mode="a").attrs["other"] = 1
    other_commit = other.commit("another writer")
    last = make(tmp_path, 1).run(work=lambda stores: write_own_chunk(stores, 1), message="cp")
    assert last.status == "committed"
    assert history(tmp_path)[:2] == [last.snapshots["primary"], other_commit]
    root = zarr.open_group(repo(tmp_path).readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [1, 2] and root.attrs["other"] == 1  # kept beside ours
    assert repo(tmp_path).list_branches() == {"main"}


def test_a_target_that_moves_under_a_merge_on_itself_is_merged_again_beside_it(
    tmp_path: Path,
) -> None:
    """The merge opened on main at the base; another writer commits before the
    compare-and-set: that commit fails, is not counted as an attempt, and the
    retry rebases beside main with conflict detection, keeping both."""
    seed(tmp_path)
    make(tmp_path, 0).run(work=lambda stores: write_own_chunk(stores, 0), message="cp")
    moved: list[str] = []

    def another_writer(point: str) -> None:
        if not moved:
            other = repo(tmp_path).writable_session("main")
            zarr.open_group(other.store, mode="a").attrs["other"] = 1
            moved.append(other.commit("another writer"))

    last = attrs.evolve(make(tmp_path, 1), commit_attempts=1)
    with at_crash_point("before-commits", another_writer, times=2):
        outcome = last.run(work=lambda stores: write_own_chunk(stores, 1), message="cp")
    assert outcome.status == "committed"
    assert history(tmp_path)[:2] == [outcome.snapshots["primary"], moved[0]]
    root = zarr.open_group(repo(tmp_path).readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [1, 2] and root.attrs["other"] == 1
    assert len(job_commits(repo(tmp_path), "cp-u")) == 1
    assert repo(tmp_path).list_branches() == {"main"}


def test_an_append_reaches_the_workers(tmp_path: Path) -> None:
    """Worker 0 grows the array in ``prepare``; the workers write past the old shape."""
    seed(tmp_path)

    def grow(stores: Stores) -> None:
        zarr.open_array(stores.primary, path="a", mode="r+").resize((4,))
        zarr.open_group(stores.primary, mode="a").attrs["rows"] = 4

    def write(stores: Stores, index: int) -> None:
        zarr.open_array(stores.primary, path="a", mode="r+")[2 + index] = 10 + index

    outcomes = []
    for index in range(2):
        job = make(tmp_path, index)
        work = lambda stores, index=index: write(stores, index)  # noqa: E731 - one line
        outcomes.append(job.run(work=work, prepare=grow, message="cp"))
    assert outcomes[-1].status == "committed"
    root = zarr.open_group(repo(tmp_path).readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [0, 0, 10, 11] and root.attrs["rows"] == 4


def test_worker_0s_chunk_changes_never_come_back_over_a_workers_chunks(tmp_path: Path) -> None:
    """An append whose prepare also writes chunks (fill values, a coordinate).

    Worker 0 grows ``a`` and writes its new chunks empty (icechunk records a
    deletion); the workers then fill them, one chunk each. Every worker's chunk
    must survive the merge, whatever order the forks are merged in: a fork
    that carried worker 0's changes with it would put the empty chunk back.
    """
    seed(tmp_path)

    def prepare(stores: Stores) -> None:
        array = zarr.open_array(stores.primary, path="a", mode="r+")
        array.resize((5,))
        array[2:5] = 0  # the fill value: written empty

    def work(stores: Stores, index: int) -> None:
        zarr.open_array(stores.primary, path="a", mode="r+")[2 + index] = 10 + index

    for index in range(3):
        job = make(tmp_path, index, 3)
        outcome = job.run(
            work=lambda stores, index=index: work(stores, index),
            prepare=prepare if index == 0 else None,
            message="cp",
        )
    assert outcome.status == "committed"
    session = repo(tmp_path).readonly_session(branch="main")
    assert zarr.open_array(session.store, path="a", mode="r")[:].tolist() == [0, 0, 10, 11, 12]


def test_a_callers_finalized_merge_is_never_committed_again_without_its_finalize(
    tmp_path: Path,
) -> None:
    """The step API: final metadata written into ``merged`` by hand, no ``finalize``
    given. If the target moves under the commit, a new merge would lack that
    metadata: the commit stops, naming the move, and nothing of the job lands."""
    seed(tmp_path)
    make(tmp_path, 0).run(work=lambda stores: write_own_chunk(stores, 0), message="cp")
    last = make(tmp_path, 1)
    forks = get_forked_session(last)
    write_own_chunk(forks.stores, 1)
    merged = get_merged_sessions(last, forks)
    zarr.open_array(merged.stores.primary, path="a", mode="r+").attrs["final"] = True
    other = repo(tmp_path).writable_session("main")
    zarr.open_group(other.store, mode="a").attrs["other"] = 1
    moved = other.commit("another writer")
    with pytest.raises(BranchKeptMovingError, match="cp-u"):
        commit_merged(last, merged, message="cp")
    assert history(tmp_path)[0] == moved
    assert job_commits(repo(tmp_path), "cp-u") == []
    # Given the finalize, the same commit rebuilds the merge beside main and lands it.
    snapshots = commit_merged(
        last, merged, message="cp",
        finalize=lambda stores, results: zarr.open_array(
            stores.primary, path="a", mode="r+"
        ).attrs.update(final=True),
    )  # fmt: skip
    root = zarr.open_group(repo(tmp_path).readonly_session("main").store, mode="r")
    assert history(tmp_path)[0] == snapshots["primary"]
    assert list(root["a"][:]) == [1, 2] and root["a"].attrs["final"] and root.attrs["other"] == 1


def test_worker_0s_session_is_opened_beside_its_start_and_staged_from(tmp_path: Path) -> None:
    """``prestage`` opens worker 0's session while the start reads; staging forks from it.

    Its base is the tip when the start looked, as a session opened in the
    staging step would be a moment later: a commit landing in between is
    below neither, and the commit's compare-and-set from that base (tested
    above) is what keeps it.
    """
    storage = icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    repo = icechunk.Repository.create(storage)
    first = repo.lookup_branch("main")
    driver = driver_for(IcechunkTarget(name="primary", storage=storage), job_id="j-u",
                        meeting=None, scan=10)  # type: ignore[arg-type]  # fmt: skip
    driver.prestage()
    another = repo.writable_session("main")
    zarr.create_array(another.store, name="b", shape=(2,), chunks=(1,), dtype="i4")
    moved = another.commit("another writer, after the start looked")
    assert driver.stage(primary=True).base == first
    assert driver.stage(primary=True).base == moved  # no session left: staging reads the tip
