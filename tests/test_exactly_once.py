"""Exactly once, under restarts and duplicates: in-process, local repositories.

Deaths are simulated at the protocol's named crash points
(``icechunk_coop.testing.at_crash_point`` raises ``Killed``, a
``BaseException``, so no failure marker is written, as with a pod that is
OOM-killed); the end-to-end versions with real processes are in
``test_cooperative.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import icechunk
import pytest
import zarr

from conftest import JobFactory
from icechunk_coop import (
    CooperativeJob,
    Stores,
    WaitPolicy,
    WorkerOutcome,
)
from icechunk_coop.errors import CommitConflictError
from icechunk_coop.inspect import job_branch_prefix
from icechunk_coop.rendezvous._meeting import StoredMeeting
from icechunk_coop.testing import Killed, at_crash_point
from icechunk_coop.testing import job_commits as commits_of
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, PLAN


def storage(tmp_path: Path, name: str) -> icechunk.Storage:
    return icechunk.local_filesystem_storage(str(tmp_path / name))


def make(
    tmp_path: Path,
    index: int,
    *,
    total: int = 2,
    replica: bool = False,
    cleanup: bool = True,
    scan: int = 500,
) -> CooperativeJob:
    replicas = ["replica"] if replica else []
    job = JobFactory(tmp_path)(index, total, name="eo", replicas=replicas, cleanup=cleanup)
    return attrs.evolve(job, ancestry_scan=scan)


def prepare(stores: Stores) -> None:
    for store in stores.all:
        zarr.open_group(store, mode="a").create_array(
            "a", shape=(2,), chunks=(1,), dtype="i4", fill_value=0
        )


def writer(index: int, value: int) -> Callable[[Stores], dict[str, int]]:
    def work(stores: Stores) -> dict[str, int]:
        for store in stores.all:
            zarr.open_array(store, path="a", mode="r+")[index] = value  # its own chunk
        return {"v": value}

    return work


def finalize(stores: Stores, results: list[Any]) -> None:
    for store in stores.all:
        zarr.open_group(store, mode="a").attrs["v"] = [r["v"] for r in results]


def job_commits(tmp_path: Path, name: str = "repo") -> list[str]:
    return commits_of(icechunk.Repository.open(storage(tmp_path, name)), "eo-u")


def other_commits(tmp_path: Path, n: int) -> None:
    repo = icechunk.Repository.open(storage(tmp_path, "repo"))
    for k in range(n):
        session = repo.writable_session("main")
        zarr.open_group(session.store, mode="a").attrs[f"other-{k}"] = k
        session.commit(f"other writer {k}")


def run(job: CooperativeJob, value: int = 1) -> WorkerOutcome:
    work = writer(job.identity.worker_index, value)
    return job.run(work=work, prepare=prepare, finalize=finalize, message="eo")


def test_the_commit_is_found_however_far_main_moved_since(tmp_path: Path) -> None:
    # Others commit more than the scan cap of a job that lost its setup.
    run(make(tmp_path, 0, scan=2))
    with at_crash_point("after-commit"), pytest.raises(Killed):
        run(make(tmp_path, 1, scan=2))  # the primary moved; no cleanup, no COMMITTED marker
    other_commits(tmp_path, 5)

    assert run(make(tmp_path, 0, scan=2), value=7).status == "already-committed"  # late retry
    again = make(tmp_path, 1, scan=2)
    assert run(again).status == "already-committed"  # the restarted finalizer
    assert len(job_commits(tmp_path)) == 1
    # What the dead finalizer left undone is done now.
    repo = icechunk.Repository.open(storage(tmp_path, "repo"))
    assert repo.list_branches() == {"main"}
    assert again.meeting.arrived() == {COMMITTED}


def test_a_restarted_finalizer_commits_the_pinned_results_to_the_rest(tmp_path: Path) -> None:
    run(make(tmp_path, 0, replica=True), value=1)
    with at_crash_point("between-commits"), pytest.raises(Killed):
        run(make(tmp_path, 1, replica=True))  # dies after the replica, before the primary
    assert len(job_commits(tmp_path, "replica")) == 1 and job_commits(tmp_path) == []

    # Worker 0 runs again and this time writes something else (a newer source).
    run(make(tmp_path, 0, replica=True), value=2)
    last = make(tmp_path, 1, replica=True)
    assert PLAN in last.meeting.arrived()
    outcome = run(last)
    assert outcome.status == "committed"
    assert outcome.snapshots["replica"] == job_commits(tmp_path, "replica")[0]  # found, kept

    def state(name: str) -> tuple[list[int], Any]:
        repo = icechunk.Repository.open(storage(tmp_path, name))
        root = zarr.open_group(repo.readonly_session("main").store, mode="r")
        return list(root["a"][:]), root.attrs["v"]

    assert state("repo") == state("replica") == ([1, 1], [1, 1])  # not worker 0's 2
    assert len(job_commits(tmp_path)) == 1 and len(job_commits(tmp_path, "replica")) == 1


def empty(job: CooperativeJob) -> WorkerOutcome:
    # Workers write nothing; the finalizer adds an array under a name of its own, so a
    # rebase over a twin's commit would be clean and only the compare-and-set stands
    # between a duplicate and a second commit. (A job that changes nothing at all
    # commits nothing: see test_a_job_that_changes_nothing_commits_no_snapshot.)
    def finalize(stores: Stores, results: list[Any]) -> None:
        name = f"f{uuid.uuid4().hex[:8]}"
        zarr.open_group(stores.primary, mode="a").create_array(name, shape=(1,), dtype="i4")

    return job.run(work=lambda stores: None, message="eo", finalize=finalize)


def test_a_duplicate_finalizer_never_commits_twice(tmp_path: Path) -> None:
    run(make(tmp_path, 0))
    first, second = make(tmp_path, 1), make(tmp_path, 1)
    twin: list[WorkerOutcome] = []

    def twin_commits_first(point: str) -> None:
        # ``first`` has checked the tip and committed nothing yet; just before it
        # moves main, its twin runs the whole finalization.
        twin.append(empty(second))

    with at_crash_point("before-commits", twin_commits_first):
        outcome = empty(first)
    assert twin and twin[0].status == "committed"
    # It looked again, found its twin's commit, and says so: what it merged is not on main.
    assert outcome.status == "already-committed"
    repo = icechunk.Repository.open(storage(tmp_path, "repo"))
    assert repo.lookup_branch("main") == twin[0].snapshots["primary"]
    assert len(job_commits(tmp_path)) == 1
    assert not [b for b in repo.list_branches() if b.startswith(job_branch_prefix("eo-u"))]


def temporary_branches(tmp_path: Path) -> list[str]:
    repo = icechunk.Repository.open(storage(tmp_path, "repo"))
    return sorted(b for b in repo.list_branches() if b.startswith(job_branch_prefix("eo-u")))


def test_a_twin_merging_after_its_sibling_cleaned_up_leaves_no_branch_when_it_dies(
    tmp_path: Path,
) -> None:
    """Two copies of the last worker finishing a pinned plan. One read the plan, and before
    it merges (a new temporary branch) the other commits and cleans up; it then finds the
    job on every target, commits and finalizes nothing, and dies before its cleanup. No pod
    of the job is left to remove its branch, so the attempt must have deleted it already."""
    run(make(tmp_path, 0))
    with at_crash_point("after-pin-plan"), pytest.raises(Killed):
        run(make(tmp_path, 1))  # the plan is pinned, nothing committed
    late, sibling = make(tmp_path, 1), make(tmp_path, 1)
    inside = [False]

    def sibling_finishes_first(point: str) -> None:
        # ``late`` found the plan pinned by the dead attempt: it merges next.
        inside[0] = True
        try:
            assert run(sibling).status == "committed"
        finally:
            inside[0] = False
        assert temporary_branches(tmp_path) == []  # its cleanup ran

    def dies_unless_sibling(point: str) -> None:
        if not inside[0]:
            raise Killed(point)

    with (
        at_crash_point("after-pin-plan", sibling_finishes_first),
        at_crash_point("before-cleanup", dies_unless_sibling, times=2),
        pytest.raises(Killed),
    ):
        run(late)
    assert len(job_commits(tmp_path)) == 1
    assert temporary_branches(tmp_path) == []


def test_a_job_that_conflicts_for_good_leaves_no_branch_of_a_killed_attempt(
    tmp_path: Path,
) -> None:
    """The finalizer is killed mid-merge (its branch stays); another writer then commits a
    change overlapping the job's, so every restart fails with a conflict and none reaches
    a cleanup: the failing one deletes the dead attempt's branch."""
    run(make(tmp_path, 0))
    repo = icechunk.Repository.open(storage(tmp_path, "repo"))
    # main moves first (an unrelated array), so the finalizer merges on a temporary
    # branch at the job's base, not on main itself.
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_array("unrelated", shape=(3,), dtype="i4")
    session.commit("another writer, elsewhere")
    with at_crash_point("mid-merge"), pytest.raises(Killed):
        run(make(tmp_path, 1))
    assert len(temporary_branches(tmp_path)) == 1
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_array("a", shape=(3,), dtype="i4")
    session.commit("another writer creates the same array")

    with pytest.raises(CommitConflictError):
        run(make(tmp_path, 1))
    assert job_commits(tmp_path) == []
    assert temporary_branches(tmp_path) == []


