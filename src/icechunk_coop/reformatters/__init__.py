"""dynamical.org's reformatters on icechunk-coop: their ``_process_region_jobs`` as one call.

Their ``DynamicalDataset._process_region_jobs`` runs one worker's share of
the region jobs and coordinates the workers through JSON files, a temporary
branch and per-worker commits. :func:`process_region_jobs` takes the same
arguments and does the same things, on the cooperative protocol instead
(one fork per worker, one commit per job, replicas first, the primary last):

- the guards on worker 0 before anything is written: an update must not
  change the published structure, an overwrite backfill must be safe;
- the template: written into worker 0's local ``tmp_store`` and copied into
  every Icechunk target's fork (the arrays grown, coordinates written);
  plain zarr v3 stores are left alone there, as in theirs;
- every job: the template's metadata into the job's ``tmp_store``, then
  ``process(primary_store=..., replica_stores=...)``; each source file's
  status converted to their ``SourceFileResult`` (what
  ``update_template_with_results`` reads); a virtual region job (no
  ``process``) has its virtual references written into the forks instead;
- the last worker: an update's template trimmed to what was processed,
  refused if it would retract published steps, then the final metadata:
  Icechunk targets get it in the merged session, plain zarr v3 stores
  (coordinate chunks first, every ``zarr.json`` when the job commits) get it
  for an update or an overwrite backfill.

Nothing here imports reformatters: their dataset, jobs and store factory are
read through the Protocols below, and the few functions of theirs the loop
calls (``template_utils``, ``copy_zarr_metadata``, ``SourceFileResult``)
come in as :class:`Helpers`. See ``docs/reformatters.md`` for the method it
replaces, line by line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from icechunk_coop.jobs._loop import run_region_jobs
from icechunk_coop.protocol._cooperative import CooperativeJob, WorkerOutcome
from icechunk_coop.reformatters._run import Run
from icechunk_coop.reformatters._shapes import (
    DatasetLike,
    Helpers,
    MaterializedRegionJobLike,
    RegionJobLike,
    StoreFactoryLike,
    VirtualRegionJobLike,
)
from icechunk_coop.reformatters._stores import (
    assignment_of,
    identity_of,
    rendezvous_of,
    targets_of,
)
from icechunk_coop.rendezvous._waiting import WaitPolicy
from icechunk_coop.targets._targets import IcechunkTarget, Target

__all__ = [
    "DatasetLike",
    "Helpers",
    "MaterializedRegionJobLike",
    "RegionJobLike",
    "StoreFactoryLike",
    "VirtualRegionJobLike",
    "assignment_of",
    "process_region_jobs",
    "targets_of",
]


def process_region_jobs(
    dataset: DatasetLike,
    all_jobs: Sequence[RegionJobLike],
    *,
    worker_index: int,
    workers_total: int,
    reformat_job_name: str,
    template_ds: Any,
    tmp_store: Path,
    update_template_with_results: bool,
    overwrite_chunks: bool = False,
    overwrite_metadata: bool = False,
    helpers: Helpers,
    rendezvous_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    policy: WaitPolicy | None = None,
    environ: Mapping[str, str] | None = None,
    targets: tuple[Target, Sequence[Target]] | None = None,
    pin: bool | None = None,
) -> WorkerOutcome:
    """Their ``_process_region_jobs``, cooperative: this worker's share, one commit per job.

    The arguments up to ``overwrite_metadata`` are theirs, unchanged.
    ``rendezvous_url`` defaults to ``_internal/coop`` beside their coordination
    files (with the same fsspec options); ``targets`` to :func:`targets_of`.
    ``pin`` (default: for an update) makes worker 0's job list every
    worker's: an update reads the primary to decide what to do, and two pods
    reading it at different moments (another job committed in between) must
    not share out two different lists. Each worker then runs the pinned jobs
    with its own ``tmp_store`` (worker 0's path means nothing in another pod,
    and two workers on one machine must not share it).
    """
    env = os.environ if environ is None else environ
    update = update_template_with_results
    primary, replicas = targets or targets_of(dataset.store_factory, create=not update)
    if rendezvous_url is None:
        rendezvous_url, found_options = rendezvous_of(dataset.store_factory)
        storage_options = found_options if storage_options is None else storage_options
    job = CooperativeJob.create(
        rendezvous_url=rendezvous_url,
        primary=primary,
        replicas=replicas,
        identity=identity_of(worker_index, workers_total, reformat_job_name, env),
        storage_options=storage_options,
        policy=policy,
        environ=env,
    )
    run = Run(
        dataset=dataset,
        helpers=helpers,
        template_ds=template_ds,
        tmp_store=tmp_store,
        update=update,
        overwrite_chunks=overwrite_chunks,
        overwrite_metadata=overwrite_metadata,
        icechunk=tuple(isinstance(t, IcechunkTarget) for t in (primary, *replicas)),
    )
    pinned = update if pin is None else pin
    listed = list(all_jobs)

    def mine(region_job: RegionJobLike, _worker: int) -> RegionJobLike:
        if region_job.tmp_store == tmp_store:
            return region_job
        return region_job.model_copy(update={"tmp_store": tmp_store})

    def message() -> str:
        what = "Update" if update else "Backfill"
        return f"{what} at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} by job {reformat_job_name}"

    return run_region_jobs(
        job,
        (lambda _job: listed) if pinned else listed,
        message=message,
        assign=assignment_of(dataset.region_job_class),
        # A pinned list brings worker 0's template with it (their jobs hold it).
        context=lambda _job, jobs: jobs[0].template_ds if pinned and jobs else template_ds,
        rebind=mine,
        prepare=run.prepare,
        process=run.process,
        finalize=run.finalize,
    )
