"""Step 3, finalize (the last worker), second half: check, commit, clean up.

Targets commit one after another, replicas first and the primary last, and
only after every target has been checked: a conflict on the primary must
not leave replicas holding this job's data. If a target branch moves between
the check and the compare-and-set, the merge is rebuilt and tried again
(tenacity does the retrying); a target already holding this job's commit (a
restarted or duplicated finalizer) is left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import icechunk
import tenacity

from icechunk_coop.errors import (
    BranchKeptMovingError,
    CommitConflictError,
    PayloadError,
)
from icechunk_coop.protocol import _crash
from icechunk_coop.protocol._context import Done, JobContext, each, summary
from icechunk_coop.protocol._finalize import Finalize, Merged, Message, merge
from icechunk_coop.targets._drivers import BranchMoved
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, Result, Setup

__all__ = ["after_commit", "clean_up", "commit", "commit_once"]

log = logging.getLogger("icechunk_coop.protocol")


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
