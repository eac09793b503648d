"""reformatters' classes as far as the loop reads them: Protocols, and the functions it calls."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, Self

import attrs
import icechunk
from zarr.abc.store import Store

__all__ = [
    "CopyZarrMetadata",
    "DatasetLike",
    "Helpers",
    "MaterializedRegionJobLike",
    "RegionJobClassLike",
    "RegionJobLike",
    "SourceFileCoordLike",
    "StoreFactoryLike",
    "TemplateUtilsLike",
    "VirtualRegionJobLike",
]


class SourceFileCoordLike(Protocol):
    """A source file's coordinates and final status (their ``SourceFileCoord``)."""

    status: Any

    def out_loc(self) -> Mapping[str, Any]: ...
    def get_url(self) -> str: ...


class RegionJobLike(Protocol):
    """What every region job has (their ``RegionJob``, a frozen pydantic model)."""

    tmp_store: Path
    template_ds: Any
    append_dim: str
    region: slice

    def update_template_with_results(self, process_results: Mapping[str, Sequence[Any]]) -> Any: ...
    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> Self: ...


class MaterializedRegionJobLike(RegionJobLike, Protocol):
    """A job that writes chunks (their ``MaterializedRegionJob``)."""

    def process(
        self, primary_store: Store, replica_stores: list[Store]
    ) -> Mapping[str, Sequence[SourceFileCoordLike]]: ...


class VirtualRegionJobLike(RegionJobLike, Protocol):
    """A job that writes virtual references (their ``VirtualRegionJob``): no ``process``.

    ``_assert_probe_chunk_covered`` and ``_emit_refs`` are theirs and private:
    the loop calls them because nothing public writes one batch of references
    into given stores without committing (their ``process_virtual`` commits).
    """

    def source_file_coords(self) -> Sequence[Any]: ...
    def filter_already_present(self, candidates: Sequence[Any], store: Any) -> list[Any]: ...
    def process_virtual_refs(
        self, remaining: Sequence[Any]
    ) -> Iterator[Sequence[tuple[Any, Sequence[Any]]]]: ...
    def _assert_probe_chunk_covered(self, coord: Any, file_refs: Sequence[Any]) -> None: ...
    def _emit_refs(self, stores: Sequence[Any], refs: Sequence[Any]) -> None: ...


class StoreFactoryLike(Protocol):
    """Their ``StoreFactory``: which stores exist, Icechunk or plain zarr v3."""

    def icechunk_repos(
        self, *, sort: Literal["primary-first", "primary-last"]
    ) -> list[tuple[str, icechunk.Repository]]: ...
    def primary_store(self, writable: bool = False, branch: str = "main") -> Store: ...
    def replica_stores(self, writable: bool = False, branch: str = "main") -> list[Store]: ...
    def open_primary_datatree(self) -> Any: ...


class TemplateConfigLike(Protocol):
    append_dim: str


class RegionJobClassLike(Protocol):
    worker_assignment: str
    consolidated_metadata: bool


class DatasetLike(Protocol):
    """Their ``DynamicalDataset``: the store factory, the template config, the job class."""

    @property
    def dataset_id(self) -> str: ...
    @property
    def store_factory(self) -> StoreFactoryLike: ...
    @property
    def template_config(self) -> TemplateConfigLike: ...
    @property
    def region_job_class(self) -> RegionJobClassLike: ...


class TemplateUtilsLike(Protocol):
    """Their ``reformatters.common.template_utils`` module (a module satisfies a Protocol)."""

    def write_metadata(
        self,
        template_ds: Any,
        storage: Any,
        mode: Any = None,
        skip_icechunk_commit: bool = False,
        consolidated: bool = True,
    ) -> None: ...
    def assert_no_structural_drift_from_existing_store(
        self, template_ds: Any, existing_ds: Any, append_dim: str
    ) -> None: ...
    def assert_safe_overwrite(
        self,
        template_ds: Any,
        existing_ds: Any,
        append_dim: str,
        *,
        allow_new_arrays: bool,
        allow_expansion: bool,
    ) -> None: ...
    def assert_no_append_dim_retraction(
        self, template_ds: Any, existing_ds: Any, append_dim: str
    ) -> None: ...
    def store_written_coords(self, template_ds: Any) -> set[str]: ...


class CopyZarrMetadata(Protocol):
    """Their ``reformatters.common.zarr.copy_zarr_metadata``."""

    def __call__(
        self,
        template_ds: Any,
        tmp_store: Path,
        primary_store: Store,
        replica_stores: Iterable[Store] = (),
        icechunk_only: bool = False,
        zarr3_only: bool = False,
        skip_unchanged: bool = False,
        exclude_coord_value_chunks: Collection[str] = (),
    ) -> None: ...


@attrs.frozen(kw_only=True)
class Helpers:
    """The functions of theirs the loop calls, so that nothing here imports reformatters.

    ``template_utils`` is their module; ``copy_zarr_metadata`` their function
    (``reformatters.common.zarr``); ``source_file_result`` their
    ``SourceFileResult`` class, called with ``status``, ``out_loc`` and ``url``.
    """

    template_utils: TemplateUtilsLike
    copy_zarr_metadata: CopyZarrMetadata
    source_file_result: Callable[..., Any]
