"""The thin adapter for dynamical.org-style datasets: only the job loop.

A dataset used to loop over its region jobs on one worker, committing as it
went. With this adapter ``backfill`` and ``update`` both call
:meth:`DynamicalDataset.process_region_jobs`, which is
:func:`icechunk_coop.run_region_jobs` with the dataset's hooks:

1. on worker 0, the *whole* job list is built once (``get_jobs`` for a
   backfill, ``operational_update_jobs`` for an update, which may read the
   dataset as it is now) and pinned in the setup for every worker; then the
   stores are expanded (arrays created, the append dimension grown) inside
   the job's fork, so no reader sees it yet;
2. on every worker, its share of that list is ``process``ed into the primary
   and replica stores;
3. on the last worker, every job's result (in job order) goes to
   :meth:`DynamicalDataset.write_final_metadata`, an update is refused if it
   would shrink what readers see, and the job commits once.

How the workers coordinate is :mod:`icechunk_coop.protocol._cooperative`'s business; a
dataset supplies stores, jobs and metadata, nothing more.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, Required, TypedDict, Unpack

import attrs
import zarr
import zarr.abc.store

from icechunk_coop.errors import ConfigurationError, ShrinkRefusedError
from icechunk_coop.identity._worker import WorkerIdentity
from icechunk_coop.jobs._loop import Loop, run_region_jobs
from icechunk_coop.protocol._cooperative import CooperativeJob, WorkerOutcome
from icechunk_coop.rendezvous._waiting import WaitPolicy
from icechunk_coop.targets._targets import IcechunkTarget, Stores, Target, ZarrTarget
from icechunk_coop.targets._zarr_staging import open_zarr_store

__all__ = [
    "DynamicalDataset",
    "JobOptions",
    "Mode",
    "RegionJob",
    "ShrinkRefusedError",
]

log = logging.getLogger(__name__)

Mode = Literal["backfill", "update"]
Store = zarr.abc.store.Store


class RegionJob(abc.ABC):
    """One unit of work: a region of the dataset, written into every store.

    Subclasses say which jobs exist (``get_jobs`` for a backfill,
    ``operational_update_jobs`` for an update), the whole list, and how one
    is processed. The list is built once, on worker 0, and pinned for every
    worker, so it may depend on what the dataset holds now; it must not
    depend on the clock but through ``job_start``, which every pod shares.
    """

    @abc.abstractmethod
    def process(self, primary_store: Store, replica_stores: Sequence[Store]) -> Any:
        """Write this region's chunks into every store; return a picklable result."""

    @classmethod
    @abc.abstractmethod
    def get_jobs(cls, dataset: Any, *, end: datetime) -> Sequence[RegionJob]:
        """Every job of a backfill up to ``end``."""

    @classmethod
    @abc.abstractmethod
    def operational_update_jobs(cls, dataset: Any, *, job_start: datetime) -> Sequence[RegionJob]:
        """Every job of an operational update started at ``job_start``.

        Read the dataset here to resume from the last step present: this runs
        once, on worker 0, and its answer is every worker's.
        """


class JobOptions(TypedDict, total=False):
    """How a dataset's job meets: what :meth:`CooperativeJob.create` takes besides targets."""

    rendezvous_url: Required[str]
    identity: WorkerIdentity | None
    policy: WaitPolicy | None
    storage_options: Mapping[str, Any] | None
    environ: Mapping[str, str] | None
    decide_start: Callable[[], datetime] | None
    job_start: Callable[[], datetime] | None  # deprecated: decide_start
    commit_attempts: int


