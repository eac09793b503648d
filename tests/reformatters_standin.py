"""A small stand-in for dynamical.org's reformatters, written for these tests.

It has their shapes, names and signatures where the integration reads them
(``DynamicalDataset._process_region_jobs`` and its arguments,
``RegionJob.get_jobs`` / ``operational_update_jobs`` / ``process`` /
``update_template_with_results`` / ``model_copy``, ``SourceFileCoord``,
``SourceFileResult``, a ``StoreFactory`` with ``icechunk_repos``,
``primary_store``, ``replica_stores``, ``open_primary_datatree``, and
``template_utils`` / ``copy_zarr_metadata`` functions) and nothing else:
dataclasses instead of pydantic, a few lines each, no code of theirs.

The dataset: two variables over ``init_time`` x ``latitude``, chunked by 2
steps; one region job per chunk and variable (``max_vars_per_job = 1``). A
source file is "published" when its init time is before
``PUBLISHED_BEFORE``; the value of variable ``k`` at step ``i`` and
latitude ``j`` is ``100 k + i + j / 10``, so every worker count must give
the same numbers.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import uuid
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import fsspec
import icechunk
import numpy as np
import pandas as pd
import xarray as xr
import zarr
import zarr.storage
from icechunk.store import IcechunkStore
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from icechunk_coop import WorkerOutcome
from icechunk_coop.reformatters import Helpers, process_region_jobs

START = pd.Timestamp("2025-01-01T00:00")
FREQ = pd.Timedelta("6h")
LATITUDES = np.array([10.0, 20.0, 30.0])
CHUNK = 2  # init times per chunk: one region job per chunk and variable


@dataclasses.dataclass(frozen=True)
class DataVar:
    name: str
    index: int  # for the synthetic values

    @property
    def path(self) -> str:
        return self.name


DATA_VARS = (DataVar(name="temperature", index=1), DataVar(name="precipitation", index=2))


def value(var: DataVar, step: int) -> np.ndarray:
    return (100 * var.index + step + np.arange(len(LATITUDES)) / 10).astype("float32")


# ---- template_utils and copy_zarr_metadata --------------------------------------------


class template_utils:  # noqa: N801 - stands for their module of that name
    """Their ``reformatters.common.template_utils`` functions the loop calls."""

    @staticmethod
    def write_metadata(
        template_ds: xr.DataTree,
        storage: Path,
        mode: Literal["w", "w-"] | None = None,
        skip_icechunk_commit: bool = False,
        consolidated: bool = True,
    ) -> None:
        assert isinstance(storage, Path), "the stand-in writes templates into local paths only"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec
            template_ds.to_zarr(
                storage, mode=mode or "w", consolidated=consolidated, zarr_format=3,
                write_inherited_coords=True, write_empty_chunks=False,
            )  # fmt: skip

    @staticmethod
    def assert_no_structural_drift_from_existing_store(
        template_ds: xr.DataTree, existing_ds: xr.DataTree, append_dim: str
    ) -> None:
        ours, theirs = template_ds.to_dataset(), existing_ds.to_dataset()
        if set(ours.data_vars) != set(theirs.data_vars):
            raise ValueError(f"structural drift: {set(ours.data_vars) ^ set(theirs.data_vars)}")

    @staticmethod
    def assert_safe_overwrite(
        template_ds: xr.DataTree,
        existing_ds: xr.DataTree,
        append_dim: str,
        *,
        allow_new_arrays: bool,
        allow_expansion: bool,
    ) -> None:
        new, old = template_ds.sizes[append_dim], existing_ds.sizes[append_dim]
        if new < old or (new > old and not allow_expansion):
            raise ValueError(f"not safe to overwrite: template {new} steps, store {old}")

    @staticmethod
    def assert_no_append_dim_retraction(
        template_ds: xr.DataTree, existing_ds: xr.DataTree, append_dim: str
    ) -> None:
        new, old = template_ds.sizes[append_dim], existing_ds.sizes[append_dim]
        if new < old:
            raise ValueError(f"Update template would retract already-published data: {new} < {old}")

    @staticmethod
    def store_written_coords(template_ds: xr.DataTree) -> set[str]:
        ds = template_ds.to_dataset()
        return {str(n) for n, c in ds.coords.items() if bool(c.isnull().all())}


def _set(store: Store, key: str, data: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def copy_zarr_metadata(
    template_ds: xr.DataTree,
    tmp_store: Path,
    primary_store: Store,
    replica_stores: Iterable[Store] = (),
    icechunk_only: bool = False,
    zarr3_only: bool = False,
    skip_unchanged: bool = False,
    exclude_coord_value_chunks: Collection[str] = (),
) -> None:
    """Metadata and coordinate chunks from ``tmp_store``: Icechunk metadata first, zarr last."""
    coords = [c for c in template_ds.to_dataset().coords if c not in exclude_coord_value_chunks]
    chunks = [p for c in coords for p in (tmp_store / str(c)).glob("c/**/*") if p.is_file()]
    metas = sorted(tmp_store.rglob("zarr.json"), key=lambda p: len(p.relative_to(tmp_store).parts))
    for store in [*replica_stores, primary_store]:
        is_icechunk = isinstance(store, IcechunkStore)
        if (icechunk_only and not is_icechunk) or (zarr3_only and is_icechunk):
            continue
        for path in [*metas, *chunks] if is_icechunk else [*chunks, *metas]:
            _set(store, str(path.relative_to(tmp_store)), path.read_bytes())


@dataclasses.dataclass(frozen=True)
class SourceFileResult:
    status: SourceFileStatus
    out_loc: dict[str, Any]
    url: str


HELPERS = Helpers(
    template_utils=template_utils,
    copy_zarr_metadata=copy_zarr_metadata,
    source_file_result=SourceFileResult,
)

# ---- region jobs -------------------------------------------------------------------------


class SourceFileStatus(enum.Enum):
    Processing = enum.auto()
    DownloadFailed = enum.auto()
    ReadFailed = enum.auto()
    Succeeded = enum.auto()


@dataclasses.dataclass(frozen=True)
class SourceFileCoord:
    init_time: pd.Timestamp
    status: SourceFileStatus = SourceFileStatus.Processing

    def get_url(self) -> str:
        return f"file:///sources/{self.init_time:%Y%m%dT%H}.bin"

    def out_loc(self) -> Mapping[str, Any]:
        return {"init_time": self.init_time}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegionJob:
    tmp_store: Path
    template_ds: xr.DataTree
    data_vars: Sequence[DataVar]
    append_dim: str
    region: slice
    reformat_job_name: str

    max_vars_per_job: ClassVar[int | None] = 1
    worker_assignment: ClassVar[Literal["spread", "contiguous"]] = "spread"
    consolidated_metadata: ClassVar[bool] = True
    published_before: ClassVar[pd.Timestamp] = pd.Timestamp.max

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        return dataclasses.replace(self, **dict(update or {}))

    @classmethod
    def get_jobs(
        cls,
        tmp_store: Path,
        template_ds: xr.DataTree,
        append_dim: str,
        all_data_vars: Sequence[DataVar],
        reformat_job_name: str,
        filter_start: pd.Timestamp | None = None,
        filter_end: pd.Timestamp | None = None,
        filter_contains: list[pd.Timestamp] | None = None,
        filter_variable_names: list[str] | None = None,
    ) -> Sequence[Self]:
        times = pd.DatetimeIndex(template_ds[append_dim].values)
        first = 0 if filter_start is None else int(times.searchsorted(filter_start)) // CHUNK
        groups = [[v] for v in all_data_vars] if cls.max_vars_per_job else [all_data_vars]
        return [
            cls(
                tmp_store=tmp_store,
                template_ds=template_ds,
                data_vars=tuple(group),
                append_dim=append_dim,
                region=slice(s, min(s + CHUNK, len(times))),
                reformat_job_name=reformat_job_name,
            )
            for s in range(first * CHUNK, len(times), CHUNK)
            for group in groups
        ]

    @classmethod
    def operational_update_jobs(
        cls,
        primary_store: Store,
        tmp_store: Path,
        get_template_fn: Callable[[Any], xr.DataTree],
        append_dim: str,
        all_data_vars: Sequence[DataVar],
        reformat_job_name: str,
        job_fire_time: pd.Timestamp | None = None,
    ) -> tuple[Sequence[Self], xr.DataTree]:
        present = xr.open_zarr(primary_store, consolidated=False).sizes[append_dim]
        assert job_fire_time is not None, "the stand-in's updates run on a schedule"
        template_ds = get_template_fn(job_fire_time)
        start = START + max(present - 1, 0) * FREQ  # the last step present is redone
        jobs = cls.get_jobs(tmp_store, template_ds, append_dim, all_data_vars,
                            reformat_job_name, filter_start=start)  # fmt: skip
        return jobs, template_ds

    def update_template_with_results(
        self, process_results: Mapping[str, Sequence[SourceFileResult]]
    ) -> xr.DataTree:
        done = [
            r.out_loc[self.append_dim]
            for results in process_results.values()
            for r in results
            if r.status == SourceFileStatus.Succeeded
        ]
        if not done:
            return self.template_ds.isel({self.append_dim: slice(None, self.region.start)})
        return self.template_ds.sel({self.append_dim: slice(None, max(done))})


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaterializedRegionJob(RegionJob):
    def process(
        self, primary_store: Store, replica_stores: list[Store]
    ) -> Mapping[str, Sequence[SourceFileCoord]]:
        """Read each source file, write the region into ``tmp_store``, copy its chunks out."""
        times = self.template_ds[self.append_dim].values[self.region]
        results: dict[str, Sequence[SourceFileCoord]] = {}
        for var in self.data_vars:
            data = np.full((len(times), len(LATITUDES)), np.nan, dtype="float32")
            coords = []
            for n, t in enumerate(pd.DatetimeIndex(times)):
                found = t < self.published_before
                if found:
                    data[n] = value(var, self.region.start + n)
                status = SourceFileStatus.Succeeded if found else SourceFileStatus.DownloadFailed
                coords.append(SourceFileCoord(init_time=t, status=status))
            array = zarr.open_array(zarr.storage.LocalStore(self.tmp_store), path=var.path)
            array[self.region] = data
            chunk_dir = self.tmp_store / var.path / "c" / str(self.region.start // CHUNK)
            for path in sorted(p for p in chunk_dir.rglob("*") if p.is_file()):
                for store in [*replica_stores, primary_store]:
                    _set(store, str(path.relative_to(self.tmp_store)), path.read_bytes())
            results[var.path] = coords
        return results


# ---- where the dataset lives ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StoreFactory:
    """Stores under ``base``: ``primary`` and ``replica-<i>``, each Icechunk or zarr v3."""

    base: Path
    primary_format: Literal["icechunk", "zarr3"] = "icechunk"
    replica_formats: Sequence[Literal["icechunk", "zarr3"]] = ()
    repo_config: icechunk.RepositoryConfig | None = None
    credentials: Mapping[str, Any] | None = None

    def _stores(self) -> list[tuple[str, str, Path]]:
        roles = [("primary", self.primary_format)]
        roles += [(f"replica-{i}", f) for i, f in enumerate(self.replica_formats)]
        return [(role, fmt, self.base / f"{role}.{fmt}") for role, fmt in roles]

    def _repo(self, path: Path, *, create: bool) -> icechunk.Repository:
        opener = icechunk.Repository.open_or_create if create else icechunk.Repository.open
        extra = (
            {}
            if self.credentials is None
            else {"authorize_virtual_chunk_access": dict(self.credentials)}
        )
        return opener(
            icechunk.local_filesystem_storage(str(path)), config=self.repo_config, **extra
        )

    def _store(self, fmt: str, path: Path, writable: bool, branch: str) -> Store:
        if fmt == "zarr3":
            return zarr.storage.LocalStore(path, read_only=not writable)
        repo = self._repo(path, create=writable)
        return (repo.writable_session(branch) if writable else repo.readonly_session(branch)).store

    def icechunk_repos(
        self, *, sort: Literal["primary-first", "primary-last"]
    ) -> list[tuple[str, icechunk.Repository]]:
        repos = [
            (role, self._repo(p, create=True))
            for role, fmt, p in self._stores()
            if fmt == "icechunk"
        ]
        return sorted(repos, key=lambda r: (r[0] == "primary") == (sort == "primary-last"))

    def primary_store(self, writable: bool = False, branch: str = "main") -> Store:
        _, fmt, path = self._stores()[0]
        return self._store(fmt, path, writable, branch)

    def replica_stores(self, writable: bool = False, branch: str = "main") -> list[Store]:
        return [self._store(f, p, writable, branch) for _, f, p in self._stores()[1:]]

    def open_primary_datatree(self) -> xr.DataTree:
        return xr.open_datatree(self.primary_store(), engine="zarr", consolidated=False)

    def _coordination_base_path(self) -> str:
        return str(self.base / "_internal")

    def _coordination_fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.filesystem("file")


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
    append_dim: str = "init_time"
    data_vars: Sequence[DataVar] = DATA_VARS

    def get_template(self, append_dim_end: pd.Timestamp) -> xr.DataTree:
        times = pd.date_range(START, append_dim_end, freq=FREQ, inclusive="left")
        empty = np.full((len(times), len(LATITUDES)), np.nan, "float32")
        ds = xr.Dataset(
            {v.name: ((self.append_dim, "latitude"), empty) for v in self.data_vars},
            coords={self.append_dim: times, "latitude": LATITUDES},
            attrs={"dataset_id": "standin"},
        )
        for v in self.data_vars:
            ds[v.name].encoding = {"chunks": (CHUNK, len(LATITUDES)), "fill_value": np.nan}
        return xr.DataTree(dataset=ds)


@dataclasses.dataclass(frozen=True)
class DynamicalDataset:
    """Their dataset's commands as far as they reach ``_process_region_jobs``."""

    store_factory: StoreFactory
    template_config: TemplateConfig = TemplateConfig()
    region_job_class: type[RegionJob] = MaterializedRegionJob
    dataset_id: str = "standin"
    tmp_root: Path | None = None

    def _tmp_store(self) -> Path:  # theirs: data/tmp/<uuid>-tmp.zarr, per process
        return (self.tmp_root or self.store_factory.base / "tmp") / f"{uuid.uuid4()}-tmp.zarr"

    def _get_template(self, append_dim_end: Any) -> xr.DataTree:
        return self.template_config.get_template(pd.Timestamp(append_dim_end))

    def backfill(
        self,
        append_dim_end: pd.Timestamp,
        reformat_job_name: str,
        *,
        worker_index: int,
        workers_total: int,
        overwrite_chunks: bool = False,
        overwrite_metadata: bool = False,
    ) -> WorkerOutcome:
        template_ds = self._get_template(append_dim_end)
        tmp_store = self._tmp_store()
        all_jobs = self.region_job_class.get_jobs(
            tmp_store=tmp_store,
            template_ds=template_ds,
            append_dim=self.template_config.append_dim,
            all_data_vars=self.template_config.data_vars,
            reformat_job_name=reformat_job_name,
        )
        return self._process_region_jobs(
            all_jobs=all_jobs,
            worker_index=worker_index,
            workers_total=workers_total,
            reformat_job_name=reformat_job_name,
            template_ds=template_ds,
            tmp_store=tmp_store,
            update_template_with_results=False,
            overwrite_chunks=overwrite_chunks,
            overwrite_metadata=overwrite_metadata,
        )

    def update(
        self,
        reformat_job_name: str,
        *,
        worker_index: int = 0,
        workers_total: int = 1,
        job_fire_time: pd.Timestamp,
    ) -> WorkerOutcome:
        tmp_store = self._tmp_store()
        all_jobs, template_ds = self.region_job_class.operational_update_jobs(
            primary_store=self.store_factory.primary_store(),
            tmp_store=tmp_store,
            get_template_fn=self._get_template,
            append_dim=self.template_config.append_dim,
            all_data_vars=self.template_config.data_vars,
            reformat_job_name=reformat_job_name,
            job_fire_time=job_fire_time,
        )
        return self._process_region_jobs(
            all_jobs=all_jobs,
            worker_index=worker_index,
            workers_total=workers_total,
            reformat_job_name=reformat_job_name,
            template_ds=template_ds,
            tmp_store=tmp_store,
            update_template_with_results=True,
        )

    def _process_region_jobs(
        self,
        all_jobs: Sequence[RegionJob],
        worker_index: int,
        workers_total: int,
        reformat_job_name: str,
        template_ds: xr.DataTree,
        tmp_store: Path,
        *,
        update_template_with_results: bool,
        overwrite_chunks: bool = False,
        overwrite_metadata: bool = False,
    ) -> WorkerOutcome:
        """The whole method, as docs/reformatters.md shows it in theirs."""
        return process_region_jobs(
            self,
            all_jobs,
            worker_index=worker_index,
            workers_total=workers_total,
            reformat_job_name=reformat_job_name,
            template_ds=template_ds,
            tmp_store=tmp_store,
            update_template_with_results=update_template_with_results,
            overwrite_chunks=overwrite_chunks,
            overwrite_metadata=overwrite_metadata,
            helpers=HELPERS,
        )


