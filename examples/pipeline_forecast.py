"""A forecast pipeline shaped like dynamical.org's reformatters, on ``run_region_jobs``.

The pieces have the shapes such a pipeline already has, and nothing here
inherits from icechunk-coop:

- a *template*: an ``xarray.Dataset`` of coordinates, attributes and encodings
  (data variables all NaN), grown along the append dimension ``init_time`` to
  a job's end (:func:`get_template`);
- *region jobs*: frozen pydantic models holding the template and a region, one
  per shard of ``init_time`` and variable group (:class:`ForecastRegionJob`);
  ``process(primary_store, replica_stores)`` "downloads" source files and
  writes the region, and returns, per variable, the source files it looked
  for as pydantic models with ``pd.Timestamp`` fields and paths
  (:class:`SourceFileCoord`);
- a final template built from those results (``init_time`` trimmed to the
  last step whose sources were found) and a retraction guard.

:meth:`PipelineForecast._process_region_jobs` is the whole adoption: it hands
those pieces to :func:`icechunk_coop.run_region_jobs` as hooks. Worker 0
writes the template into the job's fork with xarray, every worker processes
its share of the jobs (interleaved along ``init_time``), and the last worker builds
the final template from every job's results, refuses to shrink what readers
see, writes the final metadata and commits once.

Run it as a pod would (identity from the environment), or with
``icechunk-coop run-local --workers 8 -- python examples/pipeline_forecast.py ...``::

    python examples/pipeline_forecast.py backfill --end 2025-01-03T00:00 \\
        --repo s3://bucket/forecast --rendezvous s3://bucket/rendezvous
    python examples/pipeline_forecast.py update \\
        --repo s3://bucket/forecast --rendezvous s3://bucket/rendezvous

Times are naive ``pd.Timestamp``s meaning UTC, as the pipeline writes them;
``--zarr-primary`` makes ``--repo`` a plain zarr v3 store (give Icechunk
replicas with ``--replica``). No job shrinks what readers see: an update whose
newest sources are not out yet, or a backfill that ends before the data, is
refused (exit code 2) rather than committed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Literal

import attrs
import numpy as np
import pandas as pd
import pydantic
import xarray as xr
import zarr
import zarr.storage
from zarr.abc.store import Store

from icechunk_coop import (
    ConfigurationError,
    CooperativeJob,
    CoopError,
    IcechunkTarget,
    Loop,
    Stores,
    Target,
    WaitPolicy,
    WorkerOutcome,
    ZarrTarget,
    icechunk_storage,
    run_region_jobs,
)
from icechunk_coop.errors import ShrinkRefusedError

log = logging.getLogger("pipeline_forecast")

EXIT_NOT_RETRYABLE = 2  # as argparse's usage errors: one podFailurePolicy rule covers both

# ---- the template ------------------------------------------------------------------

APPEND_DIM = "init_time"
DATASET_START = pd.Timestamp("2025-01-01T00:00")  # naive: UTC
INIT_FREQ = pd.Timedelta("6h")
LEAD_TIMES = pd.timedelta_range("0h", "12h", freq="6h")
LATITUDES = np.linspace(50.0, 40.0, 5)
LONGITUDES = np.linspace(-10.0, 0.0, 6)
SHARD_STEPS = 2  # init times per shard: one region job per shard and variable group
GROUPS: Mapping[str, Mapping[str, str]] = {  # variable group -> variable -> units
    "surface": {"temperature_2m": "degC", "precipitation_surface": "mm/h"},
    "wind": {"wind_u_10m": "m/s", "wind_v_10m": "m/s"},
}
PUBLICATION_DELAY = pd.Timedelta("4h")  # a forecast's source files appear this long after init
SOURCE_ROOT = PurePosixPath("/synthetic-nwp")


def get_template(end: pd.Timestamp) -> xr.Dataset:
    """The dataset's template with every init time before ``end`` (exclusive).

    Coordinates, attributes and encodings only: the data variables are all NaN,
    which zarr does not store (reformatters' templates hold dask arrays instead).
    """
    init_times = pd.date_range(DATASET_START, end, freq=INIT_FREQ, inclusive="left")
    shape = (len(init_times), len(LEAD_TIMES), len(LATITUDES), len(LONGITUDES))
    dims = (APPEND_DIM, "lead_time", "latitude", "longitude")
    ds = xr.Dataset(
        {
            name: (dims, np.full(shape, np.nan, "float32"), {"units": units, "group": group})
            for group, variables in GROUPS.items()
            for name, units in variables.items()
        },
        coords={
            APPEND_DIM: init_times,
            "lead_time": LEAD_TIMES,
            "latitude": ("latitude", LATITUDES, {"units": "degrees_north"}),
            "longitude": ("longitude", LONGITUDES, {"units": "degrees_east"}),
        },
        attrs={"dataset_id": "pipeline-forecast", "title": "Pipeline-shaped forecast example"},
    )
    for name in ds.data_vars:
        ds[name].encoding = {
            "chunks": (1, *shape[1:]),
            "shards": (SHARD_STEPS, *shape[1:]),
            "fill_value": np.nan,
        }
    ds[APPEND_DIM].encoding = {
        "units": "seconds since 1970-01-01",
        "calendar": "proleptic_gregorian",
        "dtype": "int64",
        "chunks": (1024,),
    }
    ds["lead_time"].encoding = {"units": "seconds", "dtype": "int64"}
    if len(init_times):
        ds.attrs["time_coverage_end"] = init_times[-1].isoformat()
    return ds


def write_template_metadata(template_ds: xr.Dataset, store: Store) -> None:
    """Make ``store``'s metadata the template's, keeping every chunk already there.

    Worker 0 writes the job's template into the forks; the last worker writes
    the final one. A new dataset gets the whole template; an existing one gets
    the init times it lacks appended, or its arrays cut to the template's
    length, and the template's attributes. ``to_zarr(mode="w")`` would delete
    an existing dataset's chunks (in an Icechunk fork, and in a plain zarr
    store at once), so it is only used on an empty store. No data chunk is
    written: every data value of a template is NaN, the fill value, which zarr
    does not store (with dask-backed data variables, ``to_zarr(...,
    compute=False)`` does the same).
    """
    present, length = append_dim_length(store), template_ds.sizes[APPEND_DIM]
    if present == 0:
        template_ds.to_zarr(
            store, mode="w", zarr_format=3, consolidated=False, write_empty_chunks=False
        )
        return
    if length > present:
        tail = template_ds.isel({APPEND_DIM: slice(present, None)})
        fixed = [name for name, v in tail.variables.items() if APPEND_DIM not in v.dims]
        tail.drop_vars(fixed).to_zarr(
            store,
            append_dim=APPEND_DIM,
            zarr_format=3,
            consolidated=False,
            write_empty_chunks=False,
        )
    root = zarr.open_group(store, mode="r+", zarr_format=3)
    if length < present:
        for name, variable in template_ds.variables.items():
            if APPEND_DIM in variable.dims:
                array = root[str(name)]
                assert isinstance(array, zarr.Array)
                array.resize((length, *array.shape[1:]))
    root.attrs.update(template_ds.attrs)


def append_dim_length(store: Store) -> int:
    try:
        return int(zarr.open_array(store, path=APPEND_DIM, mode="r").shape[0])
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        return 0


# ---- source files and region jobs -------------------------------------------------


class SourceFileCoord(pydantic.BaseModel):
    """One source file a region job looked for, and whether it was there."""

    model_config = pydantic.ConfigDict(frozen=True, arbitrary_types_allowed=True)

    init_time: pd.Timestamp
    lead_time: pd.Timedelta
    group: str
    path: PurePosixPath
    status: Literal["pending", "processed", "not-found"] = "pending"

    def published(self, now: pd.Timestamp) -> bool:
        return self.init_time + PUBLICATION_DELAY <= now


def source_path(init_time: pd.Timestamp, lead_time: pd.Timedelta, group: str) -> PurePosixPath:
    hours = int(lead_time / pd.Timedelta("1h"))
    return SOURCE_ROOT / f"{init_time:%Y%m%d/%Hz}" / group / f"f{hours:03d}.grib2"


def source_values(coord: SourceFileCoord, variable: str) -> np.ndarray:
    """What 'reading' a source file gives: deterministic in (init time, lead time, variable)."""
    phase = (coord.init_time - DATASET_START) / pd.Timedelta("1D")
    lead = coord.lead_time / pd.Timedelta("1D")
    offset = [name for group in GROUPS.values() for name in group].index(variable)
    lat, lon = np.deg2rad(LATITUDES)[:, None], np.deg2rad(LONGITUDES)[None, :]
    return (np.sin(lat * 3 + phase + offset) * np.cos(lon * 2 - lead) * 10).astype("float32")


class ForecastRegionJob(pydantic.BaseModel):
    """One shard of ``init_time`` and one variable group: a region of the dataset.

    ``available_before`` is the job's "now" for the sources: the job's start
    for an update, the backfill's end plus the publication delay for a backfill.
    """

    model_config = pydantic.ConfigDict(frozen=True, arbitrary_types_allowed=True)

    template_ds: xr.Dataset
    data_vars: tuple[str, ...]
    group: str
    append_dim: str = APPEND_DIM
    region: slice
    available_before: pd.Timestamp
    reformat_job_name: str

    def __str__(self) -> str:
        times = self.template_ds[self.append_dim].values[self.region]
        return f"{self.group} {pd.Timestamp(times[0]):%Y-%m-%dT%H}..{pd.Timestamp(times[-1]):%dT%H}"

    def source_file_coords(self) -> list[SourceFileCoord]:
        times = self.template_ds[self.append_dim].values[self.region]
        return [
            SourceFileCoord(
                init_time=pd.Timestamp(t),
                lead_time=lead,
                group=self.group,
                path=source_path(pd.Timestamp(t), lead, self.group),
            )
            for t in times
            for lead in LEAD_TIMES
        ]

    def process(
        self, primary_store: Store, replica_stores: Sequence[Store]
    ) -> dict[str, list[SourceFileCoord]]:
        """Read this region's source files and write the region into every store."""
        data = self.template_ds[list(self.data_vars)].isel({self.append_dim: self.region})
        data = data.copy(deep=True)
        results: dict[str, list[SourceFileCoord]] = {name: [] for name in self.data_vars}
        for coord in self.source_file_coords():
            found = coord.published(self.available_before)
            where = {self.append_dim: coord.init_time, "lead_time": coord.lead_time}
            for name in self.data_vars:
                if found:
                    data[name].loc[where] = source_values(coord, name)
                status = "processed" if found else "not-found"
                results[name].append(coord.model_copy(update={"status": status}))
        # Chunks only: every coordinate is the template's, written once on worker 0.
        data = data.drop_vars(list(data.coords))
        for store in (primary_store, *replica_stores):
            data.to_zarr(
                store,
                region={self.append_dim: self.region},
                mode="r+",
                zarr_format=3,
                consolidated=False,
            )
        return results

    def update_template_with_results(
        self, process_results: Mapping[str, Sequence[SourceFileCoord]]
    ) -> xr.Dataset:
        """The final template: ``init_time`` cut after the last step whose sources were found.

        ``process_results`` are every job's, merged per variable. Steps before
        the jobs' first one are kept as they are (the jobs did not touch them);
        so is a step with a source missing in the middle (it stays NaN there).
        """
        template_ds = self.template_ds
        coords = [c for per_var in process_results.values() for c in per_var]
        found = [c.init_time for c in coords if c.status == "processed"]
        first = min((c.init_time for c in coords), default=template_ds[APPEND_DIM].values[-1])
        last = max(found) if found else pd.Timestamp(first) - INIT_FREQ
        final = template_ds.sel({APPEND_DIM: slice(None, last)})
        final.attrs = {**template_ds.attrs}
        if final.sizes[APPEND_DIM]:
            end = pd.Timestamp(final[APPEND_DIM].values[-1])
            final.attrs["time_coverage_end"] = end.isoformat()
        return final

    @classmethod
    def get_jobs(
        cls,
        template_ds: xr.Dataset,
        *,
        available_before: pd.Timestamp,
        reformat_job_name: str,
        start: int = 0,
    ) -> list[ForecastRegionJob]:
        """Every job from the shard holding step ``start`` to the template's end, in order."""
        length = template_ds.sizes[APPEND_DIM]
        first = start // SHARD_STEPS * SHARD_STEPS
        return [
            cls(
                template_ds=template_ds,
                data_vars=tuple(variables),
                group=group,
                region=slice(s, min(s + SHARD_STEPS, length)),
                available_before=available_before,
                reformat_job_name=reformat_job_name,
            )
            for s in range(first, length, SHARD_STEPS)
            for group, variables in GROUPS.items()
        ]

    @classmethod
    def operational_update_jobs(
        cls, primary_store: Store, *, job_start: pd.Timestamp, reformat_job_name: str
    ) -> tuple[list[ForecastRegionJob], xr.Dataset]:
        """The update's jobs and template: from the shard of the last step present to now.

        However long ago that step is: an update resumes where the data ends.
        The template never ends before the data readers see.
        """
        present = append_dim_length(primary_store)
        last_init = DATASET_START + (job_start - DATASET_START) // INIT_FREQ * INIT_FREQ
        end = max(last_init + INIT_FREQ, DATASET_START + present * INIT_FREQ)
        template_ds = get_template(end)
        jobs = cls.get_jobs(
            template_ds,
            available_before=job_start,
            reformat_job_name=reformat_job_name,
            start=max(present - 1, 0),
        )
        return jobs, template_ds


