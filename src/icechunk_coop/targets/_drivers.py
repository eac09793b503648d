"""One driver per kind of target, behind the few operations the protocol needs.

The protocol never asks what a target is. It asks its driver to

- ``stage`` the base on worker 0 (a fork of the branch tip for Icechunk, a
  metadata-staging store for plain zarr) and ``seal`` it into the setup;
- ``fork`` the setup for a worker to write into (through a store that
  records what it writes), and list a result's ``changes`` for the last
  worker's overlap check;
- ``merge`` every worker's fork on the last worker (``add`` folds in more
  as they arrive), then on that merge: ``landed`` (does the target already
  hold this job? one read of the tip, none for a lone Icechunk target whose
  commit is a compare-and-set from the base),
  ``rebase`` over what landed since the base (conflicts are errors), and
  ``commit`` by compare-and-set;
- ``find_commit`` of this job (exactly once) and ``cleanup`` afterwards.

Like zarr's ``Store``, a driver states a capability rather than its kind:
``needs_fork`` says whether a worker's result must carry a fork for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import zarr.abc.store

from icechunk_coop.wire._ledger import Provenance
from icechunk_coop.wire._records import TargetSetup, Writes

if TYPE_CHECKING:
    import icechunk


__all__ = ["BranchMoved", "Fork", "Merge", "Staging", "TargetDriver"]

Store = zarr.abc.store.Store


class BranchMoved(Exception):  # noqa: N818 - a signal for the commit retry, never user-facing
    """The target branch moved between the check and the compare-and-set.

    ``fast``: the attempt merged on the target branch itself (it was at the
    job's base when the merge opened) and found it moved; the retry merges on
    a temporary branch, and this miss does not count as an attempt.
    """

    def __init__(self, target: str, *, fast: bool = False) -> None:
        super().__init__(target)
        self.target = target
        self.fast = fast


class Staging(Protocol):
    """Worker 0's view of a target while it prepares: structural changes go here."""

    @property
    def store(self) -> Store: ...

    def check(self) -> None:
        """Raise ``AlreadyCommittedError`` if staging found the job done (waits for its scan)."""
        ...

    def seal(self) -> TargetSetup:
        """What every worker needs of this target, for the setup record (checks first)."""
        ...


class Fork(Protocol):
    """A worker's private copy of a target."""

    @property
    def store(self) -> Store: ...

    @property
    def session(self) -> icechunk.ForkSession | None:
        """What the worker's result carries for this target (None: nothing)."""
        ...

    def writes(self) -> Writes:
        """What the worker wrote here (keys and digests), for the overlap check."""
        ...


class Merge(Protocol):
    """Every fork folded together on the last worker, not committed yet."""

    @property
    def store(self) -> Store: ...

    def add(
        self, forks: Sequence[icechunk.ForkSession | None], writes: Sequence[Writes] = ()
    ) -> None:
        """Fold more results in (the finalizer merges each one as it arrives)."""
        ...

    def landed(self, *, alone: bool = False) -> str | None:
        """This job's commit if the target holds it already; else remember the tip.

        ``alone``: this is the job's only target, so a merge whose commit is
        itself a compare-and-set from the job's base may skip the read.
        """
        ...

    def rebase(self, *, committed: Sequence[str]) -> None:
        """Carry the merge over whatever landed on the target since the job's base."""
        ...

    def commit(self, message: str, provenance: Provenance) -> str | None:
        """Move the target to the merge by compare-and-set; raise ``BranchMoved``.

        None when the merge changes nothing on the target: it is left as it is.
        """
        ...

    def discard(self) -> None:
        """Drop what this attempt made beside the target (best effort): it will not commit."""
        ...


class TargetDriver(Protocol):
    """What the protocol can do with one target."""

    @property
    def name(self) -> str: ...

    @property
    def needs_fork(self) -> bool: ...

    def connect(self) -> None:
        """Open the target ahead of the steps that use it (best effort; they raise)."""
        ...

    def prestage(self) -> None:
        """Worker 0: read what :meth:`stage` reads first, beside the start's reads (best effort)."""
        ...

    def find_commit(self, base: str | None) -> str | None:
        """This job's commit on the target, searched down to ``base``."""
        ...

    def stage(self, *, primary: bool) -> Staging:
        """Open the base for worker 0; the primary also checks the job is not done."""
        ...

    def fork(self, state: TargetSetup) -> Fork: ...

    def changes(
        self, fork: icechunk.ForkSession | None, writes: Writes | None
    ) -> dict[str, str | None]:
        """Every key one result changed on this target, with its digest where known.

        ``writes`` is what the worker listed (None in a result of a release
        before workers listed their writes).
        """
        ...

    def merge(self, state: TargetSetup, forks: Sequence[icechunk.ForkSession | None]) -> Merge: ...

    def cleanup(self) -> None:
        """Remove what the job left on the target (temporary branches)."""
        ...
