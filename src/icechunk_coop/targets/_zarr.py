"""The plain zarr v3 driver: chunks from the workers, every ``zarr.json`` from the last.

A zarr store has no history to rebase over and no branch to compare-and-set,
so "exactly once" lives in the meeting point instead: the last worker writes
the staged metadata, then a ``committed-<target>`` marker; a restarted
finalizer that finds the marker leaves the store alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from icechunk_coop.errors import AlreadyCommittedError, ForeignPayloadError
from icechunk_coop.rendezvous._locations import require_filesystem
from icechunk_coop.targets._overlap import RecordingStore, zarr_changes
from icechunk_coop.targets._targets import ZarrTarget
from icechunk_coop.targets._zarr_staging import StagedMetadataStore, open_zarr_store, publish_staged
from icechunk_coop.wire._ledger import Provenance
from icechunk_coop.wire._markers import ZarrCommitted
from icechunk_coop.wire._records import TargetSetup, Writes, ZarrSetup, committed_name

if TYPE_CHECKING:
    import icechunk

    from icechunk_coop.rendezvous._meeting import MeetingPoint

__all__ = ["ZarrDriver"]

ZARR_COMMIT = "zarr"  # what stands for a snapshot id where there are no snapshots


@attrs.frozen(kw_only=True)
class _Staged:
    """Worker 0's staging store: the metadata it writes becomes the setup's."""

    store: StagedMetadataStore

    def check(self) -> None:
        return None  # staging checked the committed marker before it began

    def seal(self) -> TargetSetup:
        return ZarrSetup(metadata=dict(self.store.staged))


@attrs.frozen(kw_only=True)
class _Fork:
    """A worker's view: chunks straight to the store, metadata staged, every write noted."""

    staged: StagedMetadataStore
    base: Mapping[str, bytes] = attrs.field(repr=False)
    store: RecordingStore = attrs.field(repr=False)

    @property
    def session(self) -> icechunk.ForkSession | None:
        return None

    def writes(self) -> Writes:
        changed = {k: v for k, v in self.staged.staged.items() if self.base.get(k) != v}
        return Writes(keys=dict(self.store.written), metadata=changed)


@attrs.frozen(kw_only=True)
class _Merge:
    driver: ZarrDriver
    store: StagedMetadataStore

    def add(
        self, forks: Sequence[icechunk.ForkSession | None], writes: Sequence[Writes] = ()
    ) -> None:
        # The workers wrote their chunks into the store itself; what they changed
        # of the metadata is staged here (the overlap check has made sure no two
        # of them changed one document differently).
        for w in writes:
            self.store.staged.update(w.metadata)

    def landed(self, *, alone: bool = False) -> str | None:
        return self.driver.find_commit(None)

    def rebase(self, *, committed: Sequence[str]) -> None:
        return None  # no history: the setup's metadata is the base, by contract

    def commit(self, message: str, provenance: Provenance) -> str | None:
        keys = publish_staged(self.store.wrapped, self.store.staged)
        marker = ZarrCommitted(target=self.driver.name, keys=tuple(keys))
        self.driver.meeting.publish(committed_name(self.driver.name), marker)
        return ZARR_COMMIT

    def discard(self) -> None:
        return None  # the staged metadata lives in this process only


@attrs.frozen(kw_only=True)
class ZarrDriver:
    """Drives one plain zarr v3 store."""

    target: ZarrTarget
    job_id: str
    meeting: MeetingPoint

    def __attrs_post_init__(self) -> None:
        # A gs:// store without gcsfs is refused when the job is made, not at its first write.
        require_filesystem(self.target.url, role=f"plain zarr target {self.target.name!r} at")

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def needs_fork(self) -> bool:
        return False

    def connect(self) -> None:
        return None  # a zarr store opens in no time; nothing to do ahead

    def prestage(self) -> None:
        return None  # staging reads nothing from the store

    def find_commit(self, base: str | None) -> str | None:
        marker = self.meeting.read(committed_name(self.name), ZarrCommitted)
        return None if marker is None else ZARR_COMMIT

    def _staged(self, state: TargetSetup) -> StagedMetadataStore:
        if not isinstance(state, ZarrSetup):
            raise ForeignPayloadError(
                location=f"setup of target {self.name!r}",
                reason="it was set up as an Icechunk target, this worker has a plain zarr one",
            )
        return StagedMetadataStore(open_zarr_store(self.target), dict(state.metadata))

    def stage(self, *, primary: bool) -> _Staged:
        if primary and self.find_commit(None) is not None:
            raise AlreadyCommittedError(job=self.job_id, snapshot=None)
        return _Staged(store=StagedMetadataStore(open_zarr_store(self.target)))

    def fork(self, state: TargetSetup) -> _Fork:
        staged = self._staged(state)
        return _Fork(staged=staged, base=dict(staged.staged), store=RecordingStore(staged))

    def changes(
        self, fork: icechunk.ForkSession | None, writes: Writes | None
    ) -> dict[str, str | None]:
        return zarr_changes(writes or Writes())

    def merge(self, state: TargetSetup, forks: Sequence[icechunk.ForkSession | None]) -> _Merge:
        return _Merge(driver=self, store=self._staged(state))

    def cleanup(self) -> None:
        return None
