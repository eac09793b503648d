"""reformatters' loop on icechunk-coop, against a stand-in of their classes (in-process workers)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import icechunk
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from icechunk_coop import WorkerOutcome
from icechunk_coop.reformatters import assignment_of, targets_of
from icechunk_coop.testing import job_commits, start_workers
from reformatters_standin import (
    DATA_VARS,
    FREQ,
    LATITUDES,
    START,
    DynamicalDataset,
    MaterializedRegionJob,
    StoreFactory,
    TemplateConfig,
    VirtualRegionJob,
    VirtualTemplateConfig,
    template_utils,
    value,
    write_virtual_sources,
)

BACKFILL_END = START + 12 * FREQ  # 12 steps: 6 chunks x 2 variables = 12 region jobs
FIRE_TIME = START + 16 * FREQ  # the update's template reaches step 15...


class PublishedTo14(MaterializedRegionJob):
    """...but only the sources up to step 14 are out: the update trims to 15 steps."""

    published_before: ClassVar[pd.Timestamp] = START + 15 * FREQ


class NothingPublished(MaterializedRegionJob):
    published_before: ClassVar[pd.Timestamp] = START


class Virtual(VirtualRegionJob):
    """Module level: a pinned job list travels pickled, by name. Its sources: per test."""

    source_dir: ClassVar[Path] = Path("unset")


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    # Their pods get it from a Secret; the identity comes from their arguments here.
    monkeypatch.setenv("ICECHUNK_COOP_SECRET", secret)
    for name in ("JOB_COMPLETION_INDEX", "WORKER_INDEX", "WORKERS_TOTAL", "JOB_NAME", "JOB_UID"):
        monkeypatch.delenv(name, raising=False)


def run_workers(total: int, command: Callable[[int, int], WorkerOutcome]) -> list[WorkerOutcome]:
    """Every worker of one job in this process, worker 0 first, as their pods would run it."""
    return [command(index, total) for index in range(total)]


def expected(steps: int) -> np.ndarray:
    return np.stack([np.stack([value(v, i) for i in range(steps)]) for v in DATA_VARS])


def read(store: Any) -> np.ndarray:
    ds = xr.open_zarr(store, consolidated=False)
    return np.stack([ds[v.name].values for v in DATA_VARS])


def primary(factory: StoreFactory) -> icechunk.Repository:
    return icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(factory.base / "primary.icechunk"))
    )


def backfill_local_metadata(dataset: DynamicalDataset, end: pd.Timestamp) -> None:
    """What their backfill_local/backfill_kubernetes do first for plain zarr v3 stores."""
    template = dataset.template_config.get_template(end)
    for _, fmt, path in dataset.store_factory._stores():
        if fmt == "zarr3":
            template_utils.write_metadata(template, path, mode="w-")


@pytest.mark.parametrize("total", [1, 3])
def test_a_backfill_then_an_update_write_the_same_data_whatever_the_number_of_workers(
    tmp_path: Path, total: int
) -> None:
    factory = StoreFactory(base=tmp_path, replica_formats=("icechunk", "zarr3"))
    dataset = DynamicalDataset(store_factory=factory, region_job_class=PublishedTo14)
    backfill_local_metadata(dataset, BACKFILL_END)

    backfill = run_workers(total, lambda i, n: dataset.backfill(
        BACKFILL_END, "standin-backfill", worker_index=i, workers_total=n))  # fmt: skip
    assert [o.status for o in backfill][-1] == "committed"
    assert set(backfill[-1].snapshots) == {"replica-0", "replica-1", "primary"}

    update = run_workers(total, lambda i, n: dataset.update(
        "standin-update", worker_index=i, workers_total=n, job_fire_time=FIRE_TIME))  # fmt: skip
    assert update[-1].status == "committed"

    repo = primary(factory)
    main = repo.readonly_session("main").store
    assert np.array_equal(read(main), expected(15), equal_nan=True)  # trimmed to step 14
    for replica in factory.replica_stores():
        assert np.array_equal(read(replica), expected(15), equal_nan=True)
    # One commit per job on the primary, each the job's own; nothing else.
    assert len(job_commits(repo, backfill[-1].job_id)) == 1
    assert len(job_commits(repo, update[-1].job_id)) == 1
    assert len(list(repo.ancestry(branch="main"))) == 3  # the repository's first, and ours


def test_an_update_runs_worker_0s_pinned_jobs_each_in_its_own_tmp_store(tmp_path: Path) -> None:
    factory = StoreFactory(base=tmp_path)
    dataset = DynamicalDataset(store_factory=factory, region_job_class=PublishedTo14)
    run_workers(1, lambda i, n: dataset.backfill(
        BACKFILL_END, "first", worker_index=i, workers_total=n))  # fmt: skip
    run_workers(3, lambda i, n: dataset.update(
        "update", worker_index=i, workers_total=n, job_fire_time=FIRE_TIME))  # fmt: skip
    # Three workers of the update, three tmp stores written (the backfill's makes four):
    # without the rebind, workers 1 and 2 would have written into worker 0's.
    written = [p for p in (tmp_path / "tmp").iterdir() if (p / "zarr.json").exists()]
    assert len(written) == 4


def test_their_worker_assignment_maps_to_ours() -> None:
    assert assignment_of(MaterializedRegionJob) == "interleaved"  # their "spread"
    assert assignment_of(VirtualRegionJob) == "contiguous"


def test_their_stores_become_targets_icechunk_by_repository_zarr_by_url(tmp_path: Path) -> None:
    factory = StoreFactory(base=tmp_path, primary_format="zarr3", replica_formats=("icechunk",))
    main, replicas = targets_of(factory, create=False)
    assert (main.name, getattr(main, "url", None)) == ("primary", str(tmp_path / "primary.zarr3"))
    assert [r.name for r in replicas] == ["replica-0"]
    assert getattr(replicas[0], "create", None) is False


@pytest.mark.parametrize("total", [1, 3])
def test_a_virtual_backfill_writes_references_without_process(
    tmp_path: Path, total: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = tmp_path / "sources"
    write_virtual_sources(sources, BACKFILL_END)
    prefix = f"file://{sources}/"
    config = icechunk.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        icechunk.VirtualChunkContainer(prefix, icechunk.local_filesystem_store(str(sources)))
    )
    access = {prefix: icechunk.credentials.LocalFileSystemAccess}
    factory = StoreFactory(base=tmp_path, repo_config=config, credentials=access)
    monkeypatch.setattr(Virtual, "source_dir", sources)
    dataset = DynamicalDataset(
        store_factory=factory, template_config=VirtualTemplateConfig(), region_job_class=Virtual
    )
    outcomes = run_workers(total, lambda i, n: dataset.backfill(
        BACKFILL_END, "virtual", worker_index=i, workers_total=n))  # fmt: skip
    assert outcomes[-1].status == "committed"
    repo = icechunk.Repository.open(
        icechunk.local_filesystem_storage(str(tmp_path / "primary.icechunk")),
        config=config,
        authorize_virtual_chunk_access=access,
    )
    store = repo.readonly_session("main").store
    assert np.array_equal(read(store), expected(12))
    # References, not copies: the chunks point at the source files.
    assert not any("temperature/c" in str(p) for p in (tmp_path / "primary.icechunk").rglob("*"))


def test_an_update_that_changes_the_structure_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    factory = StoreFactory(base=tmp_path)
    dataset = DynamicalDataset(store_factory=factory, region_job_class=PublishedTo14)
    run_workers(1, lambda i, n: dataset.backfill(
        BACKFILL_END, "first", worker_index=i, workers_total=n))  # fmt: skip
    before = primary(factory).lookup_branch("main")
    drifted = DynamicalDataset(
        store_factory=factory,
        region_job_class=PublishedTo14,
        template_config=TemplateConfig(data_vars=DATA_VARS[:1]),
    )
    with pytest.raises(ValueError, match="structural drift"):
        drifted.update("drift", worker_index=0, workers_total=3, job_fire_time=FIRE_TIME)
    assert primary(factory).lookup_branch("main") == before


def test_an_update_that_would_retract_published_steps_is_refused_by_the_last_worker(
    tmp_path: Path,
) -> None:
    factory = StoreFactory(base=tmp_path)
    dataset = DynamicalDataset(store_factory=factory, region_job_class=PublishedTo14)
    run_workers(1, lambda i, n: dataset.backfill(
        BACKFILL_END, "first", worker_index=i, workers_total=n))  # fmt: skip
    before = primary(factory).lookup_branch("main")
    late = DynamicalDataset(store_factory=factory, region_job_class=NothingPublished)
    with pytest.raises(ValueError, match="retract"):
        run_workers(2, lambda i, n: late.update(
            "late", worker_index=i, workers_total=n, job_fire_time=FIRE_TIME))  # fmt: skip
    assert primary(factory).lookup_branch("main") == before


def test_an_overwrite_backfill_that_would_trim_the_store_is_refused(tmp_path: Path) -> None:
    factory = StoreFactory(base=tmp_path)
    dataset = DynamicalDataset(store_factory=factory)
    run_workers(1, lambda i, n: dataset.backfill(
        BACKFILL_END, "first", worker_index=i, workers_total=n))  # fmt: skip
    with pytest.raises(ValueError, match="not safe to overwrite"):
        dataset.backfill(START + 4 * FREQ, "short", worker_index=0, workers_total=1,
                         overwrite_chunks=True)  # fmt: skip


def test_workers_in_their_own_processes_commit_one_backfill(tmp_path: Path, secret: str) -> None:
    """Three processes started like an Indexed Job's pods (index, total, name, uid, secret)."""
    worker = Path(__file__).with_name("reformatters_worker.py")
    procs = start_workers(
        [sys.executable, str(worker), str(tmp_path), BACKFILL_END.isoformat()],
        3,
        job_name="standin-backfill-abcd",
        job_uid="0f1e2d3c",
        secret=secret,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    outputs = {i: p.communicate(timeout=240)[0] for i, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), outputs
    assert "committed" in outputs[2]
    repo = primary(StoreFactory(base=tmp_path))
    assert len(job_commits(repo, "standin-backfill-abcd-0f1e2d3c")) == 1
    assert np.array_equal(read(repo.readonly_session("main").store), expected(12))
    assert zarr.open_group(repo.readonly_session("main").store, mode="r")["latitude"][
        :
    ].tolist() == (LATITUDES.tolist())


def test_a_job_is_named_by_their_arguments_when_the_environment_has_none(tmp_path: Path) -> None:
    factory = StoreFactory(base=tmp_path)
    dataset = DynamicalDataset(store_factory=factory)
    (outcome,) = run_workers(1, lambda i, n: dataset.backfill(
        START + 4 * FREQ, "local", worker_index=i, workers_total=n))  # fmt: skip
    assert (outcome.job_id, outcome.status) == ("local", "committed")
