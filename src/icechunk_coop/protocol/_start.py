"""Step 0, start: what a worker must know before it acts, read in one round trip.

Before doing anything a worker needs four independent answers: is the
meeting point there at all (a typo in a bucket name must fail at once, not
after every peer's deadline), has the job committed already (a late or
duplicated pod), is a setup published (a restarted worker reuses it and must
not read it twice), and, on the last worker, did an earlier finalizer pin a
plan. Asked one after the other they were five or six round trips on every
worker's critical path, on a cold client; here they are asked at once, and
the worker's own stale failure markers are withdrawn in the same batch.

Only the scan of the primary for the job's own commit depends on another
answer (it runs down to the setup's base), so it follows the setup's read
in the same thread. Worker 0 skips it when there is no setup: staging the
primary makes the same check on the very snapshot it forks from. Worker 0
also opens its staging's sessions beside these reads (``prestage``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from datetime import datetime

import attrs

from icechunk_coop.errors import JobNameReusedError
from icechunk_coop.protocol._context import JobContext, each
from icechunk_coop.wire import _codec as codec
from icechunk_coop.wire._markers import Committed, Failure
from icechunk_coop.wire._records import (
    COMMITTED,
    PLAN,
    SETUP,
    Plan,
    Record,
    Result,
    Setup,
    result_name,
)

__all__ = ["Start", "Warming", "begin", "check_same_run", "clear_own_failures", "warm"]

#: How long the start waits for the warm-up's request before probing the bucket itself.
WARM_GRACE = 2.0


@attrs.frozen(kw_only=True)
class Start:
    """What a worker found when it started.

    ``committed`` is True when the ``committed`` marker is out or the
    primary holds the job's commit (``snapshot``, when found there rather
    than from the marker). ``setup`` and ``plan`` are the records already
    published, if any; ``plan`` is read on the last worker only.
    """

    committed: bool
    snapshot: str | None = None
    setup: Setup | None = None
    plan: Plan | None = None


def _own_markers(ctx: JobContext) -> list[str]:
    return [result_name(ctx.identity.worker_index), *([SETUP] if ctx.identity.is_first else [])]


def clear_own_failures(ctx: JobContext, present: Iterable[str] | None = None) -> None:
    """Withdraw this worker's failure markers (those ``present``, when that is known).

    The index is running (again): its markers go first, so that peers retried
    meanwhile wait for it instead of failing on the marker of an attempt that
    is already over.
    """
    for name in _own_markers(ctx):
        if present is None or name in present:
            ctx.meeting.clear_failure(name)


def _same_start(recorded: str | None, own: datetime) -> bool:
    if recorded is None:
        return False
    try:
        return datetime.fromisoformat(recorded) == own
    except ValueError:  # not a time we wrote: fail closed
        return False


def check_same_run(ctx: JobContext, marker: Committed) -> None:
    """Refuse ``marker`` if another run of this job's name, not this one, committed it.

    The marker outlives the job so that a late or retried pod finds its job
    done. With a uid the job id is unique to one Job: the marker is this
    run's. Without one the job id is the name alone, and a Job deleted and
    created again under that name (or a fixed name run twice) would find the
    first run's marker and skip all of its work in silence. Which run
    committed is the job start the marker records (the start its setup
    pinned, from which the work list derives):

    - this worker's start is known (``JOB_START``, a CronJob's Job name) and
      equal: a retry of that run, and the job is done, as before;
    - known and different: another run of the same name;
    - unknown (no start in the environment, or a marker that does not record
      one): a retry and a new run look alike.

    The last two are refused with :class:`JobNameReusedError`, which names
    the fix (a uid, or a new name). Going ahead instead would not be sound:
    the new run shares the old one's namespace, its peers would read the
    marker at different moments (some skipping, some waiting), and its
    finalizer would find the old run's commit on the primary under the same
    job id and report the new work committed. A retry refused by mistake
    fails loudly and is fixed by a uid; a run skipped by mistake loses its
    data without a word.
    """
    own = ctx.identity.job_start
    if ctx.identity.job_uid is not None or (own is not None and _same_start(marker.job_start, own)):
        return
    raise JobNameReusedError(
        job=ctx.job_id,
        committed_at=marker.at,
        committed_start=marker.job_start,
        own_start=None if own is None else own.isoformat(),
    )


def _read(ctx: JobContext) -> tuple[dict[str, Record], str | None]:
    """The records already published, this worker's markers withdrawn, the scan of the primary."""
    kinds: dict[str, type[Record]] = {COMMITTED: Committed, SETUP: Setup}
    if ctx.identity.is_last:
        kinds[PLAN] = Plan
    found, failed = ctx.meeting.read_many(kinds, failures=_own_markers(ctx))
    clear_own_failures(ctx, failed)
    setup = found.get(SETUP)
    assert setup is None or isinstance(setup, Setup)
    if COMMITTED in found or (setup is None and ctx.identity.is_first):
        # Worker 0 with no setup: staging the primary checks for the job's commit itself.
        return found, None
    own = setup.targets.get(ctx.primary.name) if setup else None  # missing: refused later
    return found, ctx.primary.find_commit(own.base if own is not None else None)


