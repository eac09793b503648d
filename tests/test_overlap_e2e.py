"""Overlapping writes between the workers of one job, end to end.

Two real worker processes (``overlap_worker.py``) started the way an Indexed
Job starts pods, on moto S3. Each case of the overlap finding: two halves of
one chunk, one chunk with different values, a chunk every worker writes the
same way, two workers changing one array's metadata; on an Icechunk primary
(with a plain zarr replica) and on a plain zarr primary.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import icechunk
import numpy as np
import pytest
import s3fs
import zarr

from icechunk_coop import icechunk_storage
from icechunk_coop.testing import start_workers

WORKER = str(Path(__file__).with_name("overlap_worker.py"))

pytestmark = pytest.mark.slow


def _run(
    base_env: dict[str, str], secret: str, bucket: str, case: str, *args: str
) -> tuple[dict[int, tuple[int, str]], str]:
    name = f"overlap-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, WORKER, "--rendezvous", f"s3://{bucket}/rv", *args]
    procs = start_workers(
        argv,
        2,
        job_name=name,
        job_uid="u1",
        secret=secret,
        env={**base_env, "OVERLAP_CASE": case},
    )
    done = {}
    for index, proc in procs.items():
        out, _ = proc.communicate(timeout=240)
        done[index] = (proc.returncode, out)
    return done, name


def _status(base_env: dict[str, str], secret: str, bucket: str, name: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "icechunk_coop.cli", "status", f"s3://{bucket}/rv", "--job", name],
        env={**base_env, "ICECHUNK_COOP_SECRET": secret},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.stdout + proc.stderr


def _repo(bucket: str) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk_storage(f"s3://{bucket}/repo"))


@pytest.mark.parametrize("case", ["halves", "same", "metadata"])
def test_two_workers_writing_one_chunk_or_node_stop_the_job_and_nothing_moves(
    base_env: dict[str, str], secret: str, s3_bucket: str, case: str
) -> None:
    repo_url, replica = f"s3://{s3_bucket}/repo", f"s3://{s3_bucket}/replica"
    done, name = _run(base_env, secret, s3_bucket, case, "--repo", repo_url, "--zarr", replica)
    code0, out0 = done[0]
    code1, out1 = done[1]
    assert code0 == 0 and "OUTCOME published" in out0, out0
    assert code1 == 3, out1
    assert "REFUSED ChunkOverlapError" in out1, out1
    assert "workers 0 and 1" in out1 and "array '/x'" in out1, out1
    assert ("its metadata" if case == "metadata" else "first: (") in out1, out1
    assert "Align region jobs" in out1, out1
    # Nothing moved: the primary holds only its creation, no branch is left,
    # and the plain replica has no metadata for the arrays (readers see nothing).
    repo = _repo(s3_bucket)
    assert [s.message for s in repo.ancestry(branch="main")] == ["Repository initialized"]
    assert repo.list_branches() == {"main"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert not fs.exists(f"{s3_bucket}/replica/x/zarr.json")
    # The failure marker tells the operator why.
    assert "ChunkOverlapError" in _status(base_env, secret, s3_bucket, name)


def test_a_chunk_every_worker_writes_the_same_way_commits(
    base_env: dict[str, str], secret: str, s3_bucket: str
) -> None:
    repo_url, replica = f"s3://{s3_bucket}/repo", f"s3://{s3_bucket}/replica"
    done, _ = _run(base_env, secret, s3_bucket, "identical", "--repo", repo_url, "--zarr", replica)
    assert all(code == 0 for code, _ in done.values()), done
    assert "OUTCOME committed" in done[1][1]
    store = _repo(s3_bucket).readonly_session("main").store
    np.testing.assert_array_equal(zarr.open_array(store, path="t")[:], np.arange(20) * 60)
    np.testing.assert_array_equal(zarr.open_array(store, path="x")[:], [1.0] * 10 + [2.0] * 10)
    plain = zarr.open_array(f"s3://{s3_bucket}/replica", path="t", mode="r")
    np.testing.assert_array_equal(plain[:], np.arange(20) * 60)


def test_a_plain_zarr_primary_says_which_chunks_may_hold_another_workers_bytes(
    base_env: dict[str, str], secret: str, s3_bucket: str
) -> None:
    url = f"s3://{s3_bucket}/plain"
    done, name = _run(base_env, secret, s3_bucket, "halves", "--repo", url, "--zarr-primary")
    code1, out1 = done[1]
    assert code1 == 3, out1
    assert "REFUSED ChunkOverlapError" in out1 and "already in the store" in out1, out1
    assert "x/c/1 may hold another worker's bytes" in out1, out1
    assert "metadata was not published" in out1, out1
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.exists(f"{s3_bucket}/plain/x/c/1")  # the chunk is there ...
    assert not fs.exists(f"{s3_bucket}/plain/x/zarr.json")  # ... and no reader sees it
    assert "ChunkOverlapError" in _status(base_env, secret, s3_bucket, name)
