"""The thin adapter for dynamical.org-style datasets: only the job loop.

A dataset used to loop over its region jobs on one worker, committing as it
went. With this adapter ``backfill`` and ``update`` both call
:meth:`DynamicalDataset.process_region_jobs`, which

1. on worker 0, expands the stores (creates arrays, grows the append
   dimension) inside the job's fork, so no reader sees it yet;
2. on every worker, derives the *same* job list from the same inputs
   (``end`` for a backfill, the job's ``job_start`` for an update; never the
   pod's clock), takes its own share, and ``process``es each job into the
   primary and replica stores;
3. on the last worker, hands every job's result (in order) to
   :meth:`DynamicalDataset.write_final_metadata` and commits once.

How the workers coordinate is entirely :mod:`icechunk_coop.cooperative`'s
business; a dataset supplies stores, jobs and metadata, nothing more.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, Required, TypedDict, Unpack

import attrs
import zarr.abc.store

from icechunk_coop._errors import ConfigurationError, ShrinkRefusedError
from icechunk_coop._identity import WorkerIdentity
from icechunk_coop._targets import IcechunkTarget, Stores, Target
from icechunk_coop._waiting import WaitPolicy
from icechunk_coop.cooperative import CooperativeJob, WorkerOutcome

__all__ = [
    "DynamicalDataset",
    "JobOptions",
    "Mode",
    "RegionJob",
    "ShrinkRefusedError",
    "worker_share",
]

log = logging.getLogger(__name__)

Mode = Literal["backfill", "update"]
Store = zarr.abc.store.Store


def worker_share[T](jobs: Sequence[T], worker_index: int, workers_total: int) -> list[T]:
    """This worker's contiguous, balanced slice of ``jobs`` (sizes differ by at most one).

    Contiguous, not round-robin: at any moment the workers are spread over
    the whole append dimension instead of all hitting the same stretch of
    source files (and the same few output chunks) together.
    """
    if not 0 <= worker_index < workers_total:
        raise ConfigurationError(
            f"worker_index={worker_index} is out of range for workers_total={workers_total}"
        )
    n = len(jobs)
    return list(jobs[worker_index * n // workers_total : (worker_index + 1) * n // workers_total])


class RegionJob(abc.ABC):
    """One unit of work: a region of the dataset, written into every store.

    Subclasses say which jobs exist (``get_jobs`` for a backfill,
    ``operational_update_jobs`` for an update) and how one is processed.
    Every pod of a job calls these with the same arguments and must get the
    same list: that is why ``job_start`` is passed in and not read from a
    clock. Use :func:`worker_share` to take this worker's part.
    """

    @abc.abstractmethod
    def process(self, primary_store: Store, replica_stores: Sequence[Store]) -> Any:
        """Write this region's chunks into every store; return a JSON-serialisable result."""

    @classmethod
    @abc.abstractmethod
    def get_jobs(
        cls, dataset: Any, *, end: datetime, worker_index: int, workers_total: int
    ) -> Sequence[RegionJob]:
        """This worker's jobs of a backfill up to ``end``."""

    @classmethod
    @abc.abstractmethod
    def operational_update_jobs(
        cls, dataset: Any, *, worker_index: int, workers_total: int, job_start: datetime
    ) -> Sequence[RegionJob]:
        """This worker's jobs of an operational update started at ``job_start``."""


@attrs.define(kw_only=True)
class _Progress:
    """Log lines a person can follow for a long job loop: n/N, rate, time left."""

    identity: WorkerIdentity
    total: int
    started: float = attrs.field(factory=time.monotonic)
    done: int = 0
    last: float = 0.0

    def step(self, label: str) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self.last >= 2.0:
            self.last = now
            elapsed = now - self.started
            left = elapsed / self.done * (self.total - self.done)
            log.info(
                "worker %d/%d: %d/%d region jobs (%s) %.1fs elapsed, ~%.0fs left",
                self.identity.worker_index,
                self.identity.workers_total,
                self.done,
                self.total,
                label,
                elapsed,
                left,
            )


