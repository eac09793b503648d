"""Step 1, setup: worker 0 prepares and publishes once; every other worker waits and loads.

A restarted worker 0 reuses a published setup (and so its base snapshot):
it never re-forks from a branch that moved meanwhile. Two copies of worker 0
race on a put-if-absent and both go on with the one that landed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from icechunk_coop.errors import (
    AlreadyCommittedError,
    ConfigurationError,
    ForeignPayloadError,
    WorkersTotalMismatchError,
)
from icechunk_coop.identity._start import as_utc
from icechunk_coop.protocol import _crash
from icechunk_coop.protocol._context import Done, JobContext, each
from icechunk_coop.protocol._start import Start, clear_own_failures
from icechunk_coop.rendezvous._meeting import StoredMeeting
from icechunk_coop.targets._drivers import Staging
from icechunk_coop.targets._targets import Stores
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, SETUP, Setup

__all__ = ["Prepare", "load_setup", "publish_setup", "setup", "stores_of"]

log = logging.getLogger("icechunk_coop.protocol")

Prepare = Callable[[Stores], Any]


def stores_of(ctx: JobContext, by_name: dict[str, object]) -> Stores:
    """The zarr stores of each target, primary and replicas in their order."""
    *replicas, primary = (by_name[d.name] for d in ctx.drivers)
    return Stores(primary=primary, replicas=tuple(replicas))  # type: ignore[arg-type]


def _decide_start(ctx: JobContext) -> datetime:
    """Worker 0's start for the job: the environment's, else ``decide_start()`` (in UTC)."""
    start = ctx.identity.job_start
    if start is None:
        start = as_utc(ctx.decide_start())
        log.info("%s: no job start in the environment; the job starts at %s", ctx.where,
                 start.isoformat())  # fmt: skip
    return start


def _job_deadline(ctx: JobContext) -> float | None:
    """When this job's waits end (Unix seconds), if worker 0's wait policy says.

    It travels in the setup's public claims so that ``status`` can tell a
    job whose pods were all stopped from one still running. Under a Job
    deadline (``ICECHUNK_COOP_DEADLINE_SECONDS``) the policy's ``ends_at`` is
    that deadline less a margin, counted from this pod's start, which is
    after the Job's: the orchestrator has stopped every pod at most one
    margin after it (``_status`` allows the largest). None for a one-worker
    job (nobody reads its status) and for a policy without an end.
    """
    if not isinstance(ctx.meeting, StoredMeeting):
        return None
    return ctx.meeting.rendezvous.policy.ends_at


def _stage_all(ctx: JobContext) -> dict[str, Staging]:
    """Every target staged at once: the primary and its replicas are independent.

    Staging a target is a few reads (its refs, the ancestry scan); one target
    after another they were that many round trips per replica on worker 0's
    setup, which every other worker waits for.
    """
    staged = each(lambda d: d.stage(primary=d is ctx.primary), ctx.drivers)
    return {d.name: s for d, s in zip(ctx.drivers, staged, strict=True)}


def publish_setup(
    ctx: JobContext, prepare: Prepare | None, existing: Setup | None = None
) -> Setup | Done:
    """Worker 0: stage every target, run ``prepare`` in the forks, publish the setup once.

    ``existing`` is a setup this worker already read at its start, if any.
    """
    if existing is not None:
        log.info("%s: reusing the setup already published", ctx.where)
        return existing
    staging = _stage_all(ctx)
    ctx.pinned.start = start = _decide_start(ctx)
    _crash.reach("before-prepare")
    decision = None
    if prepare is not None:
        log.info("%s: preparing (structural changes)", ctx.where)
        try:
            decision = prepare(stores_of(ctx, {name: s.store for name, s in staging.items()}))
        except Exception:
            # The scan for the job's own commit runs beside prepare: on a job a twin
            # finished meanwhile, prepare may fail (its arrays exist); that is no error.
            for staged in staging.values():
                staged.check()
            raise
    _crash.reach("after-prepare")
    record = Setup(
        token=uuid.uuid4().hex,
        job=ctx.job_id,
        workers_total=ctx.identity.workers_total,
        job_start=start.isoformat(),
        targets={name: s.seal() for name, s in staging.items()},
        decision=decision,
        deadline=_job_deadline(ctx),
    )
    won, record = ctx.meeting.publish_once(SETUP, record)
    if not won:
        log.info("%s: another copy of worker 0 published first", ctx.where)
    elif ctx.meeting.read(COMMITTED, Committed) is not None:
        # Ours landed only because a finished job's namespace was cleaned
        # (COMMITTED outlives the cleanup): the job is done.
        ctx.meeting.remove(SETUP)
        return Done()
    _crash.reach("after-publish-setup")
    return record


def load_setup(ctx: JobContext) -> Setup:
    """Every other worker: wait for the setup (ends early if the job fails or commits).

    ``just_read``: the worker's start has just read the setup and
    ``committed`` and found neither, so the wait neither asks again at once
    nor asks for the markers in its first second (see ``Rendezvous.wait_for``).
    """
    return ctx.meeting.wait_for(SETUP, Setup, just_read=True)


def _check(ctx: JobContext, record: Setup) -> Setup:
    location = ctx.meeting.location(SETUP)
    if record.job != ctx.job_id:  # sealed frames already check this; belt and braces
        raise ForeignPayloadError(location=location, reason=f"it is job {record.job!r}'s setup")
    if record.workers_total != ctx.identity.workers_total:
        raise WorkersTotalMismatchError(
            job=ctx.job_id,
            worker_index=ctx.identity.worker_index,
            expected=record.workers_total,
            got=ctx.identity.workers_total,
        )
    pinned = datetime.fromisoformat(record.job_start) if record.job_start else None
    own = ctx.identity.job_start
    if own is not None and pinned is not None and own != pinned:
        raise ConfigurationError(
            f"job {ctx.job_id!r}: worker {ctx.identity.worker_index} has job start "
            f"{own.isoformat()} but the setup pinned {pinned.isoformat()}. Every pod must get "
            "the same JOB_START (or the same CronJob name); fix the pod spec and re-create the job."
        )
    ctx.pinned.start = pinned or own
    ctx.pinned.decision = record.decision
    missing = {d.name for d in ctx.drivers} - set(record.targets)
    if missing:
        raise ForeignPayloadError(
            location=location,
            reason=f"it has no target(s) {', '.join(sorted(missing))}: every worker must be "
            "given the same targets",
        )
    return record


def setup(ctx: JobContext, prepare: Prepare | None, start: Start | None = None) -> Setup | Done:
    """This worker's setup of the job: published by worker 0, loaded by the others.

    ``start`` is what :func:`~icechunk_coop.protocol._start.begin` found (it has
    withdrawn this worker's stale failure markers and read any published
    setup already); without it, both are done here. :class:`Done` when the
    job turns out to be committed (found while staging, or while waiting).
    """
    if start is None:
        start = Start(committed=False, setup=ctx.meeting.read(SETUP, Setup))
        clear_own_failures(ctx)
    try:
        record = (
            publish_setup(ctx, prepare, start.setup)
            if ctx.identity.is_first
            else start.setup or load_setup(ctx)
        )
    except AlreadyCommittedError as exc:
        return Done.of(exc)
    return record if isinstance(record, Done) else _check(ctx, record)
