"""The Icechunk driver: fork at the tip, merge on the base, rebase, compare-and-set.

Why this sequence: merging forks into a session opened *after* another
writer committed silently overwrites that writer's changes (RESEARCH.md,
"the silent-overwrite trap"). So the merge happens on a temporary branch
created at the forks' own base S0; if the target moved since, the merged
session is rebased with ``ConflictDetector`` (a clean rebase or an error,
never an overwrite) and the target branch is moved by compare-and-set from
the very tip that was checked. The driver stages, forks and opens merges;
the merge itself is ``_icechunk_merge.IcechunkMerge``.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import attrs
import icechunk

from icechunk_coop.errors import (
    AlreadyCommittedError,
    ForeignPayloadError,
    MissingLocationError,
)
from icechunk_coop.targets._drivers import Store
from icechunk_coop.targets._icechunk_merge import IcechunkMerge
from icechunk_coop.targets._overlap import UNKNOWN, RecordingStore, fork_changes
from icechunk_coop.targets._targets import IcechunkTarget
from icechunk_coop.wire._ledger import (
    attempt_branch,
    find_job_commit,
    find_job_snapshot,
    job_branch_prefix,
    job_snapshot_in,
)
from icechunk_coop.wire._records import IcechunkSetup, TargetSetup, Writes

__all__ = ["IcechunkDriver"]

log = logging.getLogger(__name__)

_MISSING_BUCKET = ("nosuchbucket", "bucket does not exist", "specified bucket")


@attrs.frozen(kw_only=True)
class _Staging:
    """Worker 0's fork of the target, and the check that the job is not done already.

    ``done`` is the scan of the target for this job's own commit, running
    beside ``prepare`` (a read of the refs that needs nothing prepare does):
    :meth:`seal` waits for it, so no setup is published for a job that
    committed meanwhile.
    """

    base: str
    prepared: icechunk.ForkSession = attrs.field(repr=False)
    done: Future[str | None] | None = attrs.field(default=None, repr=False)
    job_id: str = ""

    @property
    def store(self) -> Store:
        return self.prepared.store

    def check(self) -> None:
        found = self.done.result() if self.done is not None else None
        if found is not None:
            # A twin of this worker finished the whole job after our first look.
            raise AlreadyCommittedError(job=self.job_id, snapshot=found)

    def seal(self) -> TargetSetup:
        self.check()
        # Workers write into forks of a snapshot holding worker 0's changes (an
        # anonymous one, written here when there are changes), never into copies
        # of ``prepared`` itself: a copy would carry worker 0's chunk writes and
        # deletions to every worker, and a copy merged after another worker's
        # would put them back over that worker's chunks, silently.
        return IcechunkSetup(base=self.base, prepared=self.prepared, fork=self.prepared.fork())


def _private_copy(fork: icechunk.ForkSession) -> icechunk.ForkSession:
    """A fork of one's own to write into, with nothing written to storage.

    ``fork`` holds no changes (the setup's fork of worker 0's snapshot), so a
    pickled copy is the same as ``fork.fork()`` without its round trips.
    """
    copy: icechunk.ForkSession = pickle.loads(pickle.dumps(fork))
    return copy


@attrs.frozen(kw_only=True)
class _Fork:
    session: icechunk.ForkSession = attrs.field(repr=False)
    store: RecordingStore = attrs.field(repr=False)

    def writes(self) -> Writes:
        # The fork's own change set, listed here on the worker (a few ms each, in
        # parallel) rather than by the last worker for every fork in turn.
        changed = fork_changes(self.session, Writes(keys=dict(self.store.written)))
        return Writes(keys={key: dig or UNKNOWN for key, dig in changed.items()})


@attrs.frozen(kw_only=True)
class IcechunkDriver:
    """Drives one Icechunk repository branch.

    The repository is opened once per worker and reused by every step: each
    open builds a storage client and reads the repository's config, and a
    finalizer used to pay that four times (the start's scan, the merge, the
    check, the cleanup). A ``Repository`` reads refs afresh on every call, so
    reusing one never hides another writer's commit.
    """

    target: IcechunkTarget
    job_id: str
    scan: int
    #: This run's job start, for a job known by its name alone (see ``find_job_snapshot``).
    run_start: str | None = None
    _opened: list[icechunk.Repository] = attrs.field(factory=list, init=False, eq=False, repr=False)
    #: Opening happens once, whichever thread comes first (warming up, the start's scan).
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, eq=False, repr=False)
    #: Worker 0's session on the target branch, opened beside the start's reads (``prestage``).
    _prestaged: list[icechunk.Session] = attrs.field(factory=list, init=False, eq=False,
                                                     repr=False)  # fmt: skip

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def needs_fork(self) -> bool:
        return True

    def _open(self, *, create: bool) -> icechunk.Repository:
        with self._lock:
            return self._open_once(create=create)

    def _open_once(self, *, create: bool) -> icechunk.Repository:
        if self._opened:
            return self._opened[0]
        try:
            repo = self.target.open(create=create)
        except icechunk.IcechunkError as exc:
            text = str(exc).lower()
            if any(marker in text for marker in _MISSING_BUCKET):
                raise MissingLocationError(
                    url=self.target.location, role=f"the bucket of target {self.name!r}"
                ) from exc
            raise
        self._opened.append(repo)
        return repo

    def connect(self) -> None:
        # The storage client and the config read, while the worker's first reads run.
        # A repository that is not there yet (a backfill creates it) or any other
        # failure is left to the step that needs the repository: it says so clearly.
        with contextlib.suppress(Exception):
            self._open(create=False)

    def prestage(self) -> None:
        """Open worker 0's session on the target branch while the start's reads run.

        A writable session reads the repository's refs twice, one read after
        the other: two round trips on the setup every other worker waits
        for, which need not wait for the start's answer. Nothing is written;
        when the start finds the job set up or committed, the session is
        dropped. Its base is read beside the start's look for the
        ``committed`` marker rather than after it, which changes nothing
        the base is trusted for: a job committed after the base was read
        is still found, by publishing the setup once (``publish_setup``) and
        by the commit's compare-and-set from that base.
        """
        with contextlib.suppress(Exception):  # staging opens it again and says what fails
            session = self._open(create=False).writable_session(self.target.branch)
            self._prestaged.append(session)

    def find_commit(self, base: str | None) -> str | None:
        try:
            # The branch's history with one read of the refs (its tip, then the tip's, is two).
            history = self._open(create=False).ancestry(branch=self.target.branch)
        except icechunk.IcechunkError:
            return None  # no repository or branch yet: nothing can have been committed
        found = job_snapshot_in(history, self.job_id, base, self.scan, self.run_start)
        return None if found is None else str(found.id)

    def _finished_by_another(self, refused: icechunk.IcechunkError) -> icechunk.Repository:
        """The repository another creator is finishing, or why there will be none.

        icechunk creates a repository by writing its first snapshot and
        transaction log, then the ``repo`` object; a creator killed in between
        leaves a prefix that is neither empty nor a repository, and every
        later create is refused ("only be created in clean prefixes"). A live
        twin of worker 0 may be in that window: wait for its ``repo`` a
        while. Past that, the creator is dead; nothing of any job is there,
        but deleting objects from a store is the operator's call, so the
        error lists them and says so.
        """
        storage = self.target.storage
        deadline = time.monotonic() + self.target.creator_grace
        while time.monotonic() < deadline:
            if icechunk.Repository.exists(storage):
                return self._open(create=False)
            time.sleep(0.5)
        try:
            keys = sorted(info.key for info in storage.list_objects_metadata())
        except icechunk.IcechunkError:
            keys = []
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise MissingLocationError(
            url=self.target.location,
            role=f"the repository of target {self.name!r}",
            detail=f"its creation was cut short (a pod killed while creating it): the prefix "
            f"holds {shown or 'objects'} but no repository, and icechunk creates only in an "
            "empty prefix",
            fix="delete those objects (they hold no data)",
        ) from refused

    def stage(self, *, primary: bool) -> _Staging:
        try:
            repo = self._open(create=self.target.create)
        except icechunk.IcechunkError as exc:
            if self.target.create and "clean prefix" in str(exc):
                repo = self._finished_by_another(exc)
            elif self.target.create or "doesn't exist" not in str(exc):
                raise
            else:
                raise MissingLocationError(
                    url=self.target.location,
                    role=f"the repository of target {self.name!r}",
                    detail="this job extends a dataset and may not create one (create=False)",
                    fix="check the URL, or run a backfill first",
                ) from exc
        # A clean fork of the target branch: its base S0 is the snapshot the
        # session read, so nothing can slip in between reading S0 and forking.
        # Worker 0 moves no ref at all, so two copies of it cannot trip each other.
        session = (
            self._prestaged.pop() if self._prestaged else repo.writable_session(self.target.branch)
        )
        base = session.snapshot_id
        if primary:
            # A twin of this worker may have finished the whole job after our
            # first look: a base read now would sit above the job's commit, and
            # every later check scans only down to the base. The scan runs
            # while worker 0 prepares; the setup is sealed only once it is clear.
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icechunk-coop-scan")
            try:
                done = pool.submit(
                    find_job_commit, repo, base, self.job_id, None, self.scan, self.run_start
                )
            finally:
                pool.shutdown(wait=False)
            return _Staging(base=base, prepared=session.fork(), done=done, job_id=self.job_id)
        found = find_job_snapshot(repo, base, self.job_id, None, self.scan, self.run_start)
        if found is not None and found.parent_id is not None:
            # This replica holds the job from an attempt whose setup is gone (a
            # one-worker job restarted between targets): stage at the job's own
            # base, so the merge finds the job landed here and leaves it alone.
            branch = attempt_branch(self.job_id)
            log.info("job %r: %s holds the job already; staging at its base on %s", self.job_id,
                     self.name, branch)  # fmt: skip
            repo.create_branch(branch, found.parent_id)
            session = repo.writable_session(branch)
        return _Staging(base=session.snapshot_id, prepared=session.fork())

    def _own(self, state: TargetSetup) -> IcechunkSetup:
        if not isinstance(state, IcechunkSetup):
            raise ForeignPayloadError(
                location=f"setup of target {self.name!r}",
                reason="it was set up as a plain zarr target, this worker has an Icechunk one",
            )
        return state

    def fork(self, state: TargetSetup) -> _Fork:
        # A private copy: the setup record may be shared within a process.
        session = _private_copy(self._own(state).fork)
        return _Fork(session=session, store=RecordingStore(session.store))

    def changes(
        self, fork: icechunk.ForkSession | None, writes: Writes | None
    ) -> dict[str, str | None]:
        if writes is None:  # a result of a release before workers listed their changes
            return {} if fork is None else fork_changes(fork, Writes())
        return {key: (None if dig == UNKNOWN else dig) for key, dig in writes.keys.items()}

    def merge(
        self, state: TargetSetup, forks: Sequence[icechunk.ForkSession | None]
    ) -> IcechunkMerge:
        own = self._own(state)
        repo = self._open(create=False)
        session = repo.writable_session(self.target.branch)
        on_target = session.snapshot_id == own.base
        branch = self.target.branch
        if not on_target:  # the target moved since the setup: merge beside it, at S0
            branch = attempt_branch(self.job_id)
            # Named in the log: a pod killed while holding it leaves it for `clean`,
            # and the log says whose it was.
            log.info("job %r: merging %s on %s", self.job_id, self.name, branch)
            repo.create_branch(branch, own.base)
            session = repo.writable_session(branch)
        session.merge(own.prepared, *[f for f in forks if f is not None])
        return IcechunkMerge(
            target=self.target,
            job_id=self.job_id,
            base=own.base,
            branch=branch,
            repo=repo,
            session=session,
            run_start=self.run_start,
            on_target=on_target,
        )

    def cleanup(self) -> None:
        repo = self._open(create=False)
        prefix = job_branch_prefix(self.job_id)
        for branch in sorted(b for b in repo.list_branches() if b.startswith(prefix)):
            try:
                repo.delete_branch(branch)
            except icechunk.IcechunkError as exc:  # a twin deleted it first: fine
                log.debug("deleting %s: %s", branch, exc)