class JobOptions(TypedDict, total=False):
    """How a dataset's job meets: what :meth:`CooperativeJob.create` takes besides targets."""

    rendezvous_url: Required[str]
    identity: WorkerIdentity | None
    policy: WaitPolicy | None
    storage_options: Mapping[str, Any] | None
    environ: Mapping[str, str] | None
    job_start: Callable[[], datetime] | None
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
    def primary(self) -> IcechunkTarget:
        """The primary Icechunk repository (committed last)."""

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

    # ---- the loop -------------------------------------------------------------

    def cooperative_job(self, **options: Unpack[JobOptions]) -> CooperativeJob:
        """This worker's :class:`CooperativeJob` for the dataset's targets.

        ``storage_options`` go to the rendezvous filesystem (s3fs, gcsfs);
        ``environ`` replaces ``os.environ`` for identity and secret;
        ``job_start`` decides the start when the environment gives none.
        """
        return CooperativeJob.create(primary=self.primary(), replicas=self.replicas(), **options)

    def backfill(self, *, end: datetime, **options: Unpack[JobOptions]) -> WorkerOutcome:
        """Write every region up to ``end``; ``options`` as for :meth:`cooperative_job`."""
        job = self.cooperative_job(**options)
        me = job.identity
        return self.process_region_jobs(
            job,
            mode="backfill",
            end=lambda: end,
            jobs=lambda: self.region_job_class.get_jobs(
                self, end=end, worker_index=me.worker_index, workers_total=me.workers_total
            ),
        )

    def update(self, **options: Unpack[JobOptions]) -> WorkerOutcome:
        """The operational update for the job's start; ``options`` as for :meth:`cooperative_job`.

        The start is the environment's (``JOB_START``, a CronJob's job name) or,
        when it gives none, the one worker 0 decides and pins for every worker.
        """
        job = self.cooperative_job(**options)
        me = job.identity
        if me.is_first and not job.is_committed():
            self._require_repository(job.job_id)

        def start() -> datetime:
            assert job.job_start is not None, "pinned by the setup before any hook runs"
            return job.job_start

        return self.process_region_jobs(
            job,
            mode="update",
            end=lambda: self.update_end(start()),
            jobs=lambda: self.region_job_class.operational_update_jobs(
                self,
                worker_index=me.worker_index,
                workers_total=me.workers_total,
                job_start=start(),
            ),
        )

    def process_region_jobs(
        self,
        job: CooperativeJob,
        *,
        mode: Mode,
        end: Callable[[], datetime],
        jobs: Callable[[], Sequence[RegionJob]],
    ) -> WorkerOutcome:
        """Fork, process this worker's jobs, publish; the last worker merges and commits.

        ``end`` and ``jobs`` are called inside the hooks: by then the job's start
        is pinned, whoever decided it.
        """
        identity = job.identity
        visible: list[int] = []

        def prepare(stores: Stores) -> None:
            self.expand(stores, end=end(), mode=mode)

        def work(stores: Stores) -> list[Any]:
            mine = list(jobs())
            log.info(
                "worker %d/%d: %d region job%s (%s up to %s)",
                identity.worker_index,
                identity.workers_total,
                len(mine),
                "" if len(mine) == 1 else "s",
                mode,
                end().isoformat(),
            )
            progress = _Progress(identity=identity, total=len(mine))
            results = []
            for region_job in mine:
                results.append(region_job.process(stores.primary, list(stores.replicas)))
                progress.step(str(region_job)[:60])
            return results

        def finalize(stores: Stores, per_worker: list[Any]) -> None:
            flat = [r for worker_results in per_worker for r in worker_results]
            self.write_final_metadata(stores, flat, mode=mode)
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

        return job.run(
            work=work,
            prepare=prepare,
            finalize=finalize,
            message=lambda: f"{type(self).__name__} {mode} to {end().isoformat()}",
        )

    def _require_repository(self, job_id: str) -> None:
        """An update extends data that exists: a typo in a URL must not start a new dataset."""
        target = self.primary()
        try:
            target.open(create=False)
        except Exception as exc:  # icechunk raises several kinds for "not there"
            raise ConfigurationError(
                f"job {job_id!r}: no repository at {target.location} ({type(exc).__name__}); "
                "an update extends an existing dataset: check the URL, or run a backfill first"
            ) from exc

    def _visible_length(self) -> int:
        target = self.primary()
        try:
            repo = target.open(create=False)
        except Exception:  # no repository yet: readers see nothing
            return 0
        return self.append_dim_length(repo.readonly_session(target.branch).store)
