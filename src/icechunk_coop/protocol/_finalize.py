"""Step 3, finalize (the last worker): collect and merge, pin the plan, check, commit, clean up.

Targets commit one after another, replicas first and the primary last, and
only after every target has been checked: a conflict on the primary must
not leave replicas holding this job's data. If a target branch moves between
the check and the compare-and-set, the merge is rebuilt and tried again
(tenacity does the retrying); a target already holding this job's commit (a
restarted or duplicated finalizer) is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs
import icechunk
import tenacity

from icechunk_coop.errors import (
    AlreadyCommittedError,
    BranchKeptMovingError,
    CommitConflictError,
    ForeignPayloadError,
    ForeignResultError,
    PayloadError,
    WorkersTotalMismatchError,
)
from icechunk_coop.protocol import _crash
from icechunk_coop.protocol._context import Done, JobContext, summary
from icechunk_coop.protocol._setup import stores_of
from icechunk_coop.targets._drivers import BranchMoved, Merge
from icechunk_coop.targets._overlap import OverlapCheck
from icechunk_coop.targets._targets import Stores
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, PLAN, Plan, Result, Setup, Writes, result_name

__all__ = [
    "Finalize",
    "Merged",
    "Message",
    "after_commit",
    "collect_and_merge",
    "commit",
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


def each[T, R](fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn`` on every item at once (one thread each), results in order; the first error raised.

    For the finalizer's round trips that do not depend on each other (one per
    target): with a replica or two they cost one round trip, not one each.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="icechunk-coop") as pool:
        return list(pool.map(fn, items))


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


def commit_once(
    ctx: JobContext,
    merged: Merged,
    message: Message,
    done: dict[str, str],
    finalize: Callable[[Merged], None] | None = None,
) -> dict[str, str] | Done:
    """One attempt: check every target, finalize, then commit those that lack the job, in order.

    ``done`` is filled in as targets are found or committed, so that a caller
    giving up can say which targets hold the job. A target whose merge
    changes nothing (no worker wrote to it, ``finalize`` left it alone) is
    not committed at all and gets no entry. When every target holds
    the job already (a twin finished it, or this finalizer's earlier run died
    before its marker), nothing is finalized or committed:
    :class:`Done` says so, with the primary's snapshot.
    """
    done.clear()
    names = list(merged.merges)
    alone = len(names) == 1  # nothing else to check before it moves: its commit checks itself
    landed = each(lambda name: merged.merges[name].landed(alone=alone), names)
    done.update({name: found for name, found in zip(names, landed, strict=True) if found})
    if done:
        log.info("%s: already committed: %s", ctx.where, ", ".join(done))
        # Nothing of this attempt will be committed there, so its temporary
        # branches go now: a twin whose sibling committed and cleaned up
        # before this merge began would otherwise leave them if it died
        # before its own cleanup, with no pod of the job left to remove them.
        each(lambda name: merged.merges[name].discard(), sorted(done))
    pending = [d.name for d in ctx.drivers if d.name not in done]
    if not pending:
        return Done(snapshot=done[ctx.primary.name])
    if finalize is not None:
        finalize(merged)
    already = sorted(done)
    each(lambda name: merged.merges[name].rebase(committed=already), pending)
    provenance = ctx.provenance(merged.setup.token, merged.setup.job_start)
    words = message() if callable(message) else message
    text = f"{words} [job {ctx.job_id}, {ctx.identity.workers_total} workers]"
    _crash.reach("before-commits")
    for n, name in enumerate(pending):
        if n:
            _crash.reach("between-commits")
        try:
            snapshot = merged.merges[name].commit(text, provenance)
        except BranchMoved:
            log.warning("%s: %s moved while committing; trying again", ctx.where, name)
            raise
        if snapshot is None:  # the merge changes nothing there: no empty snapshot
            continue
        done[name] = snapshot
        log.info("%s: committed %s as %s", ctx.where, name, done[name])
    _crash.reach("after-commit")
    return done


def commit(
    ctx: JobContext,
    setup: Setup,
    plan: Sequence[Result],
    *,
    message: Message,
    finalize: Finalize | None,
    merged: Merged | None = None,
) -> dict[str, str] | Done:
    """Merge, finalize and commit every target that does not hold this job yet.

    ``merged``, if given, is a merge of ``plan`` that its caller finalized
    already: the first attempt commits it as it is. Every merge made here (the
    first, without one; each retry) gets ``finalize`` once it is clear that
    some target still lacks the job. Retried while a target branch moves under
    the attempt (or a twin finalizer deletes the temporary branch under it), up
    to ``ctx.commit_attempts`` times. A merge made on the target branch itself
    that finds it moved is followed at once by one beside it, in the same
    attempt: that miss cost one compare-and-set, not an attempt.
    """
    handed = [merged] if merged is not None else []
    done: dict[str, str] = {}
    apply = None if finalize is None else (lambda m: finalize(m.stores, m.results))

    def settle(current: Merged, fin: Callable[[Merged], None] | None) -> dict[str, str] | Done:
        try:
            return commit_once(ctx, current, message, done, fin)
        except Exception:
            # This merge will not commit: its temporary branches go now, not at
            # a cleanup that a failed job never reaches.
            each(lambda m: m.discard(), list(current.merges.values()))
            raise

    def attempt() -> dict[str, str] | Done:
        current, fin = (handed.pop(), None) if handed else (merge(ctx, setup, plan), apply)
        try:
            return settle(current, fin)
        except BranchMoved as exc:
            if not exc.fast:
                raise
        log.info("%s: a target moved under the merge on it; merging beside it", ctx.where)
        return settle(merge(ctx, setup, plan), apply)

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("%s: commit attempt %d did not land (%s)", ctx.where, state.attempt_number,
                 summary(exc)[:200] if exc else "?")  # fmt: skip

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((BranchMoved, icechunk.RefNotFoundError)),
        stop=tenacity.stop_after_attempt(ctx.commit_attempts),
        before_sleep=log_retry,
        wait=tenacity.wait_none(),
        reraise=True,
    )
    try:
        return retrying(attempt)
    except CommitConflictError:
        # The job can never commit now (its base is pinned in the setup), so
        # every temporary branch of it is garbage, also those of attempts
        # killed mid-merge: no later pod would ever reach a cleanup for them.
        _drop_branches(ctx)
        raise
    except (BranchMoved, icechunk.RefNotFoundError) as exc:
        raise BranchKeptMovingError(
            job=ctx.job_id, attempts=ctx.commit_attempts, committed=sorted(done)
        ) from exc


def _drop_branches(ctx: JobContext) -> None:
    """Delete every temporary branch of the job, as far as storage lets us now."""
    try:
        each(lambda driver: driver.cleanup(), list(ctx.drivers))
    except Exception as exc:  # the error being raised matters more; `clean` finds these
        log.warning("%s: could not delete the job's temporary branches: %s", ctx.where,
                    summary(exc)[:200])  # fmt: skip


def after_commit(
    ctx: JobContext,
    snapshots: Mapping[str, str],
    timeline: Mapping[int, Mapping[str, tuple[float, float]]] | None = None,
) -> None:
    """Publish COMMITTED (with every worker's timeline), then clean up, all at once.

    COMMITTED first, so that waiting twins, late pods and ``status`` learn the
    outcome without waiting for the cleanup; and the cleanup keeps it: there
    is never a moment when a late worker finds neither the marker nor the
    setup. The cleanup (temporary branches of every target, the rendezvous)
    runs concurrently; a worker that finds the marker finishes whatever of it
    a dead finalizer left (:func:`clean_up`).
    """
    marker = Committed(
        snapshots=dict(snapshots),
        at=time.time(),
        workers_total=ctx.identity.workers_total,
        timeline=dict(timeline or {}),
        job_start=ctx.pinned.start or ctx.identity.job_start,  # which run committed
        pod=ctx.identity.pod,
    )
    try:
        won, _ = ctx.meeting.publish_once(COMMITTED, marker)
    except PayloadError:  # a blob there that is not this job's marker (planted): ours replaces it
        ctx.meeting.publish(COMMITTED, marker)
    else:
        if not won:  # a twin's, or an earlier run's: the first word stands
            log.info("%s: the committed marker is already there; kept", ctx.where)
    _crash.reach("before-cleanup")
    clean_up(ctx)


def clean_up(ctx: JobContext) -> None:
    """Delete the job's temporary branches and (unless told not to) its rendezvous blobs.

    Idempotent: twins and late pods run it too, and a branch another deleted
    first is fine.
    """
    tasks: list[Callable[[], None]] = [d.cleanup for d in ctx.drivers]
    if ctx.cleanup:
        tasks.append(lambda: ctx.meeting.remove_all(keep=(COMMITTED,)))
    each(lambda task: task(), tasks)
