"""The cooperative-write protocol: N workers, one atomic, conflict-checked commit.

The flow (one job, N workers, every step idempotent)::

    worker 0          prepare: fork a clean session M of the target branch at
                      its tip S0, let the user make structural
                      changes in M (create, resize), fork W from M, publish
                      SETUP = {S0, M, W} once (put-if-absent).
    every worker      wait for SETUP, write its chunks into its copy of W,
                      publish RESULT[i] = {its W, its JSON result}.
    worker N-1        wait for all RESULT and pin them as PLAN (put-if-absent,
                      so a restarted finalizer commits the very same results
                      to the targets left); open a session on a temporary
                      branch of its own created at S0 (the forks' own base),
                      merge M and every W,
                      write final metadata, rebase over whatever landed on the
                      target since S0 with conflict detection (every target
                      first), then commit replicas and, last, the primary,
                      each by compare-and-set of the target branch.

Why so: merging into a session opened *after* another writer committed
silently overwrites that writer's changes (see RESEARCH.md, "the
silent-overwrite trap"). Merging on S0 and rebasing with
``ConflictDetector`` is what turns that into either a clean rebase or an
error. Each commit carries the job id in its metadata, which is how a
restarted finalizer knows what it already did.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import icechunk

from icechunk_coop._errors import (
    AlreadyCommittedError,
    BranchKeptMovingError,
    CommitConflictError,
    ConfigurationError,
    ForeignPayloadError,
    ForeignResultError,
    MissingSecretError,
    WorkersTotalMismatchError,
)
from icechunk_coop._identity import WorkerIdentity
from icechunk_coop._payload import INSECURE_ENV, SECRET_ENV, Sealer
from icechunk_coop._rendezvous import Rendezvous
from icechunk_coop._targets import IcechunkTarget, Stores, Target, ZarrTarget
from icechunk_coop._waiting import WaitPolicy
from icechunk_coop._zarr_staging import StagedMetadataStore, open_zarr_store, publish_staged

__all__ = [
    "COMMITTED",
    "PLAN",
    "SETUP",
    "CooperativeJob",
    "Forks",
    "Merged",
    "WorkerOutcome",
    "get_forked_session",
    "get_merged_sessions",
    "is_first_worker",
    "is_last_worker",
    "job_branch_prefix",
    "job_of_branch",
    "result_name",
]

log = logging.getLogger(__name__)

SETUP = "setup"
PLAN = "plan"
COMMITTED = "committed"
METADATA_KEY = "icechunk_coop"
_ANCESTRY_SCAN = 500

Prepare = Callable[[Stores], None]
Work = Callable[[Stores], Any]
Finalize = Callable[[Stores, list[Any]], None]


def is_first_worker(identity: WorkerIdentity) -> bool:
    """Worker 0 prepares the job (structural changes, the fork everyone writes into)."""
    return identity.is_first


def is_last_worker(identity: WorkerIdentity) -> bool:
    """The highest index merges and commits: with parallelism < completions it starts last."""
    return identity.is_last


def result_name(index: int) -> str:
    """The rendezvous name of worker ``index``'s result."""
    return f"result-{index}"


BRANCH_PREFIX = "icechunk-coop/"


def job_branch_prefix(job_id: str) -> str:
    """Where a job's temporary branches live: ``icechunk-coop/<job>/<attempt>``.

    Each merge attempt of a finalizer gets a branch of its own, so two copies
    of the last worker never reset or delete each other's work in progress.
    All of them are deleted after the commit (``icechunk-coop clean`` removes
    those of jobs that died).
    """
    return f"{BRANCH_PREFIX}{job_id}/"


def job_of_branch(branch: str) -> str | None:
    """The job a temporary branch belongs to, or None for any other branch."""
    if not branch.startswith(BRANCH_PREFIX):
        return None
    return branch[len(BRANCH_PREFIX) :].split("/", 1)[0] or None


