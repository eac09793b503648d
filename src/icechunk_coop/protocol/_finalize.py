"""Step 3, finalize (the last worker), first half: collect and merge, pin the plan.

Results are merged as they arrive; the plan pins, once per job, which
results are committed, and a merge of exactly those is handed to the commit
step (``_commit``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs

from icechunk_coop.errors import (
    AlreadyCommittedError,
    ForeignPayloadError,
    ForeignResultError,
    WorkersTotalMismatchError,
)
from icechunk_coop.protocol import _crash
from icechunk_coop.protocol._context import Done, JobContext, each
from icechunk_coop.protocol._setup import stores_of
from icechunk_coop.targets._drivers import Merge
from icechunk_coop.targets._overlap import OverlapCheck
from icechunk_coop.targets._targets import Stores
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, PLAN, Plan, Result, Setup, Writes, result_name

__all__ = [
    "Finalize",
    "Merged",
    "Message",
    "collect_and_merge",
    "merge",
    "pin_and_merge",
    "pin_plan",
]

log = logging.getLogger("icechunk_coop.protocol")

Finalize = Callable[[Stores, list[Any]], None]
_NOTHING = Writes()
#: A commit message, or what makes one once the setup is known (the job's start, say).
Message = str | Callable[[], str]


@attrs.frozen(kw_only=True)
class Merged:
    """The last worker's view: every fork merged, nothing committed, results in index order."""

    setup: Setup = attrs.field(repr=False)
    plan: tuple[Result, ...] = attrs.field(repr=False)
    merges: Mapping[str, Merge] = attrs.field(repr=False)
    stores: Stores

    @property
    def results(self) -> list[Any]:
        """What every worker's ``work`` returned, in index order."""
        return [r.value for r in self.plan]


def _check_result(ctx: JobContext, setup: Setup, index: int, result: Result) -> None:
    total = ctx.identity.workers_total
    if result.index != index:
        raise ForeignResultError(
            job=ctx.job_id, worker_index=index, reason=f"it says index {result.index}"
        )
    if result.workers_total != total:
        raise WorkersTotalMismatchError(
            job=ctx.job_id, worker_index=index, expected=total, got=result.workers_total
        )
    if result.token != setup.token:
        raise ForeignResultError(
            job=ctx.job_id,
            worker_index=index,
            reason="it was written against another setup of this job "
            f"(setup {result.token!r}, current {setup.token!r})",
        )
    missing = [d.name for d in ctx.drivers if d.needs_fork and d.name not in result.forks]
    if missing:
        raise ForeignResultError(
            job=ctx.job_id,
            worker_index=index,
            reason=f"it has no fork for target(s) {', '.join(sorted(missing))}",
        )


def overlap_check(ctx: JobContext) -> Callable[[Result], None]:
    """What refuses a result that wrote what an earlier one did (see ``_overlap``).

    Called on every result before it is merged, so a job whose workers share
    a chunk stops before any target moves, with the temporary branches
    discarded by the caller.
    """
    check = OverlapCheck(
        job=ctx.job_id,
        plain=frozenset(d.name for d in ctx.drivers if not d.needs_fork),
    )

    def add(result: Result) -> None:
        for driver in ctx.drivers:
            writes = result.writes.get(driver.name)
            changed = driver.changes(result.forks.get(driver.name), writes)
            check.add(result.index, driver.name, changed)

    return add


def _fold(merges: Mapping[str, Merge], result: Result) -> None:
    for target, m in merges.items():
        m.add([result.forks.get(target)], [result.writes.get(target, _NOTHING)])


def _discard(merged: Merged | None) -> None:
    if merged is not None:
        each(lambda m: m.discard(), list(merged.merges.values()))


@attrs.frozen
class Opening:
    """The last worker's merges, being opened while it does its own work.

    Opening a merge costs a few round trips (the target's refs, the base
    snapshot, and a temporary branch when the target moved): done beside
    ``work``, they are off the job's critical path.
    """

    _future: Future[dict[str, Merge]]

    def result(self) -> dict[str, Merge]:
        return self._future.result()

    def discard(self) -> None:
        """Drop the merges (best effort): the worker failed before it could use them."""
        try:
            merges = self._future.result()
        except Exception:  # the opening failed: nothing was made
            return
        with contextlib.suppress(Exception):
            each(lambda m: m.discard(), list(merges.values()))


def open_merges(ctx: JobContext, setup: Setup) -> dict[str, Merge]:
    """One merge per target, at the forks' base, worker 0's structural changes already in."""
    opened = each(lambda d: d.merge(setup.targets[d.name], []), list(ctx.drivers))
    return {d.name: m for d, m in zip(ctx.drivers, opened, strict=True)}


