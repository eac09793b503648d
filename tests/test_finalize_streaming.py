"""The last worker merges results as they arrive, and still commits exactly what the plan pins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import icechunk
import pytest
import zarr

from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    Stores,
    WaitPolicy,
    WorkerIdentity,
    commit_merged,
    get_forked_session,
    get_merged_sessions,
    publish_result,
)
from icechunk_coop.errors import WorkerFailedError
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.targets import _icechunk as driver_module
from icechunk_coop.testing import job_commits
from icechunk_coop.wire import Sealer

SECRET = "stream-secret-0123456789abcdef01"


def make_job(
    tmp_path: Path, index: int, total: int, policy: WaitPolicy | None = None
) -> CooperativeJob:
    identity = WorkerIdentity(worker_index=index, workers_total=total, job_name="st", job_uid="u")
    return CooperativeJob.create(
        identity=identity,
        rendezvous_url=str(tmp_path / "rv"),
        primary=IcechunkTarget(
            name="primary", storage=icechunk.local_filesystem_storage(str(tmp_path / "repo"))
        ),
        environ={"ICECHUNK_COOP_SECRET": SECRET},
        policy=policy,
    )


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 4
    events: list[str] = []
    late = [make_job(tmp_path, i, total) for i in (1, 2)]

    def sleep(seconds: float) -> None:  # between two polls, one more worker finishes
        events.append("poll")
        if late:
            job = late.pop(0)
            write_and_publish(job, 10 + job.identity.worker_index)

    real_add = driver_module._Merge.add

    def add(
        self: driver_module._Merge, forks: list[icechunk.ForkSession | None], *rest: Any
    ) -> None:
        events.append("merge")
        real_add(self, forks, *rest)

    monkeypatch.setattr(driver_module._Merge, "add", add)
    write_and_publish(make_job(tmp_path, 0, total), 10)
    last = make_job(tmp_path, 3, total, WaitPolicy(initial_interval=0.01, sleep=sleep))
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


def test_a_plan_pinned_earlier_wins_over_a_result_republished_since(tmp_path: Path) -> None:
    """Worker 1 runs again after a first finalizer pinned the plan, then died: the
    second finalizer streams worker 1's new result, yet commits the pinned one."""
    total = 3
    for i in range(2):
        write_and_publish(make_job(tmp_path, i, total), 10 + i)
    first = make_job(tmp_path, 2, total)
    forks = get_forked_session(first)
    zarr.open_array(forks.stores.primary, path="a", mode="r+")[2] = 12
    abandoned = get_merged_sessions(first, forks, 12)  # pinned; then this finalizer dies
    for m in abandoned.merges.values():
        m.discard()
    write_and_publish(make_job(tmp_path, 1, total), 99)  # worker 1, run again
    second = make_job(tmp_path, 2, total)
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


def test_a_wait_that_fails_leaves_no_temporary_branch(tmp_path: Path) -> None:
    total = 3
    write_and_publish(make_job(tmp_path, 0, total), 10)
    make_job(tmp_path, 1, total).meeting.mark_failed("result-1", "worker 1 broke")
    last = make_job(tmp_path, 2, total)
    with pytest.raises(WorkerFailedError, match="worker 1 broke"):
        get_merged_sessions(last, get_forked_session(last))
    assert repo_of(tmp_path).list_branches() == {"main"}


def test_many_blobs_are_read_in_batches_and_each_handed_over_once(tmp_path: Path) -> None:
    """More blobs than one fetch batch: every one arrives once, whatever the batching."""
    sealer = Sealer.from_env("many", {"ICECHUNK_COOP_SECRET": SECRET})
    rv = Rendezvous.for_job(str(tmp_path / "rv"), job_id="many", sealer=sealer)
    names = [f"result-{i}" for i in range(300)]
    for i, name in enumerate(names):
        rv.publish(name, {"i": i})
    seen: list[str] = []
    got = rv.wait_for_all(names, on_arrival=lambda name, value: seen.append(name))
    assert sorted(seen) == sorted(names)
    assert [got[n]["i"] for n in names] == list(range(300))
