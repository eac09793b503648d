"""One worker's run of their loop: the hooks ``run_region_jobs`` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeGuard

import attrs

from icechunk_coop.errors import ConfigurationError
from icechunk_coop.jobs._loop import Loop
from icechunk_coop.reformatters._shapes import (
    DatasetLike,
    Helpers,
    MaterializedRegionJobLike,
    RegionJobLike,
    VirtualRegionJobLike,
)
from icechunk_coop.targets._targets import Stores

__all__ = ["Run"]


def _is_materialized(job: object) -> TypeGuard[MaterializedRegionJobLike]:
    return callable(getattr(job, "process", None))


def _is_virtual(job: object) -> TypeGuard[VirtualRegionJobLike]:
    return callable(getattr(job, "process_virtual_refs", None))


def _write_virtual_refs(job: VirtualRegionJobLike, stores: Stores) -> None:
    """A virtual job's references into every fork: theirs without the commit per batch.

    The setup grew every Icechunk target to the whole template, so no batch
    needs to grow the append dimension; references already in the target
    (found through the fork, which holds what the target held) are skipped.
    """
    remaining = job.filter_already_present(job.source_file_coords(), stores.primary)
    for batch in job.process_virtual_refs(remaining) if remaining else ():
        for coord, file_refs in batch:
            job._assert_probe_chunk_covered(coord, file_refs)
        refs = [ref for _, file_refs in batch for ref in file_refs]
        job._emit_refs(list(stores.all), refs)


@attrs.frozen(kw_only=True)
class Run:
    """One worker's run of their loop: their arguments, and what they imply."""

    dataset: DatasetLike
    helpers: Helpers
    template_ds: Any
    tmp_store: Path
    update: bool
    overwrite_chunks: bool
    overwrite_metadata: bool
    icechunk: tuple[bool, ...]  # per store of Stores.all: an Icechunk target?

    @property
    def overwrite(self) -> bool:
        return self.overwrite_chunks or self.overwrite_metadata

    @property
    def append_dim(self) -> str:
        return self.dataset.template_config.append_dim

    @property
    def consolidated(self) -> bool:
        return bool(getattr(self.dataset.region_job_class, "consolidated_metadata", True))

    def exclude(self, template_ds: Any) -> set[str]:
        """Coordinates jobs wrote into a live store: an overwrite keeps their values."""
        if not self.overwrite:
            return set()
        return set(self.helpers.template_utils.store_written_coords(template_ds))

    def guard(self, template_ds: Any) -> None:
        """Worker 0, before anything is written: the live dataset stays as it is."""
        tools, factory = self.helpers.template_utils, self.dataset.store_factory
        if self.update:
            existing = factory.open_primary_datatree()
            tools.assert_no_structural_drift_from_existing_store(
                template_ds, existing, self.append_dim
            )
        if self.overwrite:
            tools.assert_safe_overwrite(
                template_ds,
                factory.open_primary_datatree(),
                self.append_dim,
                allow_new_arrays=self.overwrite_metadata,
                allow_expansion=self.overwrite_chunks and self.overwrite_metadata,
            )

    def copy_metadata(
        self, template_ds: Any, stores: Stores, *, icechunk: bool, skip_unchanged: bool = False
    ) -> None:
        """``template_ds`` (from ``tmp_store``) into the stores of one kind, replicas first."""
        exclude = self.exclude(template_ds)
        chosen = [s for s, kind in zip(stores.all, self.icechunk, strict=True) if kind == icechunk]
        for store in [*chosen[1:], *chosen[:1]] if chosen[:1] == [stores.primary] else chosen:
            self.helpers.copy_zarr_metadata(
                template_ds,
                self.tmp_store,
                store,
                skip_unchanged=skip_unchanged,
                exclude_coord_value_chunks=exclude,
            )

    def prepare(self, stores: Stores, loop: Loop[RegionJobLike, Any]) -> None:
        template_ds = loop.context
        self.guard(template_ds)
        tools = self.helpers.template_utils
        tools.write_metadata(template_ds, self.tmp_store, consolidated=self.consolidated)
        # Icechunk: the arrays grown in the fork (readers see it at the commit).
        # Plain zarr v3: nothing yet, as theirs (a new store got its metadata before
        # the workers started; an update's comes at the end, after the chunks).
        self.copy_metadata(template_ds, stores, icechunk=True)
        persist = getattr(self.dataset.store_factory, "persist_virtual_config", None)
        if callable(persist):
            persist()

    def process(self, job: RegionJobLike, stores: Stores, loop: Loop[RegionJobLike, Any]) -> Any:
        if _is_materialized(job):
            self.helpers.template_utils.write_metadata(job.template_ds, job.tmp_store)
            found = job.process(primary_store=stores.primary, replica_stores=list(stores.replicas))
            make = self.helpers.source_file_result
            return {
                path: [make(status=c.status, out_loc={**c.out_loc()}, url=c.get_url()) for c in cs]
                for path, cs in found.items()
            }
        if _is_virtual(job):
            _write_virtual_refs(job, stores)
            return {}  # the references live in the manifest: nothing for finalize
        raise ConfigurationError(
            f"region job {job!r} has neither process() (a materialized job) nor "
            "process_virtual_refs() (a virtual one): nothing to run"
        )

    def finalize(self, stores: Stores, loop: Loop[RegionJobLike, Any], results: list[Any]) -> None:
        final = loop.context
        if self.update:
            if not loop.jobs:
                raise ConfigurationError(
                    "an update with no region jobs has no template to trim: "
                    "operational_update_jobs must return at least one job"
                )
            merged: dict[str, list[Any]] = {}
            for per_job in results:  # in job order
                for path, found in per_job.items():
                    merged.setdefault(path, []).extend(found)
            final = loop.jobs[0].update_template_with_results(merged)
            self.helpers.template_utils.assert_no_append_dim_retraction(
                final, self.dataset.store_factory.open_primary_datatree(), self.append_dim
            )
        self.helpers.template_utils.write_metadata(
            final, self.tmp_store, consolidated=self.consolidated
        )
        if self.update or self.overwrite:  # a new plain store has its metadata already
            self.copy_metadata(final, stores, icechunk=False, skip_unchanged=not self.update)
        self.copy_metadata(final, stores, icechunk=True)
