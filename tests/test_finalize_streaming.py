"""The last worker merges results as they arrive, and still commits exactly what the plan pins."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import icechunk
import pytest
import zarr

from icechunk_coop import (
    SECRET_ENV,
    CooperativeJob,
    Stores,
    WaitPolicy,
    commit_merged,
    get_forked_session,
    get_merged_sessions,
    publish_result,
)
from icechunk_coop.errors import WorkerFailedError
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.testing import job_commits
from icechunk_coop.wire import Sealer

if TYPE_CHECKING:
    from conftest import JobFactory


def prepare(stores: Stores) -> None:
    zarr.open_group(stores.primary, mode="a").create_array(
        "a", shape=(8,), chunks=(1,), dtype="i4", fill_value=0
    )


def write_and_publish(job: CooperativeJob, value: int) -> None:
    i = job.identity.worker_index
    forks = get_forked_session(job, prepare if i == 0 else None)
    zarr.open_array(forks.stores.primary, path="a", mode="r+")[i] = value
    publish_result(job, forks, value)


def repo_of(tmp_path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo")))


def test_each_result_is_merged_while_the_last_worker_still_waits(
    tmp_path: Path,
    make_job: JobFactory,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    total = 4
    events: list[str] = []
    late = [make_job(i, total, name="st") for i in (1, 2)]

    def sleep(seconds: float) -> None:  # between two polls, one more worker finishes
        events.append("poll")
        if late:
            job = late.pop(0)
            write_and_publish(job, 10 + job.identity.worker_index)

    class Merges(logging.Handler):  # the finalizer's log line for each result merged
        def emit(self, record: logging.LogRecord) -> None:
            if "as it arrived" in record.getMessage():
                events.append("merge")

    logger = logging.getLogger("icechunk_coop.protocol")
    handler = Merges(level=logging.DEBUG)
    logger.addHandler(handler)
    request.addfinalizer(lambda: logger.removeHandler(handler))
    caplog.set_level(logging.DEBUG, logger=logger.name)
    write_and_publish(make_job(0, total, name="st"), 10)
    last = make_job(3, total, name="st", policy=WaitPolicy(initial_interval=0.01, sleep=sleep))
    forks = get_forked_session(last)
    zarr.open_array(forks.stores.primary, path="a", mode="r+")[3] = 13
    merged = get_merged_sessions(last, forks, 13)
    # Results 0 and 3 are merged at the first poll, 1 and 2 each at the poll after it lands.
    assert events == ["merge", "merge", "poll", "merge", "poll", "merge"]
    assert merged.results == [10, 11, 12, 13]
    commit_merged(last, merged, message="streamed")
    root = zarr.open_group(repo_of(tmp_path).readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [10, 11, 12, 13, 0, 0, 0, 0]
    assert repo_of(tmp_path).list_branches() == {"main"}


def test_a_plan_pinned_earlier_wins_over_a_result_republished_since(
    tmp_path: Path, make_job: JobFactory
) -> None:
    """Worker 1 runs again after a first finalizer pinned the plan, then died: the
    second finalizer streams worker 1's new result, yet commits the pinned one."""
    total = 3
    for i in range(2):
        write_and_publish(make_job(i, total, name="st"), 10 + i)
    first = make_job(2, total, name="st")
    forks = get_forked_session(first)
    zarr.open_array(forks.stores.primary, path="a", mode="r+")[2] = 12
    abandoned = get_merged_sessions(first, forks, 12)  # pinned; then this finalizer dies
    for m in abandoned.merges.values():
        m.discard()
    write_and_publish(make_job(1, total, name="st"), 99)  # worker 1, run again
    second = make_job(2, total, name="st")
    forks = get_forked_session(second)
    zarr.open_array(forks.stores.primary, path="a", mode="r+")[2] = 12
    merged = get_merged_sessions(second, forks, 12)
    assert merged.results == [10, 11, 12]
    snapshots = commit_merged(second, merged, message="pinned")
    repo = repo_of(tmp_path)
    assert job_commits(repo, "st-u") == [snapshots["primary"]]
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert list(root["a"][:3]) == [10, 11, 12]
    assert repo.list_branches() == {"main"}


def test_a_wait_that_fails_leaves_no_temporary_branch(tmp_path: Path, make_job: JobFactory) -> None:
    total = 3
    write_and_publish(make_job(0, total, name="st"), 10)
    make_job(1, total, name="st").meeting.mark_failed("result-1", "worker 1 broke")
    last = make_job(2, total, name="st")
    with pytest.raises(WorkerFailedError, match="worker 1 broke"):
        get_merged_sessions(last, get_forked_session(last))
    assert repo_of(tmp_path).list_branches() == {"main"}


def test_many_blobs_are_read_in_batches_and_each_handed_over_once(
    tmp_path: Path, secret: str
) -> None:
    """More blobs than one fetch batch: every one arrives once, whatever the batching."""
    sealer = Sealer.from_env("many", {SECRET_ENV: secret})
    rv = Rendezvous.for_job(str(tmp_path / "rv"), job_id="many", sealer=sealer)
    names = [f"result-{i}" for i in range(300)]
    for i, name in enumerate(names):
        rv.publish(name, {"i": i})
    seen: list[str] = []
    got = rv.wait_for_all(names, on_arrival=lambda name, value: seen.append(name))
    assert sorted(seen) == sorted(names)
    assert [got[n]["i"] for n in names] == list(range(300))
