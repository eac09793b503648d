"""Protocol checks that need no second process: refusals before merging, solo jobs, step API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import icechunk
import pytest
import zarr

from conftest import JobFactory
from icechunk_coop import (
    ConfigurationError,
    CooperativeJob,
    IcechunkTarget,
    Stores,
    WorkerIdentity,
    WorkerOutcome,
    ZarrTarget,
    commit_merged,
    get_forked_session,
    get_merged_sessions,
    publish_result,
)
from icechunk_coop.errors import (
    ForeignResultError,
    MissingSecretError,
    PayloadAuthenticationError,
    WorkersTotalMismatchError,
)
from icechunk_coop.inspect import METADATA_KEY
from icechunk_coop.rendezvous._blobs import BlobStore
from icechunk_coop.testing import job_commits, run_in_process
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, FAILED_SUFFIX, PLAN, SETUP, Result, result_name


def make_job(tmp_path: Path, index: int, total: int = 2) -> CooperativeJob:
    return JobFactory(tmp_path)(index, total, name="unit")


def store_only(store: zarr.abc.store.Store) -> Stores:
    return Stores(primary=store)


def prepare(stores: Stores) -> None:
    zarr.open_group(stores.primary, mode="a").create_array(
        "a", shape=(4,), chunks=(1,), dtype="i4", fill_value=0
    )


def plant_result_1(job: CooperativeJob, token: str, workers_total: int = 3) -> None:
    """A result-1 sealed with the right secret, but of another setup or total."""
    forks = get_forked_session(job)
    stale = Result(
        token=token,
        index=1,
        workers_total=workers_total,
        forks={"primary": forks.forks["primary"].session},
    )
    job.meeting.publish(result_name(1), stale)


def test_a_result_from_another_setup_is_refused_by_index(tmp_path: Path) -> None:
    first, last = make_job(tmp_path, 0, 3), make_job(tmp_path, 2, 3)
    publish_result(first, get_forked_session(first, prepare), {"ok": True})
    plant_result_1(last, token="an-older-setup")
    with pytest.raises(ForeignResultError, match="worker 1") as info:
        get_merged_sessions(last, get_forked_session(last))
    assert info.value.worker_index == 1
    assert "another setup" in str(info.value)


def test_a_result_claiming_another_total_is_refused(tmp_path: Path) -> None:
    first, last = make_job(tmp_path, 0, 3), make_job(tmp_path, 2, 3)
    forks = get_forked_session(first, prepare)
    publish_result(first, forks, None)
    plant_result_1(last, token=forks.setup.token, workers_total=5)
    with pytest.raises(WorkersTotalMismatchError, match="WORKERS_TOTAL=5"):
        get_merged_sessions(last, get_forked_session(last))


def test_results_of_any_picklable_type_reach_finalize_in_index_order(tmp_path: Path) -> None:
    seen: list[object] = []

    def work(job: CooperativeJob) -> object:
        i = job.identity.worker_index
        return {"worker": i, "when": datetime(2025, 1, 1 + i), "files": {f"f{i}.grib"}}

    def run(job: CooperativeJob) -> WorkerOutcome:
        return job.run(
            work=lambda stores: work(job),
            prepare=prepare,
            finalize=lambda stores, results: seen.extend(results),
            message="m",
        )

    run_in_process(lambda ident: make_job(tmp_path, ident.worker_index, 3), 3, run,
                   job_name="unit", job_uid="u")  # fmt: skip
    assert [r["worker"] for r in seen] == [0, 1, 2]  # type: ignore[index]
    assert seen[2] == {"worker": 2, "when": datetime(2025, 1, 3), "files": {"f2.grib"}}


def test_the_steps_one_by_one_commit_once(tmp_path: Path) -> None:
    """The step API end to end: fork, write, publish, merge, final metadata, commit."""
    workers = [make_job(tmp_path, i, 3) for i in range(3)]

    def write(stores: Stores, i: int) -> None:
        zarr.open_array(stores.primary, path="a", mode="r+")[i] = 10 + i

    def finalize(stores: Stores, results: list[object]) -> None:
        zarr.open_group(stores.primary, mode="a").attrs["results"] = results

    for i, job in enumerate(workers[:2]):
        forks = get_forked_session(job, prepare if i == 0 else None)
        write(forks.stores, i)
        publish_result(job, forks, i)
        with pytest.raises(ConfigurationError, match="only the last worker merges"):
            get_merged_sessions(job, forks)
    last = workers[2]
    forks = get_forked_session(last)
    write(forks.stores, 2)
    merged = get_merged_sessions(last, forks, 2)
    assert merged.results == [0, 1, 2]
    finalize(merged.stores, merged.results)
    snapshots = commit_merged(last, merged, message="steps", finalize=finalize)
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    assert job_commits(repo, "unit-u") == [snapshots["primary"]]
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [10, 11, 12, 0]
    assert root.attrs["results"] == [0, 1, 2]
    assert repo.list_branches() == {"main"}
    assert last.is_committed()
    assert last.committed_snapshot() == (True, snapshots["primary"])  # from the marker


def test_a_solo_job_commits_once_and_a_rerun_is_a_no_op(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0, total=1)

    def work(stores: Stores) -> int:
        zarr.open_array(stores.primary, path="a", mode="r+")[:] = [1, 2, 3, 4]
        return 4

    outcome = job.run(work=work, prepare=prepare, message="solo")
    assert outcome.status == "committed"
    again = make_job(tmp_path, 0, total=1).run(work=work, prepare=prepare, message="solo")
    assert again.status == "already-committed"
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    assert len(list(repo.ancestry(branch="main"))) == 2
    assert not (tmp_path / "rv").exists()  # a one-worker job exchanges nothing through storage
    assert not job.meeting.stored


def test_duplicate_target_names_are_refused(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0)
    with pytest.raises(ConfigurationError, match="unique"):
        CooperativeJob(
            identity=job.identity,
            meeting=job.meeting,
            primary=job.primary,
            replicas=(job.primary,),
        )


def test_insecure_mode_is_refused_for_remote_repositories(tmp_path: Path) -> None:
    identity = WorkerIdentity(worker_index=0, workers_total=2, job_name="unit", job_uid="u")
    insecure = {"ICECHUNK_COOP_INSECURE": "1"}
    remote = IcechunkTarget(
        name="primary",
        storage=icechunk.s3_storage(bucket="b", prefix="p", region="us-east-1", from_env=True),
    )
    rv = str(tmp_path / "rv")
    with pytest.raises(
        MissingSecretError, match=r"are not: primary.*Set ICECHUNK_COOP_SECRET"
    ) as info:
        CooperativeJob.create(
            identity=identity, rendezvous_url=rv, primary=remote, environ=insecure
        )
    assert "'unit-u'" in str(info.value) and "primary" in str(info.value)
    local = IcechunkTarget(
        name="primary", storage=icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    )
    with pytest.raises(MissingSecretError, match="rendezvous s3://b/rv"):
        CooperativeJob.create(
            identity=identity, rendezvous_url="s3://b/rv", primary=local, environ=insecure
        )
    # Local repositories are what the opt-out is for; a solo job exchanges nothing.
    job = CooperativeJob.create(
        identity=identity, rendezvous_url=rv, primary=local, environ=insecure
    )
    assert job.meeting.stored
    solo = WorkerIdentity(worker_index=0, workers_total=1, job_name="unit", job_uid="u")
    CooperativeJob.create(identity=solo, rendezvous_url=rv, primary=remote, environ={})


def test_a_retry_withdraws_its_failure_marker_before_working(tmp_path: Path) -> None:
    first = make_job(tmp_path, 0, total=3)
    first.run(work=lambda stores: None, prepare=prepare, message="m")

    def fail(stores: Stores) -> None:
        raise RuntimeError("source missing")

    with pytest.raises(RuntimeError):
        make_job(tmp_path, 1, total=3).run(work=fail, message="m")
    marker = result_name(1) + FAILED_SUFFIX
    assert marker in first.meeting.arrived()

    seen_while_working: list[set[str]] = []

    def slow(stores: Stores) -> None:
        # What a peer retried at this moment would see: no marker to fail on.
        seen_while_working.append(first.meeting.arrived())

    make_job(tmp_path, 1, total=3).run(work=slow, message="m")
    assert seen_while_working and marker not in seen_while_working[0]
    assert result_name(1) in first.meeting.arrived()


def test_a_worker_that_cannot_open_the_setup_leaves_a_marker(tmp_path: Path) -> None:
    make_job(tmp_path, 0, total=3).run(work=lambda stores: None, prepare=prepare, message="m")
    identity = WorkerIdentity(worker_index=1, workers_total=3, job_name="unit", job_uid="u")
    stranger = CooperativeJob.create(
        identity=identity,
        rendezvous_url=str(tmp_path / "rv"),
        primary=IcechunkTarget(
            name="primary", storage=icechunk.local_filesystem_storage(str(tmp_path / "repo"))
        ),
        environ={"ICECHUNK_COOP_SECRET": "another-secret-0123456789abcdef"},
    )
    with pytest.raises(PayloadAuthenticationError):
        stranger.run(work=lambda stores: None, message="m")
    # The last worker is told at once instead of waiting out its deadline.
    assert result_name(1) + FAILED_SUFFIX in stranger.meeting.arrived()
    with pytest.raises(PayloadAuthenticationError, match=r"result-1\.failed"):
        make_job(tmp_path, 2, total=3).run(work=lambda stores: None, message="m")


def test_a_plain_zarr_primary_commits_once_with_an_icechunk_replica(tmp_path: Path) -> None:
    """The protocol never asks what the primary is: a zarr v3 store works too."""
    replica = IcechunkTarget(
        name="replica", storage=icechunk.local_filesystem_storage(str(tmp_path / "replica"))
    )
    primary = ZarrTarget(name="primary", url=str(tmp_path / "plain.zarr"))

    def make(identity: WorkerIdentity) -> CooperativeJob:
        return JobFactory(tmp_path)(identity, primary=primary, replicas=[replica])

    def prepare_all(stores: Stores) -> None:
        for store in stores.all:
            prepare(store_only(store))

    def run(job: CooperativeJob) -> WorkerOutcome:
        def work(stores: Stores) -> int:
            for store in stores.all:
                zarr.open_array(store, path="a", mode="r+")[job.identity.worker_index] = 7
            return job.identity.worker_index

        return job.run(work=work, prepare=prepare_all, message="plain")

    outcomes = run_in_process(make, 2, run, job_name="plain", job_uid="u")
    assert [o.status for o in outcomes] == ["published", "committed"]
    assert outcomes[1].snapshots["primary"] == "zarr"
    assert list(zarr.open_array(str(tmp_path / "plain.zarr"), path="a", mode="r")[:]) == [
        7, 7, 0, 0,
    ]  # fmt: skip
    again = run_in_process(make, 2, run, indexes=[1], job_name="plain", job_uid="u")
    assert again[0].status == "already-committed"
    repo = icechunk.Repository.open(replica.storage)
    assert len(job_commits(repo, "plain-u")) == 1


def test_worker_0_decides_the_start_and_every_worker_takes_it_from_the_setup(
    tmp_path: Path,
) -> None:
    decided = datetime(2025, 3, 1, 6, 0)  # naive: UTC, as numpy and pandas write it
    asked: list[int] = []
    seen: dict[int, datetime | None] = {}

    def make(identity: WorkerIdentity) -> CooperativeJob:
        def decide() -> datetime:
            asked.append(identity.worker_index)
            return decided

        return JobFactory(tmp_path)(identity, decide_start=decide)

    def run(job: CooperativeJob) -> WorkerOutcome:
        def work(stores: Stores) -> None:
            seen[job.identity.worker_index] = job.job_start

        return job.run(work=work, prepare=prepare, message="m")

    outcomes = run_in_process(make, 3, run, job_name="start", job_uid="u")
    expected = decided.replace(tzinfo=UTC)
    assert asked == [0]  # nobody else reads a clock
    assert seen == {0: expected, 1: expected, 2: expected}
    assert outcomes[2].job_start == expected
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    meta = next(repo.ancestry(branch="main")).metadata[METADATA_KEY]
    assert meta["job_start"] == expected.isoformat()


def test_a_worker_whose_start_disagrees_with_the_setup_is_refused(tmp_path: Path) -> None:
    make_job(tmp_path, 0, 3).run(work=lambda stores: None, prepare=prepare, message="m")
    other = WorkerIdentity(
        worker_index=1,
        workers_total=3,
        job_name="unit",
        job_uid="u",
        job_start=datetime(2030, 1, 1, tzinfo=UTC),
    )
    job = JobFactory(tmp_path)(other)
    with pytest.raises(ConfigurationError, match="the setup pinned"):
        job.run(work=lambda stores: None, message="m")


def test_a_target_passes_virtual_chunk_credentials_and_config_to_icechunk(
    tmp_path: Path,
) -> None:
    storage = icechunk.local_filesystem_storage(str(tmp_path / "virtual"))
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        icechunk.VirtualChunkContainer("s3://sources/", icechunk.s3_store(region="us-east-1"))
    )
    target = IcechunkTarget(
        name="primary",
        storage=storage,
        config=config,
        authorize_virtual_chunk_access={"s3://sources/": None},
    )
    # icechunk warns about ``None`` (environment credentials): proof the mapping reached it.
    with pytest.warns(DeprecationWarning, match="authorize_virtual_chunk_access"):
        repo = target.open(create=True)
    assert "s3://sources/" in repo.config.virtual_chunk_containers
    with pytest.warns(DeprecationWarning, match="authorize_virtual_chunk_access"):
        reopened = target.open(create=False)
    assert "s3://sources/" in reopened.config.virtual_chunk_containers


def test_the_committed_marker_keeps_every_workers_timeline(tmp_path: Path) -> None:
    outcomes = run_in_process(
        lambda ident: make_job(tmp_path, ident.worker_index, 3),
        3,
        lambda job: job.run(work=lambda stores: None, prepare=prepare, message="m"),
        job_name="unit",
        job_uid="u",
    )
    marker = make_job(tmp_path, 0, 3).meeting.read(COMMITTED, Committed)
    assert marker is not None and marker.workers_total == 3
    assert sorted(marker.timeline) == [0, 1, 2]
    for index, steps in marker.timeline.items():
        expected = {"setup", "work", "wait", "commit"} if index == 2 else {"setup", "work"}
        assert set(steps) == expected
        assert all(began <= ended for began, ended in steps.values())
        assert steps["setup"][1] <= steps["work"][0]
    assert set(outcomes[2].seconds) == {"setup", "work", "wait", "commit"}


def test_a_worker_reads_what_it_needs_at_start_in_one_batch_and_the_setup_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start is one batched read (marker, setup, plan, own failure markers), not one each.

    A worker starting after the setup was published finds it in that batch
    and does not read it again in its setup step; nothing of its own is
    deleted when no failure marker is there.
    """
    calls: list[tuple[str, tuple[str, ...]]] = []
    get, get_many, delete = BlobStore.get, BlobStore.get_many, BlobStore.delete

    def spy_get(self: BlobStore, name: str) -> bytes | None:
        calls.append(("get", (name,)))
        return get(self, name)

    def spy_get_many(self: BlobStore, names: Sequence[str]) -> dict[str, bytes]:
        calls.append(("get_many", tuple(names)))
        return get_many(self, names)

    def spy_delete(self: BlobStore, name: str) -> None:
        calls.append(("delete", (name,)))
        delete(self, name)

    run_in_process(lambda identity: make_job(tmp_path, identity.worker_index, 3), 3,
                   lambda job: job.run(work=lambda s: None, prepare=prepare, message="m"),
                   indexes=[0, 1], job_name="unit", job_uid="u")  # fmt: skip
    monkeypatch.setattr(BlobStore, "get", spy_get)
    monkeypatch.setattr(BlobStore, "get_many", spy_get_many)
    monkeypatch.setattr(BlobStore, "delete", spy_delete)
    outcome = make_job(tmp_path, 2, 3).run(work=lambda s: None, message="m")
    assert outcome.status == "committed"
    assert calls[0] == ("get_many", (COMMITTED, SETUP, PLAN, f"result-2{FAILED_SUFFIX}"))
    setup_reads = [c for c in calls if SETUP in c[1]]
    assert setup_reads == [calls[0]], calls
    assert not [c for c in calls if c[0] == "delete" and FAILED_SUFFIX in c[1][0]], calls
