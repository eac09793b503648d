"""The cooperative-write protocol: N workers, one atomic, conflict-checked commit.

The flow (one job, N workers, every step idempotent)::

    worker 0          setup: fork every target at its tip S0, let the user
                      make structural changes (create, resize) in the fork,
                      publish SETUP once (put-if-absent).
    every worker      work: wait for SETUP, write its chunks into its own
                      fork, publish RESULT[i] (its forks and its value).
    worker N-1        finalize: wait for every RESULT and pin them as PLAN
                      (so a restarted finalizer commits the very same
                      results), merge on S0, write final metadata, rebase
                      over whatever landed since with conflict detection
                      (every target first), then commit replicas and, last,
                      the primary, each by compare-and-set; then COMMITTED
                      and cleanup.

Each step lives in a module of its own (``_start``, what a worker reads
before it acts, all at once; ``_setup``, ``_work``, ``_finalize``); each
kind of target has a driver (``_drivers``); finding a job's own commit is
the ledger's (``_ledger``). A one-worker job runs the
same steps with an in-process meeting point. ``CooperativeJob.run`` is the
sequence; the functions at the end of this module are the same steps for
callers who drive them one by one.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import attrs

from icechunk_coop.errors import ConfigurationError
from icechunk_coop.identity._worker import WorkerIdentity
from icechunk_coop.protocol import _commit, _crash, _finalize, _setup, _start, _work
from icechunk_coop.protocol._context import (
    Done,
    JobContext,
    Markers,
    StepClock,
    failure_markers,
    meeting_for,
)
from icechunk_coop.protocol._finalize import Finalize, Merged, Message
from icechunk_coop.protocol._setup import Prepare
from icechunk_coop.protocol._work import Forks
from icechunk_coop.rendezvous._meeting import MeetingPoint
from icechunk_coop.rendezvous._waiting import WaitPolicy
from icechunk_coop.targets import driver_for
from icechunk_coop.targets._targets import Stores, Target
from icechunk_coop.wire._ledger import DEFAULT_SCAN
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, SETUP, Setup, result_name

__all__ = ["CooperativeJob", "Forks", "Merged", "WorkerOutcome", "result_name"]

log = logging.getLogger("icechunk_coop.protocol")

Work = Callable[[Stores], Any]


@attrs.frozen(kw_only=True)
class WorkerOutcome:
    """What one worker did: its result, and for the last worker the snapshots committed.

    ``status`` is ``"committed"`` on the worker that finished the job, also
    when the job changed nothing: a target whose merge holds no change (no
    worker wrote to it, ``finalize`` left it alone) gets no snapshot at all
    rather than an empty one, is absent from ``snapshots`` and is named in
    ``unchanged``. The job is done either way: its ``committed`` marker is
    published, so late pods and ``status`` find it finished.
    """

    job_id: str
    worker_index: int
    status: Literal["published", "committed", "already-committed"]
    result: Any = None
    snapshots: Mapping[str, str] = attrs.field(factory=dict)
    seconds: Mapping[str, float] = attrs.field(factory=dict)
    job_start: datetime | None = None
    unchanged: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class CooperativeJob:
    """One worker's handle on a cooperative write. Build it with :meth:`create`.

    ``primary`` is committed last; ``replicas`` (Icechunk or plain zarr v3)
    before it, in the order given. ``cleanup`` removes the job's rendezvous
    blobs after the commit (a small ``committed`` marker stays so a late
    retry finds the job done; ``icechunk-coop clean`` removes those).
    ``ancestry_scan`` bounds how far back a job that lost its setup looks for
    its own commit.
    """

    identity: WorkerIdentity
    meeting: MeetingPoint
    primary: Target
    replicas: tuple[Target, ...] = ()
    cleanup: bool = True
    commit_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    ancestry_scan: int = attrs.field(default=DEFAULT_SCAN, validator=attrs.validators.ge(1))
    decide_start: Callable[[], datetime] | None = attrs.field(default=None, eq=False)
    _ctx: JobContext = attrs.field(init=False, repr=False, eq=False)
    _warming: _start.Warming | None = attrs.field(init=False, repr=False, eq=False, default=None)

    def __attrs_post_init__(self) -> None:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"target names must be unique, got {names}")
        if self.meeting.job_id != self.identity.job_id:
            raise ConfigurationError(
                f"the meeting point is for job {self.meeting.job_id!r}, "
                f"identity says {self.identity.job_id!r}"
            )
        me = self.identity
        run_start = me.job_start.isoformat() if me.job_uid is None and me.job_start else None
        drivers = tuple(
            driver_for(
                t,
                job_id=self.job_id,
                meeting=self.meeting,
                scan=self.ancestry_scan,
                run_start=run_start,
            )
            for t in self.targets
        )
        ctx = JobContext(
            identity=self.identity,
            meeting=self.meeting,
            drivers=drivers,
            cleanup=self.cleanup,
            commit_attempts=self.commit_attempts,
        )
        if self.decide_start is not None:
            ctx = attrs.evolve(ctx, decide_start=self.decide_start)
        object.__setattr__(self, "_ctx", ctx)
        if ctx.meeting.stored:  # a one-worker job reads nothing before it acts
            object.__setattr__(self, "_warming", _start.warm(ctx))

    @classmethod
    def create(
        cls,
        *,
        rendezvous_url: str,
        primary: Target,
        replicas: Sequence[Target] = (),
        identity: WorkerIdentity | None = None,
        storage_options: Mapping[str, Any] | None = None,
        policy: WaitPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        cleanup: bool = True,
        commit_attempts: int = 3,
        decide_start: Callable[[], datetime] | None = None,
        job_start: Callable[[], datetime] | None = None,
    ) -> CooperativeJob:
        """This worker's job: identity and secret from the environment unless given.

        A one-worker job meets in its own memory: it exchanges nothing through
        ``rendezvous_url`` and needs no secret. A job of more workers refuses
        to run unsealed (``ICECHUNK_COOP_INSECURE``) unless every target and the
        rendezvous are on this machine: an unsealed session would expose its
        storage configuration, and anyone who can write could plant a pickle.

        ``decide_start`` decides the job's start when the environment gives
        none (no ``JOB_START``, a Job made by hand from a CronJob): worker 0
        calls it once (default: its clock, in UTC) and pins the answer in the
        setup, and every other worker takes it from there. The start itself
        is :attr:`job_start`. (``job_start=`` is the old name of
        ``decide_start``: it still works, with a ``DeprecationWarning``.)
        """
        if job_start is not None:
            if decide_start is not None:
                raise ConfigurationError(
                    "CooperativeJob.create got decide_start and job_start: pass decide_start only"
                )
            warnings.warn(
                "CooperativeJob.create(job_start=...) is now decide_start=...: job_start names "
                "the start itself (CooperativeJob.job_start); the old keyword goes in 0.3",
                DeprecationWarning,
                stacklevel=2,
            )
            decide_start = job_start
        env = os.environ if environ is None else environ
        identity = identity or WorkerIdentity.from_env(env)
        meeting = meeting_for(
            identity,
            rendezvous_url=rendezvous_url,
            targets=(*replicas, primary),
            storage_options=storage_options,
            policy=policy,
            environ=env,
        )
        return cls(
            identity=identity,
            meeting=meeting,
            primary=primary,
            replicas=tuple(replicas),
            cleanup=cleanup,
            commit_attempts=commit_attempts,
            decide_start=decide_start,
        )

    @property
    def job_start(self) -> datetime | None:
        """The job's start in UTC: the environment's, or the one pinned in the setup.

        Known from the start when the environment gives it; otherwise once the
        setup is published (worker 0, before ``prepare``) or loaded (the others,
        before ``work``): read it inside the hooks.
        """
        return self._ctx.pinned.start or self.identity.job_start

    @property
    def decision(self) -> Any:
        """What worker 0's ``prepare`` returned, the same on every worker (None before the setup).

        For what must not be computed twice: a job list read from the dataset
        as it is now, say. Worker 0 computes it once, the setup pins it, every
        worker (and any restart) reads it from there. Read it inside the hooks.
        """
        return self._ctx.pinned.decision

    @property
    def targets(self) -> tuple[Target, ...]:
        """Commit order: replicas first, the primary last."""
        return (*self.replicas, self.primary)

    @property
    def job_id(self) -> str:
        return self.identity.job_id

    def committed_snapshot(self) -> tuple[bool, str | None]:
        """Whether this job is committed, and the primary's snapshot holding it.

        Two answers, because a job that changed nothing is committed with no
        snapshot (``(True, None)``). The ``committed`` marker answers first;
        without it the primary's history is searched down to the job's base
        (from the setup, when it is still there).
        """
        ctx = self._ctx
        marker = ctx.meeting.read(COMMITTED, Committed)
        if marker is not None:
            return True, marker.snapshots.get(ctx.primary.name)
        setup = ctx.meeting.read(SETUP, Setup)
        base = setup.targets[ctx.primary.name].base if setup else None
        found = ctx.primary.find_commit(base)
        return found is not None, found

    def is_committed(self) -> bool:
        """True when this job is committed already (a late retry): ``committed_snapshot()[0]``."""
        return self.committed_snapshot()[0]

    def run(
        self,
        *,
        work: Work,
        message: Message,
        prepare: Prepare | None = None,
        finalize: Finalize | None = None,
    ) -> WorkerOutcome:
        """Do this worker's part of the job, whatever its index.

        ``prepare(stores)`` runs on worker 0 only: create arrays, grow the
        append dimension; what it returns (any picklable value) is pinned in
        the setup for every worker as :attr:`decision`. ``work(stores)`` runs
        on every worker, writes chunks only, and returns a result of any
        picklable type (it travels inside a sealed frame, like the forks).
        ``finalize(stores,
        results)`` runs on the last worker after the merge, with every result
        in index order: write final metadata there. ``message`` may be a
        callable, called at commit time (when the job's start is pinned).
        """
        with failure_markers(self._ctx) as markers:
            outcome = self._steps(markers, work, message, prepare, finalize)
        if isinstance(outcome, Done):  # a twin, or an earlier attempt, finished the job
            return self._already_committed(outcome.snapshot)
        return outcome

    def _steps(
        self,
        markers: Markers,
        work: Work,
        message: Message,
        prepare: Prepare | None,
        finalize: Finalize | None,
    ) -> WorkerOutcome | Done:
        """:meth:`run`'s steps; :class:`Done` as soon as one finds the job committed."""
        ctx, me, clock = self._ctx, self.identity, StepClock()
        with clock.step("setup"):
            start = _start.begin(ctx, self._warming)
            if start.committed:
                return Done(snapshot=start.snapshot)
            _crash.reach("started")
            setup = _setup.setup(ctx, prepare, start)
            if isinstance(setup, Done):
                return setup
        markers.setup_published = True
        plan = _finalize.checked_plan(ctx, setup, start.plan) if me.is_last else None
        if plan is not None:
            # A finalizer before us pinned what to commit: finish that, redo nothing.
            log.info("%s: finishing the commit an earlier attempt began", ctx.where)
            results, streamed = list(plan.results), None
        else:
            # The last worker opens its merges while it works: off the critical path.
            opening = _finalize.open_merges_ahead(ctx, setup) if me.is_last else None
            try:
                with clock.step("work"):
                    forks = _work.open_forks(ctx, setup)
                    value = work(forks.stores)
                result = _work.result_of(ctx, forks, value, clock.spans)
                _work.publish_result(ctx, result)
            except BaseException:
                if opening is not None:
                    opening.discard()
                raise
            if not me.is_last:
                return self._outcome("published", result.value, clock)
            with clock.step("wait"):
                collected = _finalize.collect_and_merge(ctx, setup, opening)
            if isinstance(collected, Done):
                return collected
            results, streamed = collected
        with clock.step("commit"):
            merged: Merged | None = None
            if streamed is None:  # finishing a pinned plan: commit merges it
                pinned = _finalize.pin_plan(ctx, setup, results)
                if isinstance(pinned, Done):
                    return pinned
            else:
                pinned_merge = _finalize.pin_and_merge(ctx, setup, results, streamed)
                if isinstance(pinned_merge, Done):
                    return pinned_merge
                merged, pinned = pinned_merge, pinned_merge.plan
                if finalize is not None:
                    finalize(merged.stores, merged.results)
            snapshots = _commit.commit(
                ctx, setup, pinned, message=message, finalize=finalize, merged=merged
            )
            if isinstance(snapshots, Done):
                return snapshots
        timeline = {r.index: r.timeline for r in pinned}
        timeline[me.worker_index] = {**timeline.get(me.worker_index, {}), **clock.spans}
        _commit.after_commit(ctx, snapshots, timeline)
        return self._outcome("committed", pinned[me.worker_index].value, clock, snapshots)

    def _outcome(
        self,
        status: Literal["published", "committed"],
        value: Any,
        clock: StepClock,
        snapshots: Mapping[str, str] | None = None,
    ) -> WorkerOutcome:
        snapshots = dict(snapshots or {})
        unchanged = () if status != "committed" else tuple(
            t.name for t in self.targets if t.name not in snapshots
        )  # fmt: skip
        return WorkerOutcome(
            job_id=self.job_id,
            worker_index=self.identity.worker_index,
            status=status,
            result=value,
            snapshots=snapshots,
            seconds=dict(clock.seconds),
            job_start=self.job_start,
            unchanged=unchanged,
        )

    def _already_committed(self, found: str | None) -> WorkerOutcome:
        log.info("%s: the job already committed; nothing to do", self._ctx.where)
        if found is not None:
            # Found on the primary, not from the marker: its finalizer may have died
            # between the commit and the cleanup. Finish that (it is idempotent).
            _commit.after_commit(self._ctx, {self.primary.name: found})
        else:
            # The marker is out; its finalizer may have died before the cleanup.
            _commit.clean_up(self._ctx)
        return WorkerOutcome(
            job_id=self.job_id, worker_index=self.identity.worker_index, status="already-committed"
        )
