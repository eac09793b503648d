"""The pipeline-shaped example (``examples/pipeline_forecast.py``), run by ``run-local`` on moto S3.

It is reformatters' shape with ``run_region_jobs`` in its ``_process_region_jobs``:
pydantic region jobs per shard and variable group, the template written with
xarray on worker 0, source-file results with ``pd.Timestamp``s, a final
template and a retraction guard on the last worker. Jobs of several workers
are run by ``run-local`` as real processes; one-worker jobs (the reference
backfill, the refusals) run in this process, which saves a start-up each. The
8-worker backfill is the expensive part (8 processes importing xarray), so it
runs once per module.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import icechunk
import pandas as pd
import pytest
import xarray as xr
import zarr.storage

from icechunk_coop import SECRET_ENV, icechunk_storage
from icechunk_coop.inspect import METADATA_KEY
from icechunk_coop.testing import LocalS3

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipeline_forecast.py"
IDENTITY = ("JOB_", "WORKER", "CRONJOB_", "CRON_JOB_", "ICECHUNK_COOP_")  # the shell's are not ours
END = "2025-01-03T12:00"  # 10 init times: 5 shards x 2 variable groups = 10 region jobs
STEPS = 10


@functools.cache
def example() -> ModuleType:
    """The example as a module, for its pieces and for one-worker runs in this process."""
    spec = importlib.util.spec_from_file_location("pipeline_forecast", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def solo(*argv: str, job_name: str, **env: str) -> int:
    """The example as a one-worker job in this process: no rendezvous traffic, no start-up."""
    with pytest.MonkeyPatch.context() as patch:
        for key in os.environ:
            if key.startswith(IDENTITY):
                patch.delenv(key)
        for key, value in {"WORKER_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": job_name,
                           **env}.items():  # fmt: skip
            patch.setenv(key, value)
        code: int = example().main(list(argv))
        return code


def run_local(
    env: dict[str, str], workers: int, job: str, *argv: str
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "icechunk_coop.cli", "run-local", "--workers", str(workers),
        "--job-name", job, "--timeout", "600", "--", sys.executable, str(EXAMPLE), *argv,
    ]  # fmt: skip
    return subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=660,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


@attrs.frozen(kw_only=True)
class World:
    """One bucket on moto, the workers' environment (their secret too), the two backfills."""

    s3: LocalS3
    env: dict[str, str]
    bucket: str
    one: xr.Dataset  # the backfill by one worker
    eight: xr.Dataset  # the backfill by eight workers

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def where(self, repo: str, *replicas: str) -> list[str]:
        extra = [a for r in replicas for a in ("--replica", self.url(r))]
        rendezvous = ["--rendezvous", self.url("rendezvous"), "--max-poll", "1"]
        return ["--repo", self.url(repo), *extra, *rendezvous]

    def repo(self, name: str) -> icechunk.Repository:
        return icechunk.Repository.open(icechunk_storage(self.url(name), self.env))

    def icechunk_ds(self, name: str) -> xr.Dataset:
        store = self.repo(name).readonly_session("main").store
        return xr.open_zarr(store, consolidated=False).load()

    def zarr_ds(self, name: str) -> xr.Dataset:
        options = {
            "endpoint_url": self.s3.endpoint_url,
            "key": self.s3.access_key_id,
            "secret": self.s3.secret_access_key,
        }
        store = zarr.storage.FsspecStore.from_url(
            self.url(name), storage_options=options, read_only=True
        )
        return xr.open_zarr(store, consolidated=False).load()

    def commits(self, name: str) -> list[dict[str, Any]]:
        return [
            (info.metadata or {}).get(METADATA_KEY) or {}
            for info in self.repo(name).ancestry(branch="main")
        ]


@pytest.fixture(scope="module")
def world(moto_server: LocalS3, secret: str) -> Iterator[World]:
    """The backfill by one worker (in this process) and by eight (run-local), loaded."""
    bucket = f"pipeline-{uuid.uuid4().hex[:8]}"
    moto_server.create_bucket(bucket)
    env = {k: v for k, v in os.environ.items() if not k.startswith(IDENTITY)} | moto_server.env
    env[SECRET_ENV] = secret  # what run-local hands its workers
    place = World(s3=moto_server, env=env, bucket=bucket, one=xr.Dataset(), eight=xr.Dataset())
    with pytest.MonkeyPatch.context() as patch:  # icechunk reads credentials from os.environ
        for key, value in moto_server.env.items():
            patch.setenv(key, value)
        assert solo("backfill", "--end", END, *place.where("one"), job_name="bf-one") == 0
        out = ok(run_local(env, 8, "bf-eight", "backfill", "--end", END,
                           *place.where("eight", "eight-replica")))  # fmt: skip
        assert len(re.findall(r"worker \d: (?:published|committed);", out)) == 8, out
        yield attrs.evolve(place, one=place.icechunk_ds("one"), eight=place.icechunk_ds("eight"))


def steps_without_data(ds: xr.Dataset) -> list[str]:
    empty = ds["temperature_2m"].isnull().all(dim=("lead_time", "latitude", "longitude"))
    return [str(t) for t in ds["init_time"].values[empty.values]]


