"""An Icechunk target's merge: every fork on the job's base, rebased, committed by compare-and-set.

What the last worker builds for one target (``IcechunkDriver.merge``): the
forks merged in a session based on the job's base S0, then, at the commit,
rebased with conflict detection onto whatever the target holds now and
moved there by compare-and-set from the tip that was checked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs
import icechunk

from icechunk_coop.errors import (
    CommitConflictError,
)
from icechunk_coop.targets._drivers import BranchMoved, Store
from icechunk_coop.targets._targets import IcechunkTarget
from icechunk_coop.wire._ledger import (
    Provenance,
    find_job_commit,
)
from icechunk_coop.wire._records import Writes

__all__ = ["IcechunkMerge"]

log = logging.getLogger("icechunk_coop.targets._icechunk")


def _describe(conflict: icechunk.Conflict) -> str:
    """One line per conflict: what kind, where, and which chunks (a few of them)."""
    text = f"{conflict.conflict_type} at {conflict.path}"
    chunks = list(conflict.conflicted_chunks or [])
    if chunks:
        shown = ", ".join(str(tuple(c)) for c in chunks[:5])
        more = f" and {len(chunks) - 5} more" if len(chunks) > 5 else ""
        text += f" (chunks {shown}{more})"
    return text


def _written(session: icechunk.Session) -> dict[str, Any]:
    diff = session.status()
    return {
        "chunks": {p: len(c) for p, c in sorted(diff.updated_chunks.items())},
        "new_arrays": sorted(diff.new_arrays),
        "updated_arrays": sorted(diff.updated_arrays),
        "new_groups": sorted(diff.new_groups),
        "updated_groups": sorted(diff.updated_groups),
    }


@attrs.define(kw_only=True)
class IcechunkMerge:
    """Every fork merged in a session based on the job's base S0, not committed yet.

    Two ways, one invariant (the merge's base is S0, RESEARCH.md's trap):

    - **on the target** (``on_target``): when the target branch still points
      at S0 as the merge opens (the usual case), the session is opened on the
      target branch itself. Its commit is icechunk's compare-and-set of that
      branch from S0: it lands only if nothing, this job's commit included,
      landed since. One ref update, no temporary branch to create, reset or
      delete.
    - **on a temporary branch** created at S0, when the target has moved:
      reset to the tip that ``landed`` checked, rebased with conflict
      detection, and the target moved by ``reset_branch`` from that tip.

    A target that moves under an on-target merge makes its commit raise
    :class:`BranchMoved` (``fast=True``), and the retry merges again on a
    temporary branch.
    """

    target: IcechunkTarget
    job_id: str
    base: str
    branch: str
    repo: icechunk.Repository = attrs.field(repr=False)
    session: icechunk.Session = attrs.field(repr=False)
    run_start: str | None = None
    tip: str | None = None
    on_target: bool = False

    @property
    def store(self) -> Store:
        return self.session.store

    def add(
        self, forks: Sequence[icechunk.ForkSession | None], writes: Sequence[Writes] = ()
    ) -> None:
        present = [f for f in forks if f is not None]
        if present:
            self.session.merge(*present)

    def landed(self, *, alone: bool = False) -> str | None:
        if self.on_target and alone:
            # The only target, merged on the branch itself at S0: the commit's
            # compare-and-set from S0 is the check (the job's commit, if any,
            # would sit above S0), so no read is needed before it.
            self.tip = self.base
            return None
        # The check and the tip come from one read of the branch: the
        # compare-and-set later moves the branch only from that very tip, so a
        # twin finalizer that committed after this read makes ours fail (and
        # the next attempt find its commit) instead of landing twice.
        self.tip = self.repo.lookup_branch(self.target.branch)
        if self.tip == self.base:
            return None  # nothing above the base; the base is never the job's own commit
        return find_job_commit(self.repo, self.tip, self.job_id, self.base, start=self.run_start)

    def rebase(self, *, committed: Sequence[str]) -> None:
        assert self.tip is not None, "landed() reads the tip first"
        if self.tip == self.base:
            return
        if self.on_target:
            # A session on the target itself would rebase onto whatever tip it
            # reads then, unchecked: merge again on a temporary branch instead.
            raise BranchMoved(self.target.name, fast=True)
        log.info("job %r: %s moved since setup; rebasing", self.job_id, self.target.name)
        self.repo.reset_branch(self.branch, self.tip)
        try:
            self.session.rebase(icechunk.ConflictDetector())
        except icechunk.RebaseFailedError as exc:
            raise CommitConflictError(
                job=self.job_id,
                target=self.target.name,
                conflicts=[_describe(c) for c in exc.conflicts] or [str(exc)],
                committed=sorted(committed),
            ) from exc

    def commit(self, message: str, provenance: Provenance) -> str | None:
        assert self.tip is not None, "landed() reads the tip first"
        if not self.session.has_uncommitted_changes:
            # No worker wrote anything and finalize changed nothing: an empty
            # snapshot would only add noise to the history (and tell readers
            # that data arrived). The target stays as it is.
            log.info("job %r: nothing to commit on %s", self.job_id, self.target.name)
            return None
        metadata = provenance.metadata(
            target=self.target.name, base=self.base, written=_written(self.session)
        )
        if self.on_target:
            # Atomic: icechunk moves the branch from S0 by compare-and-set.
            try:
                return str(self.session.commit(message, metadata=metadata, allow_empty=True))
            except icechunk.ConflictError as exc:
                raise BranchMoved(self.target.name, fast=True) from exc
        snapshot = self.session.commit(message, metadata=metadata, allow_empty=True)
        try:
            # Atomic: the target moves only from the tip ``landed`` checked.
            self.repo.reset_branch(self.target.branch, snapshot, from_snapshot_id=self.tip)
        except icechunk.ConflictError as exc:
            raise BranchMoved(self.target.name) from exc
        return snapshot

    def discard(self) -> None:
        if self.on_target:
            return  # nothing was made beside the target
        try:
            self.repo.delete_branch(self.branch)
        except icechunk.IcechunkError as exc:  # a twin's cleanup deleted it first: fine
            log.debug("deleting %s: %s", self.branch, exc)
