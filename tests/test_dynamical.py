"""The adapter and the example dataset, run as pods would run them (moto S3)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import attrs
import icechunk
import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage

from icechunk_coop import (
    SECRET_ENV,
    ConfigurationError,
    Stores,
    WorkerIdentity,
    ZarrTarget,
    icechunk_storage,
)
from icechunk_coop.dynamical import DynamicalDataset, JobOptions, Mode, RegionJob, Store
from icechunk_coop.errors import ShrinkRefusedError
from icechunk_coop.inspect import METADATA_KEY
from icechunk_coop.testing import start_workers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "synthetic_forecast.py")


def run_local(env: dict[str, str], workers: int, job: str, *argv: str, secret: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "icechunk_coop.cli",
            "run-local",
            "--workers",
            str(workers),
            "--job-name",
            job,
            "--",
            sys.executable,
            EXAMPLE,
            *argv,
        ],
        env={**env, SECRET_ENV: secret},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def open_ds(url: str, env: dict[str, str]) -> xr.Dataset:
    repo = icechunk.Repository.open(icechunk_storage(url, env))
    return xr.open_zarr(repo.readonly_session("main").store, consolidated=False).load()


def commits(url: str, env: dict[str, str]) -> list[dict[str, Any]]:
    repo = icechunk.Repository.open(icechunk_storage(url, env))
    return [(info.metadata or {}).get(METADATA_KEY) or {} for info in repo.ancestry(branch="main")]


@pytest.mark.slow
def test_backfill_by_one_and_by_eight_agree_then_update_appends(
    base_env: dict[str, str], s3_bucket: str, secret: str
) -> None:
    rv = f"s3://{s3_bucket}/rendezvous"
    solo, coop, replica = (f"s3://{s3_bucket}/{n}" for n in ("solo", "coop", "replica"))
    end = ["--end", "2025-01-03T00:00Z"]
    subprocess.run(
        [sys.executable, EXAMPLE, "backfill", *end, "--repo", solo, "--rendezvous", rv],
        env={**base_env, "WORKER_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": "solo"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    run_local(
        base_env,
        8,
        "bf8",
        "backfill",
        *end,
        "--repo",
        coop,
        "--replica",
        replica,
        "--rendezvous",
        rv,
        secret=secret,
    )
    one, eight = open_ds(solo, base_env), open_ds(coop, base_env)
    assert one.sizes["init_time"] == 8
    xr.testing.assert_identical(one, eight)
    assert not np.isnan(eight["temperature_2m"].values).any()

    # An update by 4 workers, its start from a CronJob-style job name.
    start = datetime(2025, 1, 3, 5, 0, tzinfo=UTC)
    job = f"fc-update-{int(start.timestamp() // 60)}"
    out = run_local(
        {**base_env, "CRONJOB_NAME": "fc-update"},
        4,
        job,
        "update",
        "--repo",
        coop,
        "--replica",
        replica,
        "--rendezvous",
        rv,
        secret=secret,
    )
    starts = re.findall(r"job_start (\S+);", out)
    assert starts == [start.isoformat()] * 4, out
    updated = open_ds(coop, base_env)
    # Init times up to the job's start whose source was published (4 h delay): to 2025-01-03T00Z.
    assert updated.sizes["init_time"] == 9
    xr.testing.assert_identical(
        updated.isel(init_time=slice(0, 8)).drop_attrs(), eight.drop_attrs()
    )
    assert not np.isnan(updated["wind_u_10m"].values).any()
    xr.testing.assert_identical(open_ds(replica, base_env), updated)
    meta = commits(coop, base_env)[0]
    assert meta["job_start"] == start.isoformat()
    assert meta["workers"] == 4


def solo(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The example as a one-worker job (no rendezvous traffic), its exit code kept."""
    return subprocess.run(
        [sys.executable, EXAMPLE, *argv],
        env={**env, "WORKER_INDEX": "0", "WORKERS_TOTAL": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_update_never_shrinks_what_readers_see(tmp_path: Path, base_env: dict[str, str]) -> None:
    repo, rv = str(tmp_path / "repo"), str(tmp_path / "rv")
    where = ["--repo", repo, "--rendezvous", rv]
    done = solo({**base_env, "JOB_NAME": "bf"}, "backfill", "--end", "2025-01-03T00:00Z", *where)
    assert done.returncode == 0, done.stderr
    # An update whose last init time (2025-01-02T18Z) is not published yet at its start.
    proc = solo({**base_env, "JOB_NAME": "up", "JOB_START": "2025-01-02T20:00Z"}, "update", *where)
    assert proc.returncode == 2, proc.stderr  # not retryable
    assert "ShrinkRefusedError" in proc.stderr
    assert "'init_time' from 8" in proc.stderr
    assert open_ds(repo, base_env).sizes["init_time"] == 8
    # One worker exchanges nothing through the rendezvous.
    assert not Path(rv).exists()


def test_an_update_refuses_a_missing_repository(tmp_path: Path, base_env: dict[str, str]) -> None:
    env = {**base_env, "JOB_NAME": f"u{uuid.uuid4().hex[:6]}"}
    proc = solo(env, "update", "--repo", str(tmp_path / "r"), "--rendezvous", "x")
    assert proc.returncode == 2, proc.stderr  # not retryable
    assert "run a backfill first" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing was created


def test_an_update_of_a_missing_repository_stops_every_worker(
    tmp_path: Path, base_env: dict[str, str], secret: str
) -> None:
    # Worker 0 refuses in the job's setup, so worker 1 (a separate pod) stops with
    # it instead of waiting for a setup that never comes.
    repo, rv = tmp_path / "typo", str(tmp_path / "rv")
    argv = [sys.executable, EXAMPLE, "update", "--repo", str(repo), "--rendezvous", rv]
    env = {**base_env, "JOB_START": "2025-01-04T06:00Z"}
    procs = start_workers(argv, 2, job_name="typo", job_uid="t1", secret=secret, env=env)
    outputs = {i: p.communicate(timeout=240)[0] for i, p in procs.items()}
    assert procs[0].returncode == 2, outputs[0]
    assert "run a backfill first" in outputs[0]
    assert procs[1].returncode != 0, outputs[1]
    assert "worker 0 failed" in outputs[1] and "Traceback" not in outputs[1], outputs[1]
    assert not repo.exists()  # nothing was created


@pytest.mark.slow
def test_an_update_with_no_start_takes_worker_0s_for_every_worker(
    tmp_path: Path, base_env: dict[str, str], secret: str
) -> None:
    repo, rv = str(tmp_path / "repo"), str(tmp_path / "rv")
    where = ["--repo", repo, "--rendezvous", rv]
    done = solo({**base_env, "JOB_NAME": "bf"}, "backfill", "--end", "2025-01-03T00:00Z", *where)
    assert done.returncode == 0, done.stderr
    # No JOB_START and no CronJob: worker 0 decides (here from --clock) and pins it.
    out = run_local(
        base_env, 3, "by-hand", "update", *where, "--clock", "2025-01-03T05:00", secret=secret
    )
    start = datetime(2025, 1, 3, 5, 0, tzinfo=UTC)
    assert re.findall(r"job_start (\S+);", out) == [start.isoformat()] * 3, out
    assert commits(repo, base_env)[0]["job_start"] == start.isoformat()
    assert open_ds(repo, base_env).sizes["init_time"] == 9


def test_an_update_resumes_from_the_last_init_time_present_however_long_ago(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    repo, rv = str(tmp_path / "repo"), str(tmp_path / "rv")
    where = ["--repo", repo, "--rendezvous", rv]
    done = solo({**base_env, "JOB_NAME": "bf"}, "backfill", "--end", "2025-01-02T00:00Z", *where)
    assert done.returncode == 0, done.stderr
    assert open_ds(repo, base_env).sizes["init_time"] == 4
    # Three days later: 12 init times to catch up, far more than the update's lookback.
    proc = solo({**base_env, "JOB_NAME": "up", "JOB_START": "2025-01-05T01:20Z"}, "update", *where)
    assert proc.returncode == 0, proc.stderr
    ds = open_ds(repo, base_env)
    assert ds.sizes["init_time"] == 16  # to 2025-01-04T18Z; 2025-01-05T00Z is not published
    assert not ds["temperature_2m"].isnull().all(dim=("lead_time", "latitude", "longitude")).any()
    assert ds.attrs["last_update"]["init_times_missing_source"] == ["2025-01-05T00:00:00+00:00"]
    assert "1 init time had no source yet (2025-01-05T00Z); trimmed from the end" in proc.stderr


def test_a_backfill_that_ends_before_the_data_says_what_it_kept(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    repo, rv = str(tmp_path / "repo"), str(tmp_path / "rv")
    where = ["--repo", repo, "--rendezvous", rv]
    done = solo({**base_env, "JOB_NAME": "bf"}, "backfill", "--end", "2025-01-03T00:00Z", *where)
    assert done.returncode == 0, done.stderr
    before = open_ds(repo, base_env)
    again = solo({**base_env, "JOB_NAME": "bf2"}, "backfill", "--end", "2025-01-02T00:00Z", *where)
    assert again.returncode == 0, again.stderr
    assert (
        "backfill to 2025-01-02T00:00:00+00:00: the dataset already extends to "
        "2025-01-02T18:00:00+00:00; this job rewrites init times up to "
        "2025-01-01T18:00:00+00:00 and keeps the 4 after them"
    ) in again.stderr
    after = open_ds(repo, base_env)
    xr.testing.assert_identical(after.drop_attrs(), before.drop_attrs())


# ---- a plain zarr v3 primary through the adapter ----------------------------------

HOUR0 = datetime(2025, 1, 1, tzinfo=UTC)


def hours_to(t: datetime) -> int:
    return int((t - HOUR0) / timedelta(hours=1))


def hours_present(store: Store) -> int:
    try:
        return int(zarr.open_array(store, path="v", mode="r").shape[0])
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        return 0


@attrs.frozen(kw_only=True)
class HourJob(RegionJob):
    """Hour ``index`` of a one-variable dataset: ``v[index] = index``."""

    index: int

    def process(self, primary_store: Store, replica_stores: Sequence[Store]) -> int:
        zarr.open_array(primary_store, path="v", mode="r+")[self.index] = self.index
        return self.index

    @classmethod
    def get_jobs(cls, dataset: Any, *, end: datetime) -> list[HourJob]:
        return [cls(index=i) for i in range(hours_to(end))]

    @classmethod
    def operational_update_jobs(cls, dataset: Any, *, job_start: datetime) -> list[HourJob]:
        return [cls(index=i) for i in range(dataset.present(), hours_to(job_start))]


@attrs.frozen(kw_only=True)
class HourlyZarrDataset(DynamicalDataset):
    region_job_class: ClassVar[type[RegionJob]] = HourJob
    append_dim: ClassVar[str] = "t"

    url: str

    def primary(self) -> ZarrTarget:
        return ZarrTarget(name="primary", url=self.url)

    def present(self) -> int:
        return hours_present(zarr.storage.LocalStore(self.url, read_only=True))

    def expand(self, stores: Stores, *, end: datetime, mode: Mode) -> None:
        root = zarr.open_group(stores.primary, mode="a", zarr_format=3)
        if "v" not in root:
            root.create_array(
                "v", shape=(0,), chunks=(1,), dtype="f8", fill_value=np.nan, dimension_names=["t"]
            )
        array = root["v"]
        assert isinstance(array, zarr.Array)
        array.resize((max(array.shape[0], hours_to(end)),))

    def append_dim_length(self, store: Store) -> int:
        return hours_present(store)

    def write_final_metadata(self, stores: Stores, results: list[Any], *, mode: Mode) -> None:
        array = zarr.open_array(stores.primary, path="v", mode="r+")
        array.resize((max(results, default=-1) + 1,))  # through the last hour written


def test_a_plain_zarr_primary_through_the_adapter_updates_and_refuses_to_shrink(
    tmp_path: Path,
) -> None:
    url, rv = str(tmp_path / "plain.zarr"), str(tmp_path / "rv")
    dataset = HourlyZarrDataset(url=url)

    def options(name: str, start: datetime | None = None) -> JobOptions:
        me = WorkerIdentity(worker_index=0, workers_total=1, job_name=name, job_start=start)
        return {"rendezvous_url": rv, "identity": me}

    with pytest.raises(ConfigurationError, match="run a backfill first"):
        dataset.update(**options("typo", HOUR0 + timedelta(hours=8)))
    assert not (tmp_path / "plain.zarr").exists()
    dataset.backfill(end=HOUR0 + timedelta(hours=5), **options("bf"))
    # The update reads the plain store to resume from hour 5, and commits.
    assert dataset.update(**options("up", HOUR0 + timedelta(hours=8))).status == "committed"
    values = zarr.open_array(zarr.storage.LocalStore(url, read_only=True), path="v", mode="r")[:]
    assert values.tolist() == list(range(8))
    # An update with nothing to write would cut 't' to 0: what readers of the store see counts.
    with pytest.raises(ShrinkRefusedError, match="'t' from 8"):
        dataset.update(**options("early", HOUR0 + timedelta(hours=3)))
    assert dataset.present() == 8