def test_region_jobs_are_frozen_pydantic_models_per_shard_and_variable_group() -> None:
    pf = example()
    template = pf.get_template(pd.Timestamp(END))
    jobs = pf.ForecastRegionJob.get_jobs(
        template, available_before=pd.Timestamp(END), reformat_job_name="t"
    )
    assert [(j.region.start, j.region.stop, j.group) for j in jobs] == [
        (s, s + 2, g) for s in range(0, STEPS, 2) for g in ("surface", "wind")
    ]
    with pytest.raises(Exception, match="frozen"):
        jobs[0].group = "wind"
    # They travel pickled (the update's list is pinned in the setup), the template shared.
    again = pickle.loads(pickle.dumps(jobs))
    assert again[3].template_ds is again[0].template_ds
    xr.testing.assert_identical(again[0].template_ds, template)
    # Results are source-file models with pd.Timestamps. At 08Z the last init time's
    # files (06Z, published 4 h later) are not out: the final template ends a step earlier.
    now = pd.Timestamp("2025-01-03T08:00")
    coords = [c for job in jobs for c in job.source_file_coords()]
    results = {"temperature_2m": [
        c.model_copy(update={"status": "processed" if c.published(now) else "not-found"})
        for c in coords
    ]}  # fmt: skip
    assert isinstance(coords[0].init_time, pd.Timestamp)
    assert str(coords[0].path) == "/synthetic-nwp/20250101/00z/surface/f000.grib2"
    final = jobs[0].update_template_with_results(results)
    assert final.sizes["init_time"] == STEPS - 1
    assert final.attrs["time_coverage_end"] == "2025-01-03T00:00:00"


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's 8-worker backfill may be set up here
def test_a_backfill_by_one_worker_and_by_eight_write_identical_data(world: World) -> None:
    assert world.one.sizes["init_time"] == STEPS
    assert world.one.attrs["time_coverage_end"] == "2025-01-03T06:00:00"
    xr.testing.assert_identical(world.one, world.eight)  # every variable, coordinate, attribute
    assert steps_without_data(world.eight) == []
    assert not any(bool(world.eight[v].isnull().any()) for v in world.eight.data_vars)
    xr.testing.assert_identical(world.icechunk_ds("eight-replica"), world.eight)
    (meta,) = [m for m in world.commits("eight") if m]
    assert meta["workers"] == 8
    assert meta["job_name"] == "bf-eight"


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's 8-worker backfill may be set up here
def test_an_update_with_no_job_start_resumes_from_the_last_step_and_commits(
    world: World,
) -> None:
    # No JOB_START and no CronJob: worker 0 takes --clock for "now" and pins it.
    proc = run_local(world.env, 2, "by-hand", "update", "--clock", "2025-01-04T05:00",
                     *world.where("eight", "eight-replica"))  # fmt: skip
    out = ok(proc)
    start = "2025-01-04T05:00:00+00:00"
    assert re.findall(r"job_start (\S+);", out) == [start] * 2, out
    assert world.commits("eight")[0]["job_start"] == start
    updated = world.icechunk_ds("eight")
    # From the shard of the last step present (2025-01-03T06Z) to 2025-01-04T00Z,
    # whose sources were out at 04Z: 13 init times, none empty.
    assert updated.sizes["init_time"] == 13
    assert updated.attrs["time_coverage_end"] == "2025-01-04T00:00:00"
    assert steps_without_data(updated) == []
    xr.testing.assert_identical(
        updated.isel(init_time=slice(0, STEPS)).drop_attrs(), world.eight.drop_attrs()
    )
    xr.testing.assert_identical(world.icechunk_ds("eight-replica"), updated)
    newest = next(iter(world.repo("eight").ancestry(branch="main")))
    assert newest.message.startswith("update to 2025-01-04T00:00:00"), newest.message


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's 8-worker backfill may be set up here
def test_a_plain_zarr_v3_primary_with_an_icechunk_replica(world: World) -> None:
    where = [*world.where("plain.zarr", "plain-replica"), "--zarr-primary"]
    assert solo("backfill", "--end", END, *where, job_name="zp-bf") == 0
    xr.testing.assert_identical(world.zarr_ds("plain.zarr"), world.one)
    xr.testing.assert_identical(world.icechunk_ds("plain-replica"), world.one)
    # An update appends to the plain store: the template grows it without deleting a chunk.
    ok(run_local(world.env, 2, "zp-up", "update", "--clock", "2025-01-04T05:00", *where))
    plain = world.zarr_ds("plain.zarr")
    assert plain.sizes["init_time"] == 13
    assert steps_without_data(plain) == []
    xr.testing.assert_identical(
        plain.isel(init_time=slice(0, STEPS)).drop_attrs(), world.one.drop_attrs()
    )
    xr.testing.assert_identical(world.icechunk_ds("plain-replica"), plain)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the module's 8-worker backfill may be set up here
def test_an_update_that_would_shrink_what_readers_see_is_refused(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    before = len(world.commits("one"))
    # At 08Z the sources of 2025-01-03T06Z (the last step readers see) are not out yet
    # (4 h delay): the final template would end a step earlier than the data does.
    code = solo("update", *world.where("one"), job_name="early", JOB_START="2025-01-03T08:00Z")
    assert code == 2, caplog.text  # not retryable
    assert "ShrinkRefusedError" in caplog.text
    assert "'init_time' from 10" in caplog.text
    # A backfill that ends before the data is refused by worker 0, before any work.
    caplog.clear()
    code = solo("backfill", "--end", "2025-01-02T00:00", *world.where("one"), job_name="short")
    assert code == 2, caplog.text
    assert "'init_time' from 10 (what readers see now) to 4" in caplog.text
    assert " done, " not in caplog.text  # no region job ran
    assert len(world.commits("one")) == before
    xr.testing.assert_identical(world.icechunk_ds("one"), world.one)


def test_an_update_refuses_a_missing_dataset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = ["--repo", str(tmp_path / "typo"), "--rendezvous", str(tmp_path / "rv")]
    assert solo("update", "--clock", "2025-01-04T05:00", *where, job_name="typo") == 2
    assert "run a backfill first" in caplog.text
    assert not (tmp_path / "typo").exists()  # nothing was created