def _is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _is_local(target: Target) -> bool:
    """Whether a target lives on this machine's filesystem (no credentials involved)."""
    if isinstance(target, ZarrTarget):
        return _is_local_url(target.url)
    # icechunk.Storage exposes its kind only through its repr; anything else fails closed.
    return "type: local filesystem" in repr(target.storage)


def _describe(conflict: icechunk.Conflict) -> str:
    """One line per conflict: what kind, where, and which chunks (a few of them)."""
    text = f"{conflict.conflict_type} at {conflict.path}"
    chunks = list(conflict.conflicted_chunks or [])
    if chunks:
        shown = ", ".join(str(tuple(c)) for c in chunks[:5])
        more = f" and {len(chunks) - 5} more" if len(chunks) > 5 else ""
        text += f" (chunks {shown}{more})"
    return text


def _summary(exc: BaseException) -> str:
    # Every non-blank line: icechunk's errors span several, and their last is blank.
    lines = traceback.format_exception_only(exc)
    return " ".join(" ".join(line.split()) for line in lines if line.strip())[:1500]


def _jsonable(result: Any, index: int) -> Any:
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"worker {index}'s result is not JSON-serialisable ({exc}); return plain "
            "dicts, lists, strings and numbers"
        ) from exc
    return result


@attrs.frozen(kw_only=True)
class Forks:
    """What a worker writes into: one fork per Icechunk target, a staging store per zarr one."""

    setup: Mapping[str, Any] = attrs.field(repr=False)
    sessions: Mapping[str, icechunk.ForkSession] = attrs.field(repr=False)
    zarr_stores: Mapping[str, StagedMetadataStore] = attrs.field(repr=False)
    stores: Stores


@attrs.frozen(kw_only=True)
class Merged:
    """The last worker's view: merged writable sessions and every worker's result."""

    branch: str
    sessions: Mapping[str, icechunk.Session] = attrs.field(repr=False)
    repos: Mapping[str, icechunk.Repository] = attrs.field(repr=False)
    zarr_stores: Mapping[str, StagedMetadataStore] = attrs.field(repr=False)
    stores: Stores
    results: list[Any]


