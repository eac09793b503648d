"""Smoke tests proving the local S3 (moto) and GCS (fake-gcs-server) fixtures work."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import GcsServer
    from icechunk_coop.testing import LocalS3


def test_s3fs_put_if_absent_against_moto(s3_env: LocalS3, s3_bucket: str) -> None:
    import s3fs

    assert os.environ["AWS_ENDPOINT_URL"] == s3_env.endpoint_url
    # No endpoint in the kwargs: botocore picks AWS_ENDPOINT_URL up from the env.
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    path = f"{s3_bucket}/lock/key"
    fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"second", mode="create")
    assert fs.cat_file(path) == b"first"
    assert fs.ls(f"{s3_bucket}/lock") == [path]


def test_gcsfs_put_if_absent_against_fake_gcs(gcs_server: GcsServer, gcs_bucket: str) -> None:
    import gcsfs

    fs = gcsfs.GCSFileSystem(
        token="anon", endpoint_url=gcs_server.endpoint, skip_instance_cache=True
    )
    path = f"{gcs_bucket}/lock/key"
    fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"second", mode="create")
    assert fs.cat_file(path) == b"first"
    assert fs.ls(f"{gcs_bucket}/lock", refresh=True) == [path]
    fs.rm(path)
    assert fs.ls(gcs_bucket, refresh=True) == []


def test_icechunk_commit_and_reopen_on_moto(moto_server: LocalS3, s3_bucket: str) -> None:
    import icechunk
    import numpy as np
    import zarr

    storage = icechunk.s3_storage(
        bucket=s3_bucket,
        prefix="repo",
        region=moto_server.region,
        endpoint_url=moto_server.endpoint_url,
        allow_http=True,
        force_path_style=True,
        access_key_id=moto_server.access_key_id,
        secret_access_key=moto_server.secret_access_key,
    )
    repo = icechunk.Repository.create(storage)
    session = repo.writable_session("main")
    root = zarr.group(store=session.store)
    arr = root.create_array("x", shape=(4,), chunks=(2,), dtype="i4")
    arr[:] = np.arange(4, dtype="i4")
    snapshot_id = session.commit("write x")

    reopened = icechunk.Repository.open(storage)
    assert reopened.lookup_branch("main") == snapshot_id
    readonly = reopened.readonly_session(branch="main")
    data = zarr.open_group(store=readonly.store, mode="r")["x"][:]
    np.testing.assert_array_equal(data, np.arange(4, dtype="i4"))


def test_serve_reports_a_server_that_dies_with_its_output() -> None:
    from icechunk_coop.testing import serve

    argv = [sys.executable, "-c", "print('port in use'); raise SystemExit(3)"]
    server = serve(argv, ready_url="http://127.0.0.1:9/", name="broken", timeout=10)
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*port in use"), server:
        pass