@attrs.frozen
class Warming:
    """The job's storage clients, being built since the job was (see :func:`warm`)."""

    meeting: threading.Thread
    drivers: threading.Thread


def warm(ctx: JobContext) -> Warming:
    """Start building the job's clients in the background, ahead of :func:`begin`.

    A botocore client costs 0.1-0.5 s of CPU to build and as much again on
    its first request, opening an Icechunk repository two reads (its config
    and its refs), and cattrs writes a record's hooks at its first use. Done
    while the job is built, the worker's first batch of reads goes out at
    once on a client that has already answered (which also proves the bucket
    reachable), and worker 0's setup (which every other worker waits on)
    starts with requests, not with building clients. Best effort:
    :func:`begin` raises whatever still fails.
    """

    def meeting() -> None:
        with contextlib.suppress(Exception):
            ctx.meeting.connect()
        with contextlib.suppress(Exception):  # a record's first use would say it better
            codec.prepare(Committed, Setup, Plan, Result, Failure)

    def drivers() -> None:
        for driver in ctx.drivers:
            driver.connect()

    started = Warming(
        meeting=threading.Thread(target=meeting, name="icechunk-coop-warm", daemon=True),
        drivers=threading.Thread(target=drivers, name="icechunk-coop-connect", daemon=True),
    )
    started.meeting.start()
    started.drivers.start()
    return started


def begin(ctx: JobContext, warming: Warming | None = None) -> Start:
    """Read, at once, what this worker must know before it acts.

    The probe of the meeting point (a client of its own, with short
    timeouts) runs here while everything else runs on the meeting point's
    client in a thread. When the probe fails its error is raised at once:
    the reads fail for the same reason, only later and less clearly, and the
    thread (a daemon) is left to them. ``warming`` is :func:`warm`'s, if the
    clients are already being built: when its request answered (within
    :data:`WARM_GRACE`), the bucket is known to be there and no probe is sent.
    """
    if not ctx.meeting.stored:
        found, snapshot = _read(ctx)
    else:
        outcome: list[tuple[dict[str, Record], str | None]] = []
        failure: list[BaseException] = []

        def reads() -> None:
            try:
                if warming is not None:
                    warming.meeting.join()  # one client, built once
                outcome.append(_read(ctx))
            except BaseException as exc:  # handed to the starting thread as is
                failure.append(exc)

        def connect() -> None:
            if warming is not None:
                warming.drivers.join()
            else:
                for driver in ctx.drivers:
                    driver.connect()
            if ctx.identity.is_first:  # its staging's first reads, beside the start's
                each(lambda driver: driver.prestage(), ctx.drivers)

        threads = [
            threading.Thread(target=reads, name="icechunk-coop-start", daemon=True),
            threading.Thread(target=connect, name="icechunk-coop-connect", daemon=True),
        ]
        for thread in threads:
            thread.start()
        if warming is not None:  # its request, when answered, proves the bucket reachable
            warming.meeting.join(timeout=WARM_GRACE)
        ctx.meeting.check_reachable()
        for thread in threads:
            thread.join()
        if failure:
            raise failure[0]
        found, snapshot = outcome[0]
    marker = found.get(COMMITTED)
    if marker is not None:
        assert isinstance(marker, Committed)
        check_same_run(ctx, marker)
    committed = marker is not None
    setup, plan = found.get(SETUP), found.get(PLAN)
    assert setup is None or isinstance(setup, Setup)
    assert plan is None or isinstance(plan, Plan)
    return Start(
        committed=committed or snapshot is not None,
        snapshot=None if committed else snapshot,
        setup=setup,
        plan=plan,
    )