def test_a_copy_publishing_after_the_cleanup_withdraws_its_result(tmp_path: Path) -> None:
    """A copy of worker 0 loaded the setup and worked while the job finished and cleaned
    up; its result lands after the cleanup, and no pod of the job comes after it: it must
    remove the result itself, or the rendezvous keeps it for good."""
    run(make(tmp_path, 0))

    def the_job_finishes(point: str) -> None:
        assert run(make(tmp_path, 1)).status == "committed"

    late = make(tmp_path, 0)
    with at_crash_point("before-publish-result", the_job_finishes):
        assert run(late).status == "published"
    assert late.meeting.arrived() == {COMMITTED}
    assert len(job_commits(tmp_path)) == 1


def test_a_solo_twin_that_looked_too_early_does_not_commit_again(tmp_path: Path) -> None:
    # One-worker job, two pods: B finds nothing committed, then A does the whole
    # job, then B reads its base (above A's commit) and must still notice.
    a, b = make(tmp_path, 0, total=1), make(tmp_path, 0, total=1)

    def a_finishes_after_b_looked(point: str) -> None:
        assert run(a).status == "committed"

    with at_crash_point("started", a_finishes_after_b_looked):
        assert run(b).status == "already-committed"
    assert len(job_commits(tmp_path)) == 1