def open_merges_ahead(ctx: JobContext, setup: Setup) -> Opening:
    """Start :func:`open_merges` in a thread of its own; :func:`collect_and_merge` takes it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icechunk-coop-merge")
    try:
        return Opening(pool.submit(open_merges, ctx, setup))
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def collect_and_merge(
    ctx: JobContext, setup: Setup, opening: Opening | None = None
) -> tuple[list[Result], Merged] | Done:
    """Wait for every worker's result, merging each one in as soon as it is read.

    The merge (one session per target, on a temporary branch at the forks'
    base S0, worker 0's structural changes already in) is opened before the
    wait, and every result is checked and folded into it as it arrives, so
    once the last result lands only that one is left to read and merge: the
    time to collect N results no longer follows N after the last arrival.
    Nothing is pinned yet: :func:`pin_and_merge` keeps this merge only if the
    plan it pins holds exactly these results. ``opening``: the merges, opened
    already while this worker worked (:func:`open_merges_ahead`).
    :class:`Done` if the job committed while this worker waited (a twin).

    Memory grows with N x chunks as before: the results are kept (the plan
    pins them whole), the merged session holds one reference per chunk
    written; raw blobs are dropped once decoded (two fetch batches at most
    are held at a time).
    """
    names = [result_name(i) for i in range(ctx.identity.workers_total)]
    index_of = {name: i for i, name in enumerate(names)}
    merges = open_merges(ctx, setup) if opening is None else opening.result()

    refuse_overlap = overlap_check(ctx)

    def arrived(name: str, result: Result) -> None:
        _check_result(ctx, setup, index_of[name], result)
        refuse_overlap(result)
        _fold(merges, result)
        log.debug("%s: merged %s as it arrived", ctx.where, name)

    try:
        found = ctx.meeting.wait_for_all(names, Result, on_arrival=arrived)
    except BaseException as exc:
        each(lambda m: m.discard(), list(merges.values()))
        if isinstance(exc, AlreadyCommittedError):
            return Done.of(exc)
        raise
    results = [found[name] for name in names]
    stores = stores_of(ctx, {name: m.store for name, m in merges.items()})
    streamed = Merged(setup=setup, plan=tuple(results), merges=merges, stores=stores)
    _crash.reach("after-load-results")
    return results, streamed


def checked_plan(ctx: JobContext, setup: Setup, plan: Plan | None) -> Plan | None:
    """``plan``, the one an earlier finalizer pinned (if any), checked against ``setup``."""
    if plan is not None and plan.token != setup.token:
        raise ForeignPayloadError(
            location=ctx.meeting.location(PLAN),
            reason="this commit plan was pinned by another setup of this job; remove it "
            "only if no target holds the job",
        )
    return plan


def pin_plan(ctx: JobContext, setup: Setup, results: Sequence[Result]) -> tuple[Result, ...] | Done:
    """Fix, once per job, which results are committed; return the pinned ones.

    A finalizer restarted between two targets must commit the same merge to
    the rest, even if a worker ran again meanwhile and published a different
    result: otherwise a replica and the primary would hold different data for
    one job. So the first finalizer stores the results it merges
    (put-if-absent) before any target moves, and every later attempt commits
    exactly those. (Plain zarr targets get their chunks from the workers
    directly: a worker run again after the plan was pinned rewrites them.)
    :class:`Done` if the job committed meanwhile (a twin).
    """
    # Whether the job committed meanwhile is read beside the pin: a twin that
    # committed and cleaned up while this finalizer read the results leaves no
    # plan, so ours would land. The read costs no round trip of its own; if it
    # misses a marker published at that very moment, the commit step finds the
    # job on every target and stops before finalizing anything.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="icechunk-coop") as pool:
        marker = pool.submit(ctx.meeting.read, COMMITTED, Committed)
        won, plan = ctx.meeting.publish_once(PLAN, Plan(token=setup.token, results=tuple(results)))
        committed = marker.result() is not None
    if committed:
        if won:
            ctx.meeting.remove(PLAN)
        log.info("%s: a twin committed the job while this one read the results", ctx.where)
        return Done()
    if plan.token != setup.token:
        checked_plan(ctx, setup, plan)  # raises, naming the blob
    if not won:
        log.info("%s: committing the results an earlier attempt pinned", ctx.where)
    _crash.reach("after-pin-plan")
    return plan.results


def pin_and_merge(
    ctx: JobContext, setup: Setup, results: Sequence[Result], streamed: Merged | None
) -> Merged | Done:
    """Pin the plan, then the merge of exactly the pinned results.

    That is the ``streamed`` merge when the plan pins the very results it
    merged (this finalizer won the pin). When an earlier finalizer of this
    setup pinned first, its plan may hold another result for some index (a
    worker ran again between the two reads): the streamed merge is dropped
    and the pinned results are merged afresh, so every target gets the same
    merge whichever finalizer commits it.
    """
    try:
        pinned = pin_plan(ctx, setup, results)
    except BaseException:
        _discard(streamed)
        raise
    if isinstance(pinned, Done):
        _discard(streamed)
        return pinned
    if (
        streamed is not None
        and len(streamed.plan) == len(pinned)
        and all(ours is theirs for ours, theirs in zip(streamed.plan, pinned, strict=True))
    ):
        for _ in ctx.drivers:
            _crash.reach("mid-merge")
        return streamed
    if streamed is not None:
        log.info("%s: merging the plan an earlier attempt pinned instead", ctx.where)
        _discard(streamed)
    return merge(ctx, setup, pinned)


def merge(ctx: JobContext, setup: Setup, plan: Sequence[Result]) -> Merged:
    """Merge every fork into a writable session based on the forks' own base."""
    refuse_overlap = overlap_check(ctx)
    for result in plan:
        refuse_overlap(result)
    merges: dict[str, Merge] = {}
    for driver in ctx.drivers:
        forks = [r.forks.get(driver.name) for r in plan]
        merges[driver.name] = m = driver.merge(setup.targets[driver.name], forks)
        m.add([], [r.writes.get(driver.name, _NOTHING) for r in plan])
        _crash.reach("mid-merge")
    stores = stores_of(ctx, {name: m.store for name, m in merges.items()})
    return Merged(setup=setup, plan=tuple(plan), merges=merges, stores=stores)
