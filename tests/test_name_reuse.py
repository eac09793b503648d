"""A job name reused without a uid never skips silently: the committed marker says which run.

The committed marker outlives a job so that a late pod finds the job done.
Without a uid the job id is the name alone, so a later Job of that name
finds the same marker: it must be told from a retry of the run that
committed (same job start) and refused otherwise, naming the fix.
In-process workers on local files.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import icechunk
import pytest
import zarr

from icechunk_coop import CooperativeJob, Stores, WorkerIdentity, WorkerOutcome
from icechunk_coop.errors import JobNameReusedError
from icechunk_coop.inspect._cleanup import remove_job
from icechunk_coop.testing import job_commits
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED

if TYPE_CHECKING:
    from conftest import JobFactory

Make = Callable[..., CooperativeJob]
FIRST = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
SECOND = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def repo(tmp_path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo")))


@pytest.fixture
def make(make_job: JobFactory) -> Make:
    """Worker ``index`` of a Job ``nightly``: uid and start as its environment would give them."""

    def make(
        index: int,
        *,
        uid: str | None = None,
        start: datetime | None = None,
        decided: datetime = FIRST,
    ) -> CooperativeJob:
        identity = WorkerIdentity(
            worker_index=index,
            workers_total=2,
            job_name="nightly",
            job_uid=uid,
            job_start=start,
            pod=f"nightly-{index}-abcde",
        )
        return make_job(identity, decide_start=lambda: decided)

    return make


def prepare(stores: Stores) -> None:
    zarr.open_group(stores.primary, mode="a").require_array(
        "a", shape=(2,), chunks=(1,), dtype="i4", fill_value=0
    )


def writer(index: int, value: int) -> Callable[[Stores], int]:
    def work(stores: Stores) -> int:
        zarr.open_array(stores.primary, path="a", mode="r+")[index] = value
        return value

    return work


def run(job: CooperativeJob, value: int = 1) -> WorkerOutcome:
    return job.run(work=writer(job.identity.worker_index, value), prepare=prepare, message="m")


def run_job(make: Make, value: int = 1, **identity: Any) -> list[WorkerOutcome]:
    return [run(make(i, **identity), value) for i in (0, 1)]


def marker(job: CooperativeJob) -> Committed:
    found = job.meeting.read(COMMITTED, Committed)
    assert found is not None
    return found


def test_the_committed_marker_says_which_run_committed(tmp_path: Path, make: Make) -> None:
    assert [o.status for o in run_job(make, start=FIRST)] == ["published", "committed"]
    found = marker(make(0, start=FIRST))
    assert found.job_start == FIRST.isoformat()
    assert found.pod == "nightly-1-abcde"


def test_the_marker_records_the_start_worker_0_decided_when_the_environment_gives_none(
    tmp_path: Path, make: Make
) -> None:
    run_job(make, uid="u1", decided=SECOND)
    assert marker(make(0, uid="u1")).job_start == SECOND.isoformat()


def test_a_marker_without_the_new_fields_still_reads_and_they_are_not_written_when_unknown() -> (
    None
):
    old = {"format": Committed.FORMAT, "snapshots": {"primary": "S"}, "at": 1.0,
           "workers_total": 2, "timeline": {}}  # fmt: skip
    read = Committed.from_wire(old, "here")
    assert (read.job_start, read.pod) == (None, None)
    assert read.to_wire() == old


def test_a_name_reused_with_a_new_uid_commits_again_and_a_retry_under_a_uid_is_done(
    tmp_path: Path, make: Make
) -> None:
    run_job(make, uid="u1", start=FIRST)
    # A retry under the same uid, even with a start that differs: the uid decides, as before.
    assert run(make(0, uid="u1", start=SECOND)).status == "already-committed"
    second = run_job(make, value=2, uid="u2", start=SECOND)
    assert [o.status for o in second] == ["published", "committed"]
    assert len(job_commits(repo(tmp_path), "nightly-u1")) == 1
    assert len(job_commits(repo(tmp_path), "nightly-u2")) == 1


def test_a_retry_of_the_same_run_without_a_uid_finds_itself_done(
    tmp_path: Path, make: Make
) -> None:
    run_job(make, start=FIRST)
    tip = repo(tmp_path).lookup_branch("main")
    assert run(make(0, start=FIRST), value=9).status == "already-committed"
    assert run(make(1, start=FIRST), value=9).status == "already-committed"
    assert repo(tmp_path).lookup_branch("main") == tip
    assert len(job_commits(repo(tmp_path), "nightly")) == 1


@pytest.mark.parametrize("index", [0, 1])
def test_another_run_of_the_name_without_a_uid_is_refused_naming_the_fix(
    tmp_path: Path, make: Make, index: int
) -> None:
    run_job(make, start=FIRST)
    tip = repo(tmp_path).lookup_branch("main")
    before = marker(make(0, start=FIRST))

    with pytest.raises(JobNameReusedError) as refused:
        run(make(index, start=SECOND), value=9)

    message = str(refused.value)
    assert "'nightly'" in message
    assert FIRST.isoformat() in message and SECOND.isoformat() in message
    assert "JOB_UID" in message and "batch.kubernetes.io/controller-uid" in message
    assert "new name" in message
    assert refused.value.committed_start == FIRST.isoformat()
    assert repo(tmp_path).lookup_branch("main") == tip  # nothing committed
    assert marker(make(0, start=FIRST)) == before  # the first run's word stands


def test_a_run_without_a_start_cannot_be_told_from_a_retry_and_is_refused(
    tmp_path: Path, make: Make
) -> None:
    run_job(make)  # worker 0 decided the start: the environment gave none
    tip = repo(tmp_path).lookup_branch("main")

    with pytest.raises(JobNameReusedError, match="no job start in its environment") as refused:
        run(make(1), value=9)

    assert refused.value.own_start is None
    assert refused.value.committed_start == FIRST.isoformat()
    assert repo(tmp_path).lookup_branch("main") == tip


def test_a_marker_from_an_older_version_is_refused_without_a_uid(
    tmp_path: Path, make: Make
) -> None:
    run_job(make, start=FIRST)
    job = make(0, start=FIRST)
    old = marker(job)
    job.meeting.publish(COMMITTED, Committed(snapshots=old.snapshots, at=old.at))

    with pytest.raises(JobNameReusedError, match="did not record"):
        run(make(0, start=FIRST), value=9)


def test_after_the_old_run_is_forgotten_another_start_commits_and_the_same_start_is_done(
    tmp_path: Path, make: Make
) -> None:
    # `icechunk-coop clean --job nightly` removes the rendezvous, marker and all: only the
    # commit's own record of its start can tell a new run of the name from a retry.
    run_job(make, start=FIRST)
    remove_job(str(tmp_path / "rv"), "nightly")
    assert run(make(0, start=FIRST), value=9).status == "already-committed"
    remove_job(str(tmp_path / "rv"), "nightly")
    second = run_job(make, value=2, start=SECOND)
    assert [o.status for o in second] == ["published", "committed"]
    assert len(job_commits(repo(tmp_path), "nightly")) == 2
    store = repo(tmp_path).readonly_session("main").store
    assert list(zarr.open_array(store, path="a", mode="r")[:]) == [2, 2]