# ---- virtual region jobs ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VirtualRef:
    data_var: DataVar
    out_loc: Mapping[str, Any]
    location: str
    offset: int
    length: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class VirtualRegionJob(RegionJob):
    """References into one raw file per init time: each variable's row, one after the other."""

    max_vars_per_job: ClassVar[int | None] = None
    worker_assignment: ClassVar[Literal["spread", "contiguous"]] = "contiguous"
    consolidated_metadata: ClassVar[bool] = False
    source_dir: ClassVar[Path]

    @classmethod
    def source_path(cls, t: pd.Timestamp) -> Path:
        return cls.source_dir / f"{t:%Y%m%dT%H}.bin"

    def source_file_coords(self) -> Sequence[SourceFileCoord]:
        times = self.template_ds[self.append_dim].values[self.region]
        return [SourceFileCoord(init_time=t) for t in pd.DatetimeIndex(times)]

    def filter_already_present(
        self, candidates: Sequence[SourceFileCoord], store: Store
    ) -> list[SourceFileCoord]:
        times = pd.DatetimeIndex(self.template_ds[self.append_dim].values)
        rep = self.data_vars[0].path
        return [
            c for c in candidates
            if not sync(store.exists(f"{rep}/c/{times.get_loc(c.init_time)}/0"))
        ]  # fmt: skip

    def process_virtual_refs(
        self, remaining: Sequence[SourceFileCoord]
    ) -> Iterator[Sequence[tuple[SourceFileCoord, Sequence[VirtualRef]]]]:
        row = len(LATITUDES) * 4
        batch = [
            (c, [VirtualRef(data_var=v, out_loc=c.out_loc(), location=f"file://{self.source_path(c.init_time)}",
                            offset=k * row, length=row) for k, v in enumerate(self.data_vars)])
            for c in remaining
            if self.source_path(c.init_time).exists()
        ]  # fmt: skip
        if batch:
            yield batch

    def _assert_probe_chunk_covered(
        self, coord: SourceFileCoord, file_refs: Sequence[VirtualRef]
    ) -> None:
        assert file_refs, f"empty refs for source file {coord}"

    def _emit_refs(self, stores: Sequence[Any], refs: Sequence[VirtualRef]) -> None:
        times = pd.DatetimeIndex(self.template_ds[self.append_dim].values)
        for store in stores:
            for ref in refs:
                spec = icechunk.VirtualChunkSpec(
                    index=[times.get_loc(ref.out_loc[self.append_dim]), 0],
                    location=ref.location, offset=ref.offset, length=ref.length,
                )  # fmt: skip
                failed = store.set_virtual_refs(ref.data_var.path, [spec], validate_containers=True)
                assert failed is None, failed


def write_virtual_sources(source_dir: Path, end: pd.Timestamp) -> None:
    """One raw little-endian float32 file per init time: each variable's row in turn."""
    source_dir.mkdir(parents=True, exist_ok=True)
    for step, t in enumerate(pd.date_range(START, end, freq=FREQ, inclusive="left")):
        rows = [value(v, step).astype("<f4").tobytes() for v in DATA_VARS]
        (source_dir / f"{t:%Y%m%dT%H}.bin").write_bytes(b"".join(rows))


@dataclasses.dataclass(frozen=True)
class VirtualTemplateConfig(TemplateConfig):
    """Uncompressed one-step chunks: a virtual chunk is exactly one source row."""

    def get_template(self, append_dim_end: pd.Timestamp) -> xr.DataTree:
        tree = super().get_template(append_dim_end)
        ds = tree.to_dataset()
        for v in self.data_vars:
            ds[v.name].encoding = {
                "chunks": (1, len(LATITUDES)), "fill_value": np.nan, "compressors": None,
            }  # fmt: skip
        return xr.DataTree(dataset=ds)


def environ_with(secret: str) -> dict[str, str]:
    return {**os.environ, "ICECHUNK_COOP_SECRET": secret}