# ---- the dataset: where it lives, and the shim -----------------------------------


def as_naive_utc(value: Any) -> pd.Timestamp:
    """The pipeline's time: a naive ``pd.Timestamp`` meaning UTC."""
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


def open_zarr_url(url: str, *, read_only: bool) -> Store:
    if "://" not in url:
        return zarr.storage.LocalStore(url, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(url, read_only=read_only)


@attrs.frozen(kw_only=True)
class PipelineForecast:
    """Where the dataset lives: an Icechunk primary, or a plain zarr v3 one (``zarr_primary``)."""

    repo_url: str
    replica_urls: Sequence[str] = ()
    zarr_primary: bool = False
    policy: WaitPolicy | None = None

    def primary(self, *, create: bool = True) -> Target:
        """``create=False`` for an update: a missing repository stops the job's setup."""
        if self.zarr_primary:
            return ZarrTarget(name="primary", url=self.repo_url)
        storage = icechunk_storage(self.repo_url)
        return IcechunkTarget(name="primary", storage=storage, create=create)

    def replicas(self) -> list[Target]:
        return [
            IcechunkTarget(name=f"replica{k}", storage=icechunk_storage(url))
            for k, url in enumerate(self.replica_urls)
        ]

    def readers_store(self) -> Store | None:
        """The primary as readers see it now (None when there is no dataset yet)."""
        if self.zarr_primary:
            return open_zarr_url(self.repo_url, read_only=True)
        target = self.primary()
        assert isinstance(target, IcechunkTarget)
        try:
            repo = target.open(create=False)
        except Exception:  # icechunk raises several kinds for "not there"
            return None
        return repo.readonly_session(target.branch).store

    def visible_length(self) -> int:
        store = self.readers_store()
        return 0 if store is None else append_dim_length(store)

    def cooperative_job(
        self, rendezvous_url: str, *, create: bool = True, **options: Any
    ) -> CooperativeJob:
        return CooperativeJob.create(
            rendezvous_url=rendezvous_url,
            primary=self.primary(create=create),
            replicas=self.replicas(),
            policy=self.policy,
            **options,
        )

    def backfill(self, *, end: pd.Timestamp, rendezvous_url: str) -> WorkerOutcome:
        """Every init time before ``end``: the same job list on every worker, no pinning needed."""
        job = self.cooperative_job(rendezvous_url)
        template_ds = get_template(end)
        jobs = ForecastRegionJob.get_jobs(
            template_ds,
            available_before=end + PUBLICATION_DELAY,  # a backfill's sources are all out
            reformat_job_name=job.identity.job_name,
        )
        return self._process_region_jobs(job, jobs, mode="backfill")

    def update(self, *, rendezvous_url: str, clock: pd.Timestamp | None = None) -> WorkerOutcome:
        """From the last step present to the job's start, which every worker shares.

        The start is ``JOB_START`` or a CronJob's job name (``CRON_JOB_NAME``);
        with neither, worker 0 takes ``clock`` (default: its own clock) and pins
        it. The job list reads the primary, so it is built once, on worker 0,
        and pinned for every worker: a callable.
        """
        start = (lambda: clock) if clock else None
        job = self.cooperative_job(rendezvous_url, create=False, decide_start=start)

        def jobs(job: CooperativeJob) -> list[ForecastRegionJob]:
            # On worker 0, in the job's setup: a refusal here stops every worker.
            store = self.readers_store()
            if store is None:  # an Icechunk primary is refused earlier (create=False)
                raise ConfigurationError(
                    f"no dataset at {self.repo_url}: an update extends an existing dataset; "
                    "check the URL, or run a backfill first"
                )
            update_jobs, _template = ForecastRegionJob.operational_update_jobs(
                store,
                job_start=as_naive_utc(job.job_start),
                reformat_job_name=job.identity.job_name,
            )
            return update_jobs

        return self._process_region_jobs(job, jobs, mode="update")

    def _process_region_jobs(
        self,
        job: CooperativeJob,
        all_jobs: Sequence[ForecastRegionJob]
        | Callable[[CooperativeJob], Sequence[ForecastRegionJob]],
        *,
        mode: Literal["backfill", "update"],
    ) -> WorkerOutcome:
        """The shim: the pipeline's template, jobs and results as run_region_jobs' hooks.

        ``all_jobs`` is the whole list (every worker takes its share, interleaved along
        ``init_time``), or a callable worker 0 calls once, its list pinned for
        every worker. The template comes with the jobs, so every hook of every
        worker, a restarted last worker included, has the same one.
        """
        visible: list[int] = []  # what readers of the primary see, read once per worker
        final_end: list[str] = []  # for the commit message, made after finalize

        def refuse_to_shrink(template_ds: xr.Dataset) -> None:  # the retraction guard
            if not visible:  # read once: a commit retry applies finalize again
                visible.append(self.visible_length())
            length = template_ds.sizes[APPEND_DIM]
            if length < visible[0]:  # published steps stay published
                raise ShrinkRefusedError(
                    job=job.job_id, dimension=APPEND_DIM, visible=visible[0], final=length
                )

        def prepare(stores: Stores, loop: Loop) -> None:  # worker 0, into the forks
            log.info("%s: %d region jobs, template to %s", mode, len(loop.jobs),
                     loop.context.attrs.get("time_coverage_end"))  # fmt: skip
            refuse_to_shrink(loop.context)  # before any work (a backfill ending too early)
            for store in stores.all:
                write_template_metadata(loop.context, store)

        def finalize(stores: Stores, loop: Loop, results: list[Any]) -> None:  # the last worker
            process_results: dict[str, list[SourceFileCoord]] = {}
            for per_job in results:  # in job order
                for name, coords in per_job.items():
                    process_results.setdefault(name, []).extend(coords)
            final = loop.jobs[0].update_template_with_results(process_results)
            missing = [c for cs in process_results.values() for c in cs if c.status != "processed"]
            if missing:  # the summary names the steps, the files are in the results
                steps = ", ".join(sorted({f"{c.init_time:%Y-%m-%dT%H}" for c in missing}))
                end = final.attrs.get("time_coverage_end")
                log.info("%s: %d source files not found, for init times %s; kept to %s",
                         mode, len(missing), steps, end)  # fmt: skip
            refuse_to_shrink(final)  # before a plain zarr store loses a chunk
            for store in stores.all:
                write_template_metadata(final, store)
            final_end[:] = [final.attrs.get("time_coverage_end", "the start")]

        return run_region_jobs(
            job,
            all_jobs,
            assign="interleaved",  # each worker's jobs scattered along init_time
            context=lambda job, jobs: jobs[0].template_ds,  # the template travels with the jobs
            prepare=prepare,
            finalize=finalize,
            message=lambda: f"{mode} to {final_end[0]}",
        )


# ---- the command line ----------------------------------------------------------------


def _parse_time(text: str) -> pd.Timestamp:
    try:
        return as_naive_utc(pd.Timestamp(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 2025-01-03T00:00") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("backfill", "update"):
        p = sub.add_parser(mode)
        p.add_argument("--repo", required=True, help="primary URL (Icechunk, or zarr v3)")
        p.add_argument("--rendezvous", required=True, help="rendezvous URL")
        p.add_argument("--replica", action="append", default=[], help="Icechunk replica URL")
        p.add_argument(
            "--zarr-primary", action="store_true", help="--repo is a plain zarr v3 store"
        )
        p.add_argument(
            "--max-poll",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="longest pause between two looks at the rendezvous (default 10)",
        )
        p.add_argument(
            "--deadline",
            type=int,
            metavar="SECONDS",
            help="the job's deadline (a Kubernetes Job's activeDeadlineSeconds): every wait "
            "ends a little before it; default: $ICECHUNK_COOP_DEADLINE_SECONDS, else each "
            "wait ends after 1 h",
        )
        if mode == "backfill":
            p.add_argument("--end", required=True, type=_parse_time, help="exclusive end")
        else:
            p.add_argument(
                "--clock",
                type=_parse_time,
                metavar="TIME",
                help="what worker 0 takes for 'now' when the job has no start "
                "(no JOB_START, not from a CronJob); default: its clock",
            )
    args = parser.parse_args(argv)
    if args.mode == "backfill" and args.end <= DATASET_START:
        parser.error(f"--end must be after the dataset's start, {DATASET_START.isoformat()}")
    try:
        # With --deadline the policy has its own deadline, which wins over the environment's;
        # without it, $ICECHUNK_COOP_DEADLINE_SECONDS (when set) decides how long waits last.
        policy = (
            WaitPolicy(max_interval=args.max_poll)
            if args.deadline is None
            else WaitPolicy.for_deadline(args.deadline, max_interval=args.max_poll)
        )
    except ConfigurationError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    level = os.environ.get("ICECHUNK_COOP_LOG_LEVEL", "INFO").upper()  # from run-local -v/-q
    for name in ("icechunk_coop", "pipeline_forecast"):
        logging.getLogger(name).setLevel(level)
    dataset = PipelineForecast(
        repo_url=args.repo,
        replica_urls=args.replica,
        zarr_primary=args.zarr_primary,
        policy=policy,
    )
    try:
        if args.mode == "backfill":
            outcome = dataset.backfill(end=args.end, rendezvous_url=args.rendezvous)
        else:
            outcome = dataset.update(rendezvous_url=args.rendezvous, clock=args.clock)
    except CoopError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        # Exit 1 when the pod's retry may well succeed, 2 when it cannot.
        return 1 if exc.retryable else EXIT_NOT_RETRYABLE
    results = outcome.result or []
    start = outcome.job_start.isoformat() if outcome.job_start else "unknown"
    print(
        f"worker {outcome.worker_index}: {outcome.status}; job_start {start}; "
        f"{len(results)} region job{'' if len(results) == 1 else 's'}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
