"""A synthetic gridded forecast, written by many workers into one Icechunk commit.

Run it exactly as a pod would: the worker's identity comes from the
environment (``JOB_COMPLETION_INDEX``, ``WORKERS_TOTAL``, ``JOB_NAME``, ...;
see ``icechunk_coop.WorkerIdentity.from_env``)::

    python examples/synthetic_forecast.py backfill --end 2025-01-03T00:00Z \\
        --repo s3://bucket/forecast --rendezvous s3://bucket/rendezvous
    python examples/synthetic_forecast.py update \\
        --repo s3://bucket/forecast --rendezvous s3://bucket/rendezvous

The dataset: init_time (the append dimension, every 6 hours from
2025-01-01T00Z) x lead_time (0-48 h, 3-hourly) x latitude x longitude, three
variables, one chunk per init time and variable. A region job is one init
time: it "downloads" its source (``--source-latency`` seconds of simulated
waiting) and computes deterministic values, so any number of workers produce
the same arrays. The latency is the worker's, not the job's: the job list is
pinned in the setup, so a resumed run (``icechunk-coop run-local --resume``)
processes the same jobs at its own workers' speed.

A forecast's source is published 4 hours after its init time; an update at
``job_start`` resumes from the last init time present (however long ago),
grows init_time to the latest init time not after ``job_start`` and trims
back to the last one whose source it found. Its job list is read from the
dataset once, by worker 0, and pinned for every worker.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import attrs
import numpy as np
import zarr

from icechunk_coop import (
    ConfigurationError,
    CoopError,
    IcechunkTarget,
    Stores,
    WaitPolicy,
    WorkerIdentity,
    ZarrTarget,
    icechunk_storage,
)
from icechunk_coop.dynamical import DynamicalDataset, Mode, RegionJob, Store

DATASET_START = datetime(2025, 1, 1, tzinfo=UTC)
INIT_STEP = timedelta(hours=6)
PUBLICATION_DELAY = timedelta(hours=4)
LEAD_TIMES_H = np.arange(0, 49, 3)
LATITUDES = np.linspace(60.0, 20.0, 41)
LONGITUDES = np.linspace(-130.0, -60.0, 71)
VARIABLES = {
    "temperature_2m": ("degC", 15.0),
    "precipitation_surface": ("mm/h", 0.5),
    "wind_u_10m": ("m/s", 3.0),
}
UPDATE_LOOKBACK = 4  # an update reprocesses the last few init times as sources fill in

log = logging.getLogger("synthetic_forecast")


@attrs.define
class Source:
    """Where this worker "downloads" from: set by ``--source-latency``, never pinned.

    Region jobs travel in the setup for every worker and every later run of
    the job; how slow a download is belongs to the process doing it, so it
    is kept here rather than in the job.
    """

    latency: float = 0.0

    def download(self) -> None:
        time.sleep(self.latency)


SOURCE = Source()


@functools.cache
def _start_importing_xarray() -> None:
    """Import xarray on a thread, once: the first job overlaps it with its download.

    xarray and pandas cost a worker about half a second of CPU to import (two
    seconds on a busy node). Not imported at the top: a worker whose sources
    are all missing (or that only finalizes a pinned plan) never needs them.
    The job's own ``import`` waits for the thread's (Python's import lock) or
    finds it done; a failed import is left for it to raise.
    """

    def run() -> None:
        with contextlib.suppress(ImportError):
            import xarray  # noqa: F401

    threading.Thread(target=run, name="import-xarray", daemon=True).start()


# Bad input, a refused blob, a conflict: running this pod again cannot help. The
# same code as argparse's usage errors, so one podFailurePolicy rule (FailIndex on
# exit code 2) covers both; everything else exits 1 and is retried.
EXIT_NOT_RETRYABLE = 2


def _epoch_hours(t: datetime) -> int:
    return int(t.timestamp() // 3600)


def init_index(t: datetime) -> int:
    """Index along init_time of the latest init time not after ``t``."""
    return int((t - DATASET_START) // INIT_STEP)


def init_time(index: int) -> datetime:
    return DATASET_START + index * INIT_STEP


def forecast_values(init: datetime, variable: str) -> np.ndarray:
    """The 'downloaded' field: deterministic in (init time, variable)."""
    _, scale = VARIABLES[variable]
    phase = _epoch_hours(init) / 24.0 + list(VARIABLES).index(variable)
    lead = LEAD_TIMES_H[:, None, None] / 24.0
    lat = np.deg2rad(LATITUDES)[None, :, None]
    lon = np.deg2rad(LONGITUDES)[None, None, :]
    field = np.sin(lat * 3 + phase + lead) * np.cos(lon * 2 - lead) * scale
    return field.astype("float32")


@attrs.frozen(kw_only=True)
class ForecastRegionJob(RegionJob):
    """One init time of the forecast."""

    index: int
    now: datetime  # the job's start: decides what the source has published

    def __str__(self) -> str:
        return f"init {init_time(self.index):%Y-%m-%dT%HZ}"

    def process(self, primary_store: Store, replica_stores: Sequence[Store]) -> Any:
        init = init_time(self.index)
        _start_importing_xarray()
        SOURCE.download()  # at this worker's speed, whoever built the job list
        if init + PUBLICATION_DELAY > self.now:
            return {"index": self.index, "found": False}
        import xarray as xr  # see _start_importing_xarray

        ds = xr.Dataset(
            {
                name: (
                    ("init_time", "lead_time", "latitude", "longitude"),
                    forecast_values(init, name)[None],
                )
                for name in VARIABLES
            }
        )
        for store in (primary_store, *replica_stores):
            ds.to_zarr(
                store,
                region={"init_time": slice(self.index, self.index + 1)},
                mode="r+",
                consolidated=False,
                zarr_format=3,
            )
        return {"index": self.index, "found": True}

    @classmethod
    def get_jobs(cls, dataset: Any, *, end: datetime) -> Sequence[ForecastRegionJob]:
        # A backfill's "now" is its end: everything before it is published.
        return [
            cls(index=i, now=end + PUBLICATION_DELAY)
            for i in range(init_index(end - INIT_STEP) + 1)
        ]

    @classmethod
    def operational_update_jobs(
        cls, dataset: Any, *, job_start: datetime
    ) -> Sequence[ForecastRegionJob]:
        # From the first init time missing (however long ago), and the last few
        # before it again, as late sources fill in. Read once, on worker 0.
        last, present = init_index(job_start), dataset.present_length()
        first = max(0, min(present, last - UPDATE_LOOKBACK + 1))
        return [cls(index=i, now=job_start) for i in range(first, last + 1)]


@attrs.frozen(kw_only=True)
class SyntheticForecast(DynamicalDataset):
    """The dataset: where it lives and how its metadata grows."""

    region_job_class: ClassVar[type[RegionJob]] = ForecastRegionJob
    append_dim: ClassVar[str] = "init_time"

    repo_url: str
    replica_urls: Sequence[str] = ()
    zarr_replica_urls: Sequence[str] = ()

    def primary(self) -> IcechunkTarget:
        return IcechunkTarget(name="primary", storage=icechunk_storage(self.repo_url))

    def replicas(self) -> Sequence[IcechunkTarget | ZarrTarget]:
        return [
            *(
                IcechunkTarget(name=f"replica{k}", storage=icechunk_storage(url))
                for k, url in enumerate(self.replica_urls)
            ),
            *(ZarrTarget(name=f"zarr{k}", url=url) for k, url in enumerate(self.zarr_replica_urls)),
        ]

    def present_length(self) -> int:
        """How many init times readers of the primary see now (0 without a repository)."""
        try:
            repo = self.primary().open(create=False)
        except Exception:  # icechunk raises several kinds for "not there"
            return 0
        return self.append_dim_length(repo.readonly_session("main").store)

    def append_dim_length(self, store: Store) -> int:
        try:
            return int(zarr.open_array(store, path="init_time", mode="r").shape[0])
        except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
            return 0

    def expand(self, stores: Stores, *, end: datetime, mode: Mode) -> None:
        last = init_index(end if mode == "update" else end - INIT_STEP)
        for store in stores.all:
            root = zarr.open_group(store, mode="a", zarr_format=3)
            if "init_time" not in root:
                _create(root)
            present = int(root["init_time"].shape[0])
            if mode == "backfill" and present > last + 1 and store is stores.primary:
                log.warning(
                    "backfill to %s: the dataset already extends to %s; this job rewrites "
                    "init times up to %s and keeps the %d after them",
                    end.isoformat(), init_time(present - 1).isoformat(),
                    init_time(last).isoformat(), present - last - 1,
                )  # fmt: skip
            length = max(present, last + 1)
            for name in ("init_time", *VARIABLES):
                array = root[name]
                assert isinstance(array, zarr.Array)
                array.resize((length, *array.shape[1:]))
            root["init_time"][:] = [_epoch_hours(init_time(i)) for i in range(length)]

    def write_final_metadata(self, stores: Stores, results: list[Any], *, mode: Mode) -> None:
        found = [r["index"] for r in results if r["found"]]
        missing = [r["index"] for r in results if not r["found"]]
        if missing:
            log.info(
                "%s: %d init time%s had no source yet (%s)%s", mode, len(missing),
                "" if len(missing) == 1 else "s",
                ", ".join(f"{init_time(i):%Y-%m-%dT%HZ}" for i in missing),
                "; trimmed from the end" if max(missing) > max(found, default=-1) else "",
            )  # fmt: skip
        for store in stores.all:
            root = zarr.open_group(store, mode="a", zarr_format=3)
            length = int(root["init_time"].shape[0])
            # Trim trailing init times whose source was not there yet.
            while length > 0 and length - 1 in missing and length - 1 not in found:
                length -= 1
            for name in ("init_time", *VARIABLES):
                array = root[name]
                assert isinstance(array, zarr.Array)
                array.resize((length, *array.shape[1:]))
            root.attrs["last_update"] = {
                "mode": mode,
                "init_times_written": len(found),
                "init_times_missing_source": [init_time(i).isoformat() for i in missing],
                "init_time_end": init_time(length - 1).isoformat() if length else None,
            }


def _create(root: zarr.Group) -> None:
    root.attrs.update(
        {"title": "Synthetic forecast (icechunk-coop example)", "dataset_id": "synthetic-forecast"}
    )
    init = root.create_array(
        "init_time", shape=(0,), chunks=(1024,), dtype="int64", dimension_names=["init_time"]
    )
    init.attrs.update({"units": "hours since 1970-01-01", "calendar": "proleptic_gregorian"})
    for name, values, units in (
        ("lead_time", LEAD_TIMES_H, "hours"),
        ("latitude", LATITUDES, "degrees_north"),
        ("longitude", LONGITUDES, "degrees_east"),
    ):
        coord = root.create_array(
            name, shape=values.shape, dtype=values.dtype, dimension_names=[name]
        )
        coord[:] = values
        coord.attrs["units"] = units
    shape = (0, len(LEAD_TIMES_H), len(LATITUDES), len(LONGITUDES))
    for name, (units, _) in VARIABLES.items():
        array = root.create_array(
            name,
            shape=shape,
            chunks=(1, *shape[1:]),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=["init_time", "lead_time", "latitude", "longitude"],
        )
        array.attrs["units"] = units


def _parse_time(text: str) -> datetime:
    """ISO 8601; without an offset it means UTC, as in numpy, xarray and CF."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 2025-01-03T00:00Z") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("backfill", "update"):
        p = sub.add_parser(mode)
        p.add_argument("--repo", required=True, help="primary Icechunk repo URL")
        p.add_argument("--rendezvous", required=True, help="rendezvous URL")
        p.add_argument("--replica", action="append", default=[], help="Icechunk replica URL")
        p.add_argument("--zarr-replica", action="append", default=[], help="zarr v3 store URL")
        p.add_argument(
            "--source-latency",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="how long each of this worker's downloads takes (not pinned: a resumed "
            "run goes at its own speed)",
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
    # The option wins over the environment: a policy with its own deadline is used as is.
    options: dict[str, Any] = {}
    if args.deadline is not None:
        try:
            options["policy"] = WaitPolicy.for_deadline(args.deadline)
        except ConfigurationError as exc:
            parser.error(f"--deadline: {exc}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # run-local passes its -v / -q on as ICECHUNK_COOP_LOG_LEVEL (DEBUG, INFO, WARNING).
    level = os.environ.get("ICECHUNK_COOP_LOG_LEVEL", "INFO").upper()
    for name in ("icechunk_coop", "synthetic_forecast"):
        logging.getLogger(name).setLevel(level)
    dataset = SyntheticForecast(
        repo_url=args.repo,
        replica_urls=args.replica,
        zarr_replica_urls=args.zarr_replica,
    )
    SOURCE.latency = args.source_latency
    try:
        identity = WorkerIdentity.from_env()
        if args.mode == "backfill":
            outcome = dataset.backfill(
                end=args.end, rendezvous_url=args.rendezvous, identity=identity, **options
            )
        else:
            clock = args.clock
            outcome = dataset.update(
                rendezvous_url=args.rendezvous,
                identity=identity,
                decide_start=(lambda: clock) if clock else None,
                **options,
            )
    except CoopError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        # Exit 1 when the pod's retry may well succeed, 2 when it cannot.
        return 1 if exc.retryable else EXIT_NOT_RETRYABLE
    jobs = outcome.result or []
    print(
        f"worker {identity.worker_index}/{identity.workers_total}: {outcome.status}; "
        f"job_start {outcome.job_start.isoformat() if outcome.job_start else 'unknown'}; "
        f"{len(jobs)} region job{'' if len(jobs) == 1 else 's'}; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.seconds.items())
        + (f"; committed {dict(outcome.snapshots)}" if outcome.snapshots else ""),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