@attrs.frozen(kw_only=True)
class WorkerOutcome:
    """What one worker did: its result, and for the last worker the snapshots committed."""

    job_id: str
    worker_index: int
    status: Literal["published", "committed", "already-committed"]
    result: Any = None
    snapshots: Mapping[str, str] = attrs.field(factory=dict)
    seconds: Mapping[str, float] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class CooperativeJob:
    """One worker's handle on a cooperative write.

    ``primary`` is committed last; ``replicas`` (Icechunk or plain zarr v3)
    before it, in the order given. ``cleanup`` removes the job's rendezvous
    blobs after the commit (a small ``committed`` marker stays so a late
    retry finds the job done; ``icechunk-coop clean`` removes those).
    """

    identity: WorkerIdentity
    rendezvous: Rendezvous
    primary: IcechunkTarget
    replicas: tuple[Target, ...] = ()
    cleanup: bool = True
    commit_attempts: int = 3

    def __attrs_post_init__(self) -> None:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"target names must be unique, got {names}")
        if self.rendezvous.job_id != self.identity.job_id:
            raise ConfigurationError(
                f"rendezvous is for job {self.rendezvous.job_id!r}, "
                f"identity says {self.identity.job_id!r}"
            )
        if not self._solo and not self.rendezvous.sealer.authenticated:
            remote = [t.name for t in self.targets if not _is_local(t)]
            if not _is_local_url(self.rendezvous.url):
                remote.append(f"rendezvous {self.rendezvous.url}")
            if remote:
                # Unsealed frames are readable by anyone who can list the bucket, and a
                # pickled session carries its storage configuration: keep the opt-out
                # to repositories on this machine, where there is no credential to leak.
                raise MissingSecretError(
                    f"job {self.job_id!r}: {INSECURE_ENV} is for local development and "
                    f"{', '.join(remote)} are not local; set {SECRET_ENV} to the "
                    "same random value in every worker (e.g. from a Kubernetes Secret)"
                )

    @classmethod
    def from_env(
        cls,
        *,
        rendezvous_url: str,
        primary: IcechunkTarget,
        replicas: Sequence[Target] = (),
        storage_options: Mapping[str, Any] | None = None,
        policy: WaitPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        cleanup: bool = True,
    ) -> CooperativeJob:
        """Identity and secret from the orchestrator's environment."""
        return cls.for_identity(
            WorkerIdentity.from_env(environ),
            rendezvous_url=rendezvous_url,
            primary=primary,
            replicas=replicas,
            storage_options=storage_options,
            policy=policy,
            environ=environ,
            cleanup=cleanup,
        )

    @classmethod
    def for_identity(
        cls,
        identity: WorkerIdentity,
        *,
        rendezvous_url: str,
        primary: IcechunkTarget,
        replicas: Sequence[Target] = (),
        storage_options: Mapping[str, Any] | None = None,
        policy: WaitPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        cleanup: bool = True,
    ) -> CooperativeJob:
        """The job of an explicit identity; the secret comes from the environment.

        A single worker exchanges no blobs, so it needs no secret.
        """
        env = os.environ if environ is None else environ
        if identity.workers_total == 1 and not env.get(SECRET_ENV):
            sealer = Sealer(job_id=identity.job_id, secret=None)
        else:
            sealer = Sealer.from_env(identity.job_id, env)
        rendezvous = Rendezvous.for_job(
            rendezvous_url,
            job_id=identity.job_id,
            sealer=sealer,
            storage_options=storage_options,
            policy=policy,
        )
        return cls(
            identity=identity,
            rendezvous=rendezvous,
            primary=primary,
            replicas=tuple(replicas),
            cleanup=cleanup,
        )

    # ---- small facts --------------------------------------------------------

    @property
    def targets(self) -> tuple[Target, ...]:
        """Commit order: replicas first, the primary last."""
        return (*self.replicas, self.primary)

    @property
    def job_id(self) -> str:
        return self.identity.job_id

    @property
    def _solo(self) -> bool:
        # One worker needs no meeting point at all.
        return self.identity.workers_total == 1

    def _where(self) -> str:
        i = self.identity
        return f"job {self.job_id!r} worker {i.worker_index}/{i.workers_total}"

    def _find_job_commit(self, repo: icechunk.Repository, tip: str, base: str | None) -> str | None:
        """The snapshot this job committed among the ancestors of ``tip``, if any.

        With the job's ``base`` known the scan goes all the way down to it:
        this job's commit, if it exists, lies above its base however many
        commits others made since. Without it (no setup left to tell) the
        scan stops after ``_ANCESTRY_SCAN`` snapshots.
        """
        for n, info in enumerate(repo.ancestry(snapshot_id=tip)):
            meta = (info.metadata or {}).get(METADATA_KEY) or {}
            if isinstance(meta, dict) and meta.get("job") == self.job_id:
                return str(info.id)
            if info.id == base or (base is None and n >= _ANCESTRY_SCAN):
                return None
        return None

    def _commit_state(self) -> tuple[Literal["marked", "found"], str | None] | None:
        """Whether the primary holds this job: from the COMMITTED marker, or found there."""
        base = None
        if not self._solo:
            if self.rendezvous.read(COMMITTED) is not None:
                return "marked", None
            setup = self.rendezvous.read(SETUP, content="pickle")
            if setup is not None:
                base = setup["targets"][self.primary.name]["base"]
        try:
            repo = self.primary.open(create=False)
            tip = repo.lookup_branch(self.primary.branch)
        except icechunk.IcechunkError:
            return None  # no repository or branch yet: nothing can have been committed
        found = self._find_job_commit(repo, tip, base)
        return None if found is None else ("found", found)

    def is_committed(self) -> bool:
        """True when this job's commit is already on the primary (a late retry)."""
        return self._commit_state() is not None

    # ---- step 1: setup (worker 0) and loading it (everyone) ------------------

    def _prepare_setup(self, prepare: Prepare | None) -> dict[str, Any]:
        token = uuid.uuid4().hex
        prepared: dict[str, icechunk.ForkSession] = {}
        staging: dict[str, StagedMetadataStore] = {}
        state: dict[str, dict[str, Any]] = {}
        for target in self.targets:
            if isinstance(target, ZarrTarget):
                staging[target.name] = StagedMetadataStore(open_zarr_store(target))
                continue
            repo = target.open(create=True)
            # A clean fork of the target branch: its base S0 is the snapshot the
            # session read, so nothing can slip in between reading S0 and forking.
            # Worker 0 moves no ref at all; only the finalizer uses the job branch,
            # so two copies of worker 0 (a duplicated pod) cannot trip each other.
            session = repo.writable_session(target.branch)
            if target is self.primary:
                # A twin of this worker may have finished the whole job after our
                # first look: a base read now would sit above the job's commit, and
                # every later check scans only down to the base.
                found = self._find_job_commit(repo, session.snapshot_id, None)
                if found is not None:
                    raise AlreadyCommittedError(job=self.job_id, snapshot=found)
            prepared[target.name] = session.fork()
            state[target.name] = {"kind": "icechunk", "base": session.snapshot_id}
        stores = self._stores({**{k: v.store for k, v in prepared.items()}, **staging})
        if prepare is not None:
            log.info("%s: preparing (structural changes)", self._where())
            prepare(stores)
        for name, fork in prepared.items():
            state[name]["prepared"] = fork
            state[name]["fork"] = fork.fork()
        for name, store in staging.items():
            state[name] = {"kind": "zarr", "metadata": dict(store.staged)}
        return {
            "token": token,
            "job": self.job_id,
            "workers_total": self.identity.workers_total,
            "targets": state,
            "created": time.time(),
        }

    def _stores(self, by_name: Mapping[str, Any]) -> Stores:
        return Stores(
            primary=by_name[self.primary.name],
            replicas=tuple(by_name[t.name] for t in self.replicas),
        )

    def _check_total(self, setup: Mapping[str, Any]) -> None:
        if setup["workers_total"] != self.identity.workers_total:
            raise WorkersTotalMismatchError(
                job=self.job_id,
                worker_index=self.identity.worker_index,
                expected=setup["workers_total"],
                got=self.identity.workers_total,
            )

    def setup(self, prepare: Prepare | None = None) -> Mapping[str, Any]:
        """Worker 0 publishes the job's setup once; everyone else waits for it.

        A restarted worker 0 reuses a published setup (and so its base
        snapshot): it never re-forks from a branch that moved meanwhile.
        """
        if not self._solo:
            # This index is running (again): withdraw its failure markers before
            # anything else, so that peers retried meanwhile wait for it instead
            # of failing on the marker of an attempt that is already over.
            self.rendezvous.clear_failure(result_name(self.identity.worker_index))
            if self.identity.is_first:
                self.rendezvous.clear_failure(SETUP)
        if self.identity.is_first:
            existing = None if self._solo else self.rendezvous.read(SETUP, content="pickle")
            if existing is not None:
                log.info("%s: reusing the setup already published", self._where())
                setup = existing
            else:
                setup = self._prepare_setup(prepare)
                if not self._solo:
                    won, setup = self.rendezvous.publish_once(SETUP, setup, content="pickle")
                    if not won:
                        log.info("%s: another copy of worker 0 published first", self._where())
                    elif self.rendezvous.read(COMMITTED) is not None:
                        # Ours landed only because a finished job's namespace was
                        # cleaned (COMMITTED outlives the cleanup): it is done.
                        self.rendezvous.remove(SETUP)
                        raise AlreadyCommittedError(job=self.job_id, snapshot=None)
        else:
            setup = self.rendezvous.wait_for(SETUP, content="pickle")
        self._check_total(setup)
        if setup.get("job") != self.job_id:  # sealed frames already check this; belt and braces
            raise ConfigurationError(f"setup belongs to job {setup.get('job')!r}")
        return dict(setup)

    def forks(self, setup: Mapping[str, Any]) -> Forks:
        """This worker's own copy of every target to write into."""
        sessions: dict[str, icechunk.ForkSession] = {}
        zarr_stores: dict[str, StagedMetadataStore] = {}
        for target in self.targets:
            state = setup["targets"][target.name]
            if isinstance(target, ZarrTarget):
                zarr_stores[target.name] = StagedMetadataStore(
                    open_zarr_store(target), dict(state["metadata"])
                )
            else:
                # A private copy: the setup dict may be shared within a process.
                sessions[target.name] = state["fork"].fork()
        stores = self._stores({**{k: v.store for k, v in sessions.items()}, **zarr_stores})
        return Forks(setup=setup, sessions=sessions, zarr_stores=zarr_stores, stores=stores)

    # ---- step 2: publish a worker's result -----------------------------------

    def _result_blob(self, forks: Forks, result: Any) -> dict[str, Any]:
        return {
            "token": forks.setup["token"],
            "index": self.identity.worker_index,
            "workers_total": self.identity.workers_total,
            "forks": dict(forks.sessions),
            "result": _jsonable(result, self.identity.worker_index),
        }

    def publish_result(self, forks: Forks, result: Any) -> None:
        """Publish this worker's fork(s) and result, replacing an earlier attempt's."""
        blob = self._result_blob(forks, result)
        if not self._solo:
            self.rendezvous.publish(result_name(self.identity.worker_index), blob, content="pickle")
        log.info("%s: published its result", self._where())

    # ---- step 3: merge and commit (last worker) --------------------------------

    def collect_results(self, setup: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Wait for every worker's result and refuse any that is not of this setup."""
        total = self.identity.workers_total
        blobs = self.rendezvous.wait_for_all(
            [result_name(i) for i in range(total)], content="pickle"
        )
        results = []
        for index in range(total):
            blob = blobs[result_name(index)]
            if blob.get("index") != index:
                raise ForeignResultError(
                    job=self.job_id, worker_index=index, reason=f"it says index {blob['index']}"
                )
            if blob.get("workers_total") != total:
                raise WorkersTotalMismatchError(
                    job=self.job_id, worker_index=index, expected=total, got=blob["workers_total"]
                )
            if blob.get("token") != setup["token"]:
                raise ForeignResultError(
                    job=self.job_id,
                    worker_index=index,
                    reason="it was written against another setup of this job "
                    f"(setup {blob.get('token')!r}, current {setup['token']!r})",
                )
            missing = {t.name for t in self.targets if isinstance(t, IcechunkTarget)} - set(
                blob["forks"]
            )
            if missing:
                raise ForeignResultError(
                    job=self.job_id,
                    worker_index=index,
                    reason=f"it has no fork for target(s) {', '.join(sorted(missing))}",
                )
            results.append(blob)
        return results

    def merge(self, setup: Mapping[str, Any], blobs: Sequence[Mapping[str, Any]]) -> Merged:
        """Merge every fork into a writable session based on the forks' own base."""
        sessions: dict[str, icechunk.Session] = {}
        repos: dict[str, icechunk.Repository] = {}
        zarr_stores: dict[str, StagedMetadataStore] = {}
        branch = job_branch_prefix(self.job_id) + uuid.uuid4().hex[:12]
        for target in self.targets:
            state = setup["targets"][target.name]
            if isinstance(target, ZarrTarget):
                zarr_stores[target.name] = StagedMetadataStore(
                    open_zarr_store(target), dict(state["metadata"])
                )
                continue
            repo = target.open(create=False)
            repo.create_branch(branch, state["base"])
            session = repo.writable_session(branch)
            session.merge(state["prepared"], *[b["forks"][target.name] for b in blobs])
            sessions[target.name], repos[target.name] = session, repo
        stores = self._stores({**{k: v.store for k, v in sessions.items()}, **zarr_stores})
        return Merged(
            branch=branch,
            sessions=sessions,
            repos=repos,
            zarr_stores=zarr_stores,
            stores=stores,
            results=[b["result"] for b in blobs],
        )

    def _provenance(
        self, target: IcechunkTarget, session: icechunk.Session, base: str, token: str
    ) -> dict[str, Any]:
        diff = session.status()
        i = self.identity
        return {
            METADATA_KEY: {
                "job": self.job_id,
                "job_name": i.job_name,
                "job_uid": i.job_uid,
                "job_start": i.job_start.isoformat() if i.job_start else None,
                "workers": i.workers_total,
                "setup": token,
                "target": target.name,
                "base": base,
                "written": {
                    "chunks": {p: len(c) for p, c in sorted(diff.updated_chunks.items())},
                    "new_arrays": sorted(diff.new_arrays),
                    "updated_arrays": sorted(diff.updated_arrays),
                    "new_groups": sorted(diff.new_groups),
                    "updated_groups": sorted(diff.updated_groups),
                },
            }
        }

    def _done_targets(
        self, setup: Mapping[str, Any], merged: Merged
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Targets that hold this job already, and the tips of those that do not.

        The check and the tip come from one read of the branch: the
        compare-and-set later moves the branch only from that very tip, so a
        duplicate finalizer that committed after this read makes ours fail
        (and the next attempt find its commit) instead of landing twice.
        """
        done: dict[str, str] = {}
        tips: dict[str, str] = {}
        for target in self.targets:
            if isinstance(target, ZarrTarget):
                if not self._solo and self.rendezvous.read(f"{COMMITTED}-{target.name}"):
                    done[target.name] = "zarr"
                continue
            repo = merged.repos[target.name]
            tip = repo.lookup_branch(target.branch)
            found = self._find_job_commit(repo, tip, setup["targets"][target.name]["base"])
            if found:
                done[target.name] = found
            else:
                tips[target.name] = tip
        return done, tips

    def _commit_once(
        self, setup: Mapping[str, Any], merged: Merged, message: str
    ) -> tuple[dict[str, str], bool]:
        """One attempt. Returns (snapshots by target, finished)."""
        done, tips = self._done_targets(setup, merged)
        pending = [t for t in self.targets if t.name not in done]
        if done:
            log.info("%s: already committed: %s", self._where(), ", ".join(done))
        # Check every target before committing any: a conflict on the primary must
        # not leave replicas holding this job's data.
        for target in pending:
            if not isinstance(target, IcechunkTarget):
                continue
            repo, session = merged.repos[target.name], merged.sessions[target.name]
            base = setup["targets"][target.name]["base"]
            tip = tips[target.name]
            if tip != base:
                log.info("%s: %s moved since setup; rebasing", self._where(), target.name)
                repo.reset_branch(merged.branch, tip)
                try:
                    session.rebase(icechunk.ConflictDetector())
                except icechunk.RebaseFailedError as exc:
                    raise CommitConflictError(
                        job=self.job_id,
                        target=target.name,
                        conflicts=[_describe(c) for c in exc.conflicts] or [str(exc)],
                        committed=sorted(done),
                    ) from exc
        for target in pending:
            if isinstance(target, ZarrTarget):
                staged = merged.zarr_stores[target.name]
                keys = publish_staged(staged.wrapped, staged.staged)
                if not self._solo:
                    self.rendezvous.publish(f"{COMMITTED}-{target.name}", {"keys": keys})
                done[target.name] = "zarr"
                log.info("%s: wrote %d zarr.json to %s", self._where(), len(keys), target.name)
                continue
            repo, session = merged.repos[target.name], merged.sessions[target.name]
            base = setup["targets"][target.name]["base"]
            metadata = self._provenance(target, session, base, setup["token"])
            try:
                snapshot = session.commit(
                    f"{message} [job {self.job_id}, {self.identity.workers_total} workers]",
                    metadata=metadata,
                    allow_empty=True,
                )
                repo.reset_branch(target.branch, snapshot, from_snapshot_id=tips[target.name])
            except icechunk.ConflictError as exc:
                # The target moved: the next attempt looks again (and finds our twin's
                # commit, if that is what moved it).
                log.warning(
                    "%s: %s moved while committing (%s); trying again",
                    self._where(),
                    target.name,
                    type(exc).__name__,
                )
                return done, False
            done[target.name] = snapshot
            log.info("%s: committed %s as %s", self._where(), target.name, snapshot)
        return done, True

    def commit(
        self,
        setup: Mapping[str, Any],
        blobs: Sequence[Mapping[str, Any]],
        *,
        message: str,
        finalize: Finalize | None = None,
    ) -> dict[str, str]:
        """Merge, finalize and commit every target that does not hold this job yet.

        Replicas first, the primary last; a target already holding this job's
        commit (a restarted finalizer) is left alone. If a target moves between
        the rebase and the compare-and-set, the merge is rebuilt and tried again.
        """
        blobs = self.pin_plan(setup, blobs)
        snapshots: dict[str, str] = {}
        for attempt in range(1, self.commit_attempts + 1):
            try:
                merged = self.merge(setup, blobs)
                if finalize is not None:
                    finalize(merged.stores, merged.results)
                snapshots, finished = self._commit_once(setup, merged, message)
            except icechunk.RefNotFoundError as exc:
                # A twin finalizer that finished deleted our temporary branch under
                # us: look again, and find its commit.
                log.warning("%s: %s; looking again", self._where(), _summary(exc)[:200])
                continue
            if finished:
                self._after_commit(snapshots)
                return snapshots
            log.info("%s: commit attempt %d did not land", self._where(), attempt)
        raise BranchKeptMovingError(
            job=self.job_id, attempts=self.commit_attempts, committed=sorted(snapshots)
        )

    def pin_plan(
        self, setup: Mapping[str, Any], blobs: Sequence[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]]:
        """Fix, once per job, which results are committed; return the pinned ones.

        Targets commit one after another. A finalizer restarted between two of
        them must commit the same merge to the rest, even if a worker has run
        again meanwhile and published a different result: otherwise a replica
        and the primary would hold different data for one job. So the first
        finalizer stores the results it merges (put-if-absent) before any
        target moves, and every later attempt commits exactly those. (Plain
        zarr targets get their chunks from the workers directly: a worker run
        again after the plan was pinned rewrites them there.)
        """
        if self._solo:
            return list(blobs)
        plan = {"token": setup["token"], "blobs": list(blobs)}
        won, pinned = self.rendezvous.publish_once(PLAN, plan, content="pickle")
        if pinned.get("token") != setup["token"]:
            raise ForeignPayloadError(
                location=self.rendezvous.location(PLAN),
                reason="this commit plan was pinned by another setup of this job; remove it "
                "only if no target holds the job",
            )
        if not won:
            log.info("%s: committing the results an earlier attempt pinned", self._where())
        return list(pinned["blobs"])

    def _after_commit(self, snapshots: Mapping[str, str]) -> None:
        prefix = job_branch_prefix(self.job_id)
        for target in self.targets:
            if isinstance(target, IcechunkTarget):
                repo = target.open(create=False)
                for branch in sorted(b for b in repo.list_branches() if b.startswith(prefix)):
                    try:
                        repo.delete_branch(branch)
                    except icechunk.IcechunkError as exc:  # a twin deleted it first: fine
                        log.debug("deleting %s: %s", branch, exc)
        if self._solo:
            return
        # COMMITTED first, and the cleanup keeps it: there is never a moment when
        # a late worker finds neither the marker nor the setup.
        self.rendezvous.publish(COMMITTED, {"snapshots": dict(snapshots), "at": time.time()})
        if self.cleanup:
            self.rendezvous.remove_all(keep=(COMMITTED,))

    # ---- the one call per worker ---------------------------------------------

    def run(
        self,
        *,
        work: Work,
        message: str,
        prepare: Prepare | None = None,
        finalize: Finalize | None = None,
    ) -> WorkerOutcome:
        """Do this worker's part of the job, whatever its index.

        ``prepare(stores)`` runs on worker 0 only: create arrays, grow the
        append dimension. ``work(stores)`` runs on every worker, writes chunks
        only, and returns a JSON-serialisable result. ``finalize(stores,
        results)`` runs on the last worker after the merge, with every result
        in index order: write final metadata there.
        """
        i = self.identity
        seconds: dict[str, float] = {}
        started = time.monotonic()
        setup_published = False
        try:
            # Inside the try: a setup this worker cannot open (another secret or
            # icechunk version) must leave a failure marker, or peers wait it out.
            state = self._commit_state()
            if state is not None:
                return self._already_committed(found=state[1])
            try:
                setup = self.setup(prepare)
            except AlreadyCommittedError as exc:
                return self._already_committed(found=exc.snapshot)
            setup_published = True
            seconds["setup"] = time.monotonic() - started
            plan = None
            if i.is_last and not self._solo:
                plan = self.rendezvous.read(PLAN, content="pickle")
            if plan is not None:
                # A finalizer before us pinned what to commit: finish that, redo nothing.
                log.info("%s: finishing the commit an earlier attempt began", self._where())
                blobs = plan["blobs"]
                result = blobs[i.worker_index]["result"]
            else:
                forks = self.forks(setup)
                t = time.monotonic()
                result = work(forks.stores)
                seconds["work"] = time.monotonic() - t
                if not i.is_last:
                    self.publish_result(forks, result)
                    return WorkerOutcome(
                        job_id=self.job_id,
                        worker_index=i.worker_index,
                        status="published",
                        result=result,
                        seconds=seconds,
                    )
                if self._solo:
                    blobs = [self._result_blob(forks, result)]
                else:
                    self.publish_result(forks, result)
                    t = time.monotonic()
                    blobs = self.collect_results(setup)
                    seconds["wait"] = time.monotonic() - t
            t = time.monotonic()
            snapshots = self.commit(setup, blobs, message=message, finalize=finalize)
            seconds["commit"] = time.monotonic() - t
        except Exception as exc:
            if not self._solo:
                self._report_failure(exc, setup_published)
            raise
        return WorkerOutcome(
            job_id=self.job_id,
            worker_index=i.worker_index,
            status="committed",
            result=result,
            snapshots=snapshots,
            seconds=seconds,
        )

    def _already_committed(self, *, found: str | None) -> WorkerOutcome:
        log.info("%s: the job already committed; nothing to do", self._where())
        if found is not None:
            # Found on the primary, not from the marker: its finalizer may have died
            # between the commit and the cleanup. Finish that (it is idempotent).
            self._after_commit({self.primary.name: found})
        return WorkerOutcome(
            job_id=self.job_id, worker_index=self.identity.worker_index, status="already-committed"
        )

    def _report_failure(self, exc: BaseException, setup_published: bool) -> None:
        summary = _summary(exc)
        log.error("%s failed: %s", self._where(), summary)
        try:
            self.rendezvous.mark_failed(result_name(self.identity.worker_index), summary)
            if self.identity.is_first and not setup_published:
                self.rendezvous.mark_failed(SETUP, summary)
        except Exception as marker_exc:  # the original error matters more
            log.warning("could not publish the failure marker: %s", marker_exc)


def get_forked_session(job: CooperativeJob, prepare: Prepare | None = None) -> Forks:
    """Worker 0 prepares and publishes the setup; the others wait and load it."""
    return job.forks(job.setup(prepare))


def get_merged_sessions(job: CooperativeJob, forks: Forks) -> Merged:
    """On the last worker: wait for every result and merge them (nothing committed)."""
    return job.merge(forks.setup, job.collect_results(forks.setup))