def test_a_waiting_twin_of_the_last_worker_stops_once_the_job_commits(tmp_path: Path) -> None:
    """Two live copies of the last index; worker 1 restarted late.

    Copy A waits for the results; while it sleeps between polls, worker 1
    arrives and copy B commits and cleans up. A never sees every result, and
    must not wait for them until its deadline: the job is committed.
    """
    total = 4
    for index in (0, 2):
        empty(make(tmp_path, index, total=total))
    twin = make(tmp_path, 3, total=total)
    slept: list[float] = []

    def meanwhile(seconds: float) -> None:
        if not slept:
            empty(make(tmp_path, 1, total=total))
            assert empty(twin).status == "committed"
        slept.append(seconds)

    a = make(tmp_path, 3, total=total)
    rendezvous = attrs.evolve(
        a.meeting.rendezvous,  # type: ignore[attr-defined]
        policy=WaitPolicy(timeout=30, sleep=meanwhile),
    )
    a = attrs.evolve(a, meeting=StoredMeeting(rendezvous=rendezvous))
    assert empty(a).status == "already-committed"
    assert len(slept) == 1  # the very next poll saw the committed marker
    assert len(job_commits(tmp_path)) == 1


def test_a_twin_held_after_reading_the_results_reports_already_committed(
    tmp_path: Path,
) -> None:
    """Two pods of the last index race: one reads every result and is held there while the
    other commits and cleans up. The held one must not pin, finalize or commit anything of
    its own, must leave the committed marker as its twin wrote it, and says
    "already-committed": what it read is not what main holds."""
    run(make(tmp_path, 0))
    held, twin = make(tmp_path, 1), make(tmp_path, 1)
    finished: list[WorkerOutcome] = []
    finalized: list[int] = []

    def twin_finishes_first(point: str) -> None:
        finished.append(run(twin, value=5))

    def counting(stores: Stores, results: list[Any]) -> None:
        finalized.append(1)
        finalize(stores, results)

    with at_crash_point("after-load-results", twin_finishes_first):
        outcome = held.run(work=writer(1, 9), prepare=prepare, finalize=counting, message="eo")
    assert finished and finished[0].status == "committed"
    assert outcome.status == "already-committed" and outcome.snapshots == {}
    assert finalized == []  # the held twin finalized nothing
    marker = twin.meeting.read(COMMITTED, Committed)
    assert marker is not None and marker.snapshots == finished[0].snapshots
    assert set(marker.timeline) == {0, 1}  # the twin's timeline, not a rewrite
    repo = icechunk.Repository.open(storage(tmp_path, "repo"))
    assert len(job_commits(tmp_path)) == 1
    assert repo.lookup_branch("main") == finished[0].snapshots["primary"]
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [1, 5]  # the twin's value for index 1, not the held one's 9
    assert held.meeting.arrived() == {COMMITTED}  # no plan of its own left behind
    assert repo.list_branches() == {"main"}
