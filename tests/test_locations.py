"""Buckets that do not exist are refused at start, naming the URL (moto S3)."""

from __future__ import annotations

import re
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import icechunk
import pytest
import zarr

from icechunk_coop import CooperativeJob, IcechunkTarget, Stores, icechunk_storage
from icechunk_coop.errors import MissingLocationError, StorageUnreachableError, WorkerFailedError
from icechunk_coop.rendezvous._blobs import BlobStore
from icechunk_coop.testing import LocalS3, free_port, job_commits, run_in_process
from icechunk_coop.wire import INSECURE_ENV

if TYPE_CHECKING:
    from conftest import JobFactory

INSECURE = {INSECURE_ENV: "1"}  # the jobs on local files below run unsealed


def job(make_job: JobFactory, index: int, *, rendezvous: str, repo: str) -> CooperativeJob:
    """Worker ``index`` of two, on S3 URLs."""
    return make_job(index, name="loc", rendezvous=rendezvous, primary=icechunk_storage(repo))


def test_a_rendezvous_in_a_missing_bucket_is_refused_by_every_worker(
    s3_env: LocalS3, s3_bucket: str, make_job: JobFactory
) -> None:
    for index in (0, 1):
        worker = job(
            make_job, index, rendezvous="s3://no-such-bucket/rv", repo=f"s3://{s3_bucket}/repo"
        )
        with pytest.raises(MissingLocationError, match="s3://no-such-bucket/rv") as info:
            worker.run(work=lambda stores: None, message="m")
        assert not info.value.retryable
        assert "create the bucket" in str(info.value)


def test_a_bucket_the_warm_up_reached_is_not_probed_again(s3_env: LocalS3, s3_bucket: str) -> None:
    """The warm-up's request (a HEAD of the bucket on the job's own client) is the probe.

    It runs while the job is built; its answer proves the bucket there, so the
    start sends no probe of its own on a second client. A bucket it did not
    reach is still probed and refused (the test above).
    """
    blobs = BlobStore(url=f"s3://{s3_bucket}/rv")
    blobs.connect()
    assert blobs.requests.counts["get"] == 1
    blobs.check_reachable()
    assert blobs.requests.counts["get"] == 1
    missing = BlobStore(url="s3://no-such-bucket/rv")
    missing.connect()  # best effort: the probe says why
    with pytest.raises(MissingLocationError, match="s3://no-such-bucket/rv"):
        missing.check_reachable()


def test_a_repository_in_a_missing_bucket_is_refused_and_stops_the_others(
    s3_env: LocalS3, s3_bucket: str, make_job: JobFactory
) -> None:
    urls = {"rendezvous": f"s3://{s3_bucket}/rv", "repo": "s3://no-such-repo-bucket/repo"}
    with pytest.raises(MissingLocationError, match="no-such-repo-bucket") as info:
        job(make_job, 0, **urls).run(work=lambda stores: None, message="m")
    assert "target 'primary'" in str(info.value) and not info.value.retryable
    # Worker 0 left a marker on the setup: the others stop at once, naming why.
    with pytest.raises(WorkerFailedError, match="no-such-repo-bucket"):
        job(make_job, 1, **urls).run(work=lambda stores: None, message="m")


@pytest.mark.timeout(40)  # a hang guard: it used to take a minute of client retries
def test_an_unreachable_endpoint_is_a_clear_retryable_error_naming_it(
    s3_env: LocalS3, make_job: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    worker = job(make_job, 1, rendezvous="s3://some-bucket/rv", repo="s3://some-bucket/repo")
    with pytest.raises(StorageUnreachableError, match=re.escape(dead)) as info:
        worker.run(work=lambda stores: None, message="m")
    assert info.value.retryable
    assert "s3://some-bucket/rv" in str(info.value)


def _half_created(path: Path) -> tuple[icechunk.Storage, bytes]:
    """What a worker 0 killed while icechunk created the repository leaves: no ``repo``.

    Also the ``repo`` object it would have written last.
    """
    storage = icechunk.local_filesystem_storage(str(path))
    icechunk.Repository.create(storage)
    last = (path / "repo").read_bytes()
    (path / "repo").unlink()
    return storage, last


def test_a_repository_whose_creator_was_killed_is_refused_naming_what_is_left(
    tmp_path: Path, make_job: JobFactory
) -> None:
    storage, _ = _half_created(tmp_path / "repo")
    primary = IcechunkTarget(name="primary", storage=storage, creator_grace=0.5)
    backfill = partial(make_job, primary=primary, secret=None, environ=INSECURE)
    with pytest.raises(MissingLocationError, match="creation was cut short") as info:
        run_in_process(backfill, 2, lambda job: job.run(
            work=lambda stores: None, message="m"))  # fmt: skip
    assert "snapshots/1CECHNKREP0F1RSTCMT0" in str(info.value)
    assert "delete those objects" in str(info.value)
    assert not icechunk.Repository.exists(storage), "nothing may be created over the leftovers"


def _touch(stores: Stores) -> None:
    """A change (a job that changes nothing commits no snapshot)."""
    zarr.create_array(stores.primary, name="a", shape=(1,), dtype="i1")


def test_a_twin_finishing_the_repository_within_the_grace_is_used(
    tmp_path: Path, make_job: JobFactory
) -> None:
    storage, last = _half_created(tmp_path / "repo")
    backfill = partial(make_job, primary=storage, secret=None, environ=INSECURE)
    # A live twin of worker 0 writes the last object of its create a second from now.
    finished = threading.Timer(1.0, (tmp_path / "repo" / "repo").write_bytes, [last])
    finished.start()
    outcomes = run_in_process(backfill, 2, lambda job: job.run(
        work=_touch if job.identity.worker_index == 0 else (lambda stores: None),
        message="m"))  # fmt: skip
    finished.join()
    assert [o.status for o in outcomes] == ["published", "committed"]
    assert len(job_commits(icechunk.Repository.open(storage), "test-uid")) == 1