class DynamicalDataset(abc.ABC):
    """A dataset updated by many workers at once, committed once per job.

    Subclasses set ``region_job_class`` and implement ``primary``,
    ``replicas``, ``expand``, ``append_dim_length`` and
    ``write_final_metadata``; ``backfill`` and ``update`` come from here.
    """

    region_job_class: ClassVar[type[RegionJob]]
    append_dim: ClassVar[str]

    @abc.abstractmethod
    def primary(self) -> Target:
        """The primary: an Icechunk repository or a plain zarr v3 store (committed last)."""

    def replicas(self) -> Sequence[Target]:
        """Icechunk repositories or plain zarr v3 stores, committed before the primary."""
        return ()

    @abc.abstractmethod
    def expand(self, stores: Stores, *, end: datetime, mode: Mode) -> None:
        """Structural changes on worker 0: create the arrays, grow ``append_dim`` to ``end``."""

    @abc.abstractmethod
    def append_dim_length(self, store: Store) -> int:
        """Length of ``append_dim`` in ``store`` (what readers of it see); 0 if absent."""

    @abc.abstractmethod
    def write_final_metadata(self, stores: Stores, results: list[Any], *, mode: Mode) -> None:
        """On the last worker: e.g. trim ``append_dim`` to what the jobs really processed."""

    def update_end(self, job_start: datetime) -> datetime:
        """How far an update started at ``job_start`` grows the append dimension."""
        return job_start

    def commit_message(self, *, mode: Mode, end: datetime) -> str:
        """The commit's message, made on the last worker after ``write_final_metadata``."""
        return f"{type(self).__name__} {mode} to {end.isoformat()}"

    # ---- the loop -------------------------------------------------------------

    def cooperative_job(self, **options: Unpack[JobOptions]) -> CooperativeJob:
        """This worker's :class:`CooperativeJob` for the dataset's targets.

        ``storage_options`` go to the rendezvous filesystem (s3fs, gcsfs);
        ``environ`` replaces ``os.environ`` for identity and secret;
        ``decide_start`` decides the start when the environment gives none.
        """
        return CooperativeJob.create(primary=self.primary(), replicas=self.replicas(), **options)

    def backfill(self, *, end: datetime, **options: Unpack[JobOptions]) -> WorkerOutcome:
        """Write every region up to ``end``; ``options`` as for :meth:`cooperative_job`."""
        return self.process_region_jobs(
            self.cooperative_job(**options),
            mode="backfill",
            end=lambda: end,
            jobs=lambda: self.region_job_class.get_jobs(self, end=end),
        )

    def update(self, **options: Unpack[JobOptions]) -> WorkerOutcome:
        """The operational update for the job's start; ``options`` as for :meth:`cooperative_job`.

        The start is the environment's (``JOB_START``, a CronJob's job name) or,
        when it gives none, the one worker 0 decides and pins for every worker.
        """
        primary = self.primary()
        if isinstance(primary, IcechunkTarget):
            # Refused in the setup, inside the job, so every worker stops with it.
            primary = attrs.evolve(primary, create=False)
        job = CooperativeJob.create(primary=primary, replicas=self.replicas(), **options)

        def start() -> datetime:
            assert job.job_start is not None, "pinned by the setup before any hook runs"
            return job.job_start

        def jobs() -> Sequence[RegionJob]:
            # On worker 0, in the setup: a failure here stops every worker.
            self._require_repository(job.job_id)
            return self.region_job_class.operational_update_jobs(self, job_start=start())

        return self.process_region_jobs(
            job, mode="update", end=lambda: self.update_end(start()), jobs=jobs
        )

    def process_region_jobs(
        self,
        job: CooperativeJob,
        *,
        mode: Mode,
        end: Callable[[], datetime],
        jobs: Callable[[], Sequence[RegionJob]],
    ) -> WorkerOutcome:
        """Fork, process this worker's share of ``jobs()``; the last worker merges and commits.

        ``end`` and ``jobs`` are called inside the hooks: by then the job's start
        is pinned, whoever decided it. ``jobs`` is called once, on worker 0.
        """
        identity = job.identity
        visible: list[int] = []

        def prepare(stores: Stores, loop: Loop) -> None:
            n = len(loop.jobs)
            log.info("%s %s up to %s: %d region job%s", type(self).__name__, mode,
                     end().isoformat(), n, "" if n == 1 else "s")  # fmt: skip
            self.expand(stores, end=end(), mode=mode)

        def finalize(stores: Stores, loop: Loop, results: list[Any]) -> None:
            self.write_final_metadata(stores, results, mode=mode)
            if mode == "update":
                if not visible:
                    visible.append(self._visible_length())
                final = self.append_dim_length(stores.primary)
                if final < visible[0]:
                    raise ShrinkRefusedError(
                        job=identity.job_id,
                        dimension=self.append_dim,
                        visible=visible[0],
                        final=final,
                    )

        return run_region_jobs(
            job,
            lambda _: jobs(),
            prepare=prepare,
            finalize=finalize,
            message=lambda: self.commit_message(mode=mode, end=end()),
        )

    def _require_repository(self, job_id: str) -> None:
        """An update extends data that exists: a typo in a URL must not start a new dataset."""
        target = self.primary()
        try:
            _readers_store(target)
        except Exception as exc:  # icechunk and zarr raise several kinds for "not there"
            where = target.location if isinstance(target, IcechunkTarget) else target.url
            raise ConfigurationError(
                f"job {job_id!r}: no dataset at {where} ({type(exc).__name__}); "
                "an update extends an existing dataset: check the URL, or run a backfill first"
            ) from exc

    def _visible_length(self) -> int:
        try:
            store = _readers_store(self.primary())
        except Exception:  # no repository or store yet: readers see nothing
            return 0
        return self.append_dim_length(store)


def _readers_store(target: Target) -> Store:
    """The primary as its readers see it now; raises when there is no dataset."""
    if isinstance(target, ZarrTarget):
        store = open_zarr_store(target)
        zarr.open_group(store, mode="r")  # a plain store has a dataset once its root is there
        return store
    return target.open(create=False).readonly_session(target.branch).store
