"""A plain zarr v3 primary, written by real worker processes on moto S3.

Chunks come from every worker; every ``zarr.json`` from the last worker, so a
reader polling the primary never sees the job's new shape (or its pending
metadata) before the chunks behind it are all there.
"""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr

from icechunk_coop import icechunk_storage
from icechunk_coop.testing import LocalS3, job_commits, start_workers

WORKER = str(Path(__file__).with_name("coop_worker.py"))
ROWS = 16  # coop_worker's rows per job


def expected(rows: int) -> np.ndarray:
    return np.arange(rows, dtype="f8")[:, None] * 100 + np.arange(8)[None, :]


def close(store: zarr.storage.FsspecStore) -> None:
    """Close the store's S3 client in zarr's event loop, while it runs.

    s3fs closes a forgotten client only at exit, when that loop has stopped,
    and then only its socket: aiohttp then warns of an unclosed session.
    """
    zarr.core.sync.sync(store.fs.s3.close())


class ZarrReader:
    """Polls the plain zarr primary in a thread: ``(rows, exact, pending)`` per read."""

    def __init__(self, url: str, options: dict[str, object]) -> None:
        self.url, self.options = url, options
        self.seen: list[tuple[int, bool, bool]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        # One store for every read: it reads each zarr.json afresh (no cache).
        store = zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self.options, read_only=True
        )
        while not self._stop.is_set():
            try:
                root = zarr.open_group(store, mode="r")
                temp = root["temp"][:]
                exact = bool(np.array_equal(temp, expected(temp.shape[0])))
                self.seen.append((temp.shape[0], exact, "pending_rows" in root.attrs))
            except Exception as exc:
                self.errors.append(type(exc).__name__)
            self._stop.wait(0.05)
        close(store)

    def __enter__(self) -> ZarrReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def run_job(
    env: dict[str, str], bucket: str, total: int, secret: str
) -> tuple[str, dict[int, str]]:
    name, uid = f"zp-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:8]
    argv = [
        sys.executable, WORKER, "--zarr-primary",
        "--repo", f"s3://{bucket}/plain.zarr",
        "--replica", f"s3://{bucket}/replica",
        "--rendezvous", f"s3://{bucket}/rendezvous",
        "--timeout", "90",
    ]  # fmt: skip
    procs = start_workers(argv, total, job_name=name, job_uid=uid, secret=secret, env=env)
    outs = {}
    for index, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"worker {index}:\n{out[-3000:]}"
        assert "Unclosed" not in out, f"worker {index} left a connection open:\n{out[-3000:]}"
        outs[index] = out
    return f"{name}-{uid}", outs


@pytest.mark.slow
def test_a_zarr_primary_gets_its_metadata_last_from_real_processes(
    base_env: dict[str, str], s3_bucket: str, s3_env: LocalS3, secret: str
) -> None:
    options = {"endpoint_url": s3_env.endpoint_url, "skip_instance_cache": True}
    url = f"s3://{s3_bucket}/plain.zarr"
    first, _ = run_job(base_env, s3_bucket, 1, secret)  # creates the dataset: 16 rows
    with ZarrReader(url, options) as reader:
        job_id, outs = run_job(base_env, s3_bucket, 3, secret)  # appends 16 more
        reader._stop.wait(0.5)
    assert '"status": "committed"' in outs[2]
    store = zarr.storage.FsspecStore.from_url(url, storage_options=options, read_only=True)
    root = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(root["temp"][:], expected(2 * ROWS))
    np.testing.assert_array_equal(root["time"][:], np.arange(2 * ROWS))
    assert root.attrs["last_job"] == job_id and "pending_rows" not in root.attrs
    close(store)
    # The reader saw the old state, then the new one, each whole: never the new shape
    # before its chunks, never the job's pending metadata.
    assert reader.seen, reader.errors
    assert {rows for rows, _, _ in reader.seen} <= {ROWS, 2 * ROWS}, reader.seen
    assert all(exact and not pending for _, exact, pending in reader.seen), reader.seen
    assert reader.seen[0][0] == ROWS and reader.seen[-1][0] == 2 * ROWS
    # Exactly once: the Icechunk replica holds one commit of each job.
    replica = icechunk.Repository.open(icechunk_storage(f"s3://{s3_bucket}/replica", s3_env.env))
    assert len(job_commits(replica, first)) == 1
    assert len(job_commits(replica, job_id)) == 1
