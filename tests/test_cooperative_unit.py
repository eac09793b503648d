"""Protocol checks that need no second process: refusals before merging, solo jobs."""

from __future__ import annotations

from pathlib import Path

import icechunk
import pytest
import zarr

from icechunk_coop import (
    ConfigurationError,
    CooperativeJob,
    ForeignResultError,
    IcechunkTarget,
    MissingSecretError,
    PayloadAuthenticationError,
    Stores,
    WorkerIdentity,
    WorkersTotalMismatchError,
)
from icechunk_coop._rendezvous import FAILED_SUFFIX
from icechunk_coop.cooperative import result_name

SECRET = "unit-secret-0123456789abcdef0123"


def make_job(tmp_path: Path, index: int, total: int = 2) -> CooperativeJob:
    identity = WorkerIdentity(worker_index=index, workers_total=total, job_name="unit", job_uid="u")
    return CooperativeJob.for_identity(
        identity,
        rendezvous_url=str(tmp_path / "rv"),
        primary=IcechunkTarget(
            name="primary", storage=icechunk.local_filesystem_storage(str(tmp_path / "repo"))
        ),
        environ={"ICECHUNK_COOP_SECRET": SECRET},
    )


def prepare(stores: Stores) -> None:
    zarr.open_group(stores.primary, mode="a").create_array(
        "a", shape=(4,), chunks=(1,), dtype="i4", fill_value=0
    )


def test_a_result_from_another_setup_is_refused_by_index(tmp_path: Path) -> None:
    first, last = make_job(tmp_path, 0), make_job(tmp_path, 1)
    forks = first.forks(first.setup(prepare))
    first.publish_result(forks, {"ok": True})
    # A stale result-1 of an earlier setup of the same job, sealed with the right secret.
    stale = dict(last._result_blob(forks, {"stale": True}), token="an-older-setup", index=1)
    last.rendezvous.publish(result_name(1), stale, content="pickle")
    with pytest.raises(ForeignResultError, match="worker 1") as info:
        last.collect_results(last.setup())
    assert info.value.worker_index == 1
    assert "another setup" in str(info.value)


def test_a_result_claiming_another_total_is_refused(tmp_path: Path) -> None:
    first, last = make_job(tmp_path, 0), make_job(tmp_path, 1)
    forks = first.forks(first.setup(prepare))
    first.publish_result(forks, None)
    last.rendezvous.publish(
        result_name(1), dict(last._result_blob(forks, None), workers_total=5), content="pickle"
    )
    with pytest.raises(WorkersTotalMismatchError, match="WORKERS_TOTAL=5"):
        last.collect_results(last.setup())


def test_results_must_be_json(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0, total=1)
    with pytest.raises(ConfigurationError, match="not JSON-serialisable"):
        job.run(work=lambda stores: {1, 2}, prepare=prepare, message="m")


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
    assert not (tmp_path / "rv").exists()


def test_duplicate_target_names_are_refused(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0)
    with pytest.raises(ConfigurationError, match="unique"):
        CooperativeJob(
            identity=job.identity,
            rendezvous=job.rendezvous,
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
    with pytest.raises(MissingSecretError, match=r"not local.*ICECHUNK_COOP_SECRET") as info:
        CooperativeJob.for_identity(
            identity, rendezvous_url=str(tmp_path / "rv"), primary=remote, environ=insecure
        )
    assert "'unit-u'" in str(info.value) and "primary" in str(info.value)
    local_target = IcechunkTarget(
        name="primary", storage=icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    )
    with pytest.raises(MissingSecretError, match="rendezvous s3://b/rv"):
        CooperativeJob.for_identity(
            identity, rendezvous_url="s3://b/rv", primary=local_target, environ=insecure
        )
    # Local repositories are what the opt-out is for; a solo job exchanges nothing.
    local = IcechunkTarget(
        name="primary", storage=icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    )
    job = CooperativeJob.for_identity(
        identity, rendezvous_url=str(tmp_path / "rv"), primary=local, environ=insecure
    )
    assert not job.rendezvous.sealer.authenticated
    solo = WorkerIdentity(worker_index=0, workers_total=1, job_name="unit", job_uid="u")
    CooperativeJob.for_identity(solo, rendezvous_url=str(tmp_path / "rv"), primary=remote)


def test_a_retry_withdraws_its_failure_marker_before_working(tmp_path: Path) -> None:
    first = make_job(tmp_path, 0, total=3)
    first.run(work=lambda stores: None, prepare=prepare, message="m")

    def fail(stores: Stores) -> None:
        raise RuntimeError("source missing")

    with pytest.raises(RuntimeError):
        make_job(tmp_path, 1, total=3).run(work=fail, message="m")
    marker = result_name(1) + FAILED_SUFFIX
    assert marker in first.rendezvous.arrived()

    seen_while_working: list[set[str]] = []

    def slow(stores: Stores) -> None:
        # What a peer retried at this moment would see: no marker to fail on.
        seen_while_working.append(first.rendezvous.arrived())

    make_job(tmp_path, 1, total=3).run(work=slow, message="m")
    assert seen_while_working and marker not in seen_while_working[0]
    assert result_name(1) in first.rendezvous.arrived()


def test_a_worker_that_cannot_open_the_setup_leaves_a_marker(tmp_path: Path) -> None:
    make_job(tmp_path, 0, total=3).run(work=lambda stores: None, prepare=prepare, message="m")
    identity = WorkerIdentity(worker_index=1, workers_total=3, job_name="unit", job_uid="u")
    stranger = CooperativeJob.for_identity(
        identity,
        rendezvous_url=str(tmp_path / "rv"),
        primary=IcechunkTarget(
            name="primary", storage=icechunk.local_filesystem_storage(str(tmp_path / "repo"))
        ),
        environ={"ICECHUNK_COOP_SECRET": "another-secret-0123456789abcdef"},
    )
    with pytest.raises(PayloadAuthenticationError):
        stranger.run(work=lambda stores: None, message="m")
    # The last worker is told at once instead of waiting out its deadline.
    assert result_name(1) + FAILED_SUFFIX in stranger.rendezvous.arrived()
    with pytest.raises(PayloadAuthenticationError, match=r"result-1\.failed"):
        make_job(tmp_path, 2, total=3).run(work=lambda stores: None, message="m")
