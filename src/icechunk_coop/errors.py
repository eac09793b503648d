"""One error tree, grouped by what a handler does next.

::

    CoopError                                coop
    ├── ConfigurationError (ValueError)      configuration           fix the input
    │   ├── IdentityError                    identity
    │   ├── MissingSecretError               missing-secret
    │   ├── MissingLocationError             missing-location
    │   ├── WorkersTotalMismatchError        workers-total-mismatch
    │   └── JobNameReusedError               job-name-reused
    ├── PayloadError                         payload                 a blob was refused
    │   ├── PayloadFormatError               payload-format
    │   ├── PayloadAuthenticationError       payload-authentication
    │   ├── ForeignPayloadError              foreign-payload
    │   └── IcechunkVersionError             icechunk-version
    ├── RetryableError                       retryable               run the worker again
    │   ├── WaitTimeoutError (TimeoutError)  wait-timeout
    │   ├── WorkerFailedError                worker-failed
    │   ├── ForeignResultError               foreign-result
    │   ├── StorageUnreachableError          storage-unreachable
    │   └── BranchKeptMovingError ─┐
    └── CommitOutcomeError         │         commit-outcome          see what was committed
        ├── CommitConflictError    │         commit-conflict
    ├── OverlapError           │         overlap                 align the region jobs
    │   ├── ChunkOverlapError  │         chunk-overlap
    │   └── RegionOverlapError │         region-overlap
        ├── AlreadyCommittedError  │         already-committed
        ├── ShrinkRefusedError     │         shrink-refused
        └── BranchKeptMovingError ─┘         branch-kept-moving      (one class, both bases)

A handler catches a branch, not a list of leaves: ``except RetryableError``
is a retry policy, ``except ConfigurationError`` means "tell a human", and
``retryable`` is true exactly under ``RetryableError``. ``kind`` is the
stable name for logs and metrics: classes may be renamed, kinds may not.
The four bases are for catching; the library raises their subclasses (the
root itself only where no branch fits, like the CLI demo's summary).

Every error keeps its facts (job, indexes, location, seconds waited) as
plain attributes named like its constructor's parameters, and formats a
message that says what to do. Errors cross process boundaries (another
process reports a worker's failure; ``multiprocessing`` pickles exceptions),
so ``CoopError.__reduce__`` rebuilds any subclass from those attributes and
a new error needs no pickling code of its own.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

_KIND: Final = re.compile(r"[a-z]+(?:-[a-z]+)*")
_NAMED: Final = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_KEYWORDS: Final[dict[type[CoopError], tuple[str, ...]]] = {}


def _keywords(cls: type[CoopError]) -> tuple[str, ...]:
    """What pickling hands back to ``cls.__init__``: its named parameters, once per class."""
    if (known := _KEYWORDS.get(cls)) is None:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        if bad := [p.name for p in params if p.kind not in _NAMED]:
            raise TypeError(f"{cls.__name__}.__init__ must name every parameter: {bad}")
        known = _KEYWORDS[cls] = tuple(p.name for p in params)
    return known


def _rebuild(cls: type[CoopError], fields: dict[str, Any]) -> CoopError:
    return cls(**fields)


def _committed_phrase(committed: list[str]) -> str:
    if committed:
        return f" Targets already committed by this job: {', '.join(committed)}."
    return " No target holds this job's data."


__all__ = [
    "AlreadyCommittedError",
    "BranchKeptMovingError",
    "ChunkOverlapError",
    "CommitConflictError",
    "CommitOutcomeError",
    "ConfigurationError",
    "CoopError",
    "ForeignPayloadError",
    "ForeignResultError",
    "IcechunkVersionError",
    "IdentityError",
    "JobNameReusedError",
    "MissingLocationError",
    "MissingSecretError",
    "OverlapError",
    "PayloadAuthenticationError",
    "PayloadError",
    "PayloadFormatError",
    "RegionOverlapError",
    "RetryableError",
    "ShrinkRefusedError",
    "StorageUnreachableError",
    "WaitTimeoutError",
    "WorkerFailedError",
    "WorkersTotalMismatchError",
]


class CoopError(Exception):
    """Root of every error icechunk-coop raises on purpose.

    ``retryable``: can running the same worker again succeed without anyone
    changing anything? An orchestrator's retry policy keys on it (see
    ``examples/k8s``). ``message`` is the text (derived from the facts in
    subclasses that take facts).
    """

    retryable: ClassVar[bool] = False
    kind: ClassVar[str] = "coop"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message: Final = message

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")  # an inherited kind would name two classes
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise TypeError(f"{cls.__name__} must declare its own kebab-case kind, got {kind!r}")
        _keywords(cls)  # refuse an unpicklable constructor at import, not mid-failure

    def __reduce__(self) -> tuple[Any, ...]:
        names, state = _keywords(type(self)), vars(self)
        if missing := [name for name in names if name not in state]:
            raise TypeError(
                f"{type(self).__name__} must keep its arguments {missing} as attributes"
            )
        # Anything attached later (``add_note``'s ``__notes__``) travels as state;
        # ``message`` does not: the constructor formats it again.
        extra = {k: v for k, v in state.items() if k not in names and k != "message"}
        return (_rebuild, (type(self), {name: state[name] for name in names}), extra or None)


class ConfigurationError(CoopError, ValueError):
    """A value given to us (environment, URL, name, option) is unusable. Fix the input."""

    kind: ClassVar[str] = "configuration"


class IdentityError(ConfigurationError):
    """The orchestrator's environment does not describe a valid worker."""

    kind: ClassVar[str] = "identity"


class MissingSecretError(ConfigurationError):
    """No shared secret was configured and the insecure opt-out was not chosen."""

    kind: ClassVar[str] = "missing-secret"


class MissingLocationError(ConfigurationError):
    """A bucket or prefix we must write to is absent or read-only: no retry creates it."""

    kind: ClassVar[str] = "missing-location"

    def __init__(self, *, url: str, role: str, detail: str = "", fix: str = "") -> None:
        self.url: Final = url
        self.role: Final = role
        self.detail: Final = detail
        self.fix: Final = fix
        why = f": {detail}" if detail else ""
        todo = fix or "create the bucket (or fix the URL)"
        super().__init__(
            f"{role} at {url} does not exist or cannot be written{why}. Fix: {todo}, "
            "and run the job again; nothing was written."
        )


class WorkersTotalMismatchError(ConfigurationError):
    """Workers of one job disagree on how many workers there are."""

    kind: ClassVar[str] = "workers-total-mismatch"

    def __init__(self, *, job: str, worker_index: int, expected: int, got: int) -> None:
        self.job: Final = job
        self.worker_index: Final = worker_index
        self.expected: Final = expected
        self.got: Final = got
        super().__init__(
            f"job {job!r}: worker {worker_index} has WORKERS_TOTAL={got} but the job was set "
            f"up for {expected} workers. Every pod must get the same WORKERS_TOTAL (equal to "
            "the Job's completions); fix the pod spec and re-create the job."
        )


class JobNameReusedError(ConfigurationError):
    """A job without a uid found the committed marker of another run of its name.

    Without a uid a job is known by its name alone, and its committed marker
    outlives the job on purpose (a late pod must find the job done), so a
    later Job of the same name would find it and skip its whole work in
    silence. ``committed_start`` is the job start that run pinned (None when
    its marker does not say), ``own_start`` this worker's, from its
    environment (None when unknown: then a retry of that run and a new run
    cannot be told apart, and refusing is the safe side).
    """

    kind: ClassVar[str] = "job-name-reused"

    def __init__(
        self,
        *,
        job: str,
        committed_at: float,
        committed_start: str | None,
        own_start: str | None,
    ) -> None:
        self.job: Final = job
        self.committed_at: Final = committed_at
        self.committed_start: Final = committed_start
        self.own_start: Final = own_start
        when = datetime.fromtimestamp(committed_at, UTC).isoformat(timespec="seconds")
        start = (
            f"job start {committed_start}" if committed_start else "a job start it did not record"
        )
        why = (
            f"this worker's job start is {own_start}, so this is another run of the same name"
            if own_start
            else "this worker has no job start in its environment (JOB_START, or a CronJob's "
            "Job name), so it cannot tell a retry of that run from a new one"
        )
        super().__init__(
            f"job {job!r} has no uid and a run of that name committed at {when} for {start}; "
            f"{why}. Refused before anything was committed, rather than skipping this run's work. "
            "Fix: give the Job a uid (JOB_UID from the pod label "
            "batch.kubernetes.io/controller-uid, through the downward API), or give it a new "
            "name"
            + (
                f", or forget the old run with `icechunk-coop clean URL --job {job}` (its commit "
                "records its start, so a run with another start then commits)."
                if own_start
                else "."
            )
        )


class PayloadError(CoopError):
    """A blob was refused before anything in it was trusted or unpickled."""

    kind: ClassVar[str] = "payload"

    def __init__(self, *, location: str, reason: str) -> None:
        self.location: Final = location
        self.reason: Final = reason
        super().__init__(f"refused the blob at {location}: {reason}")


class PayloadFormatError(PayloadError):
    """Not a frame we wrote: truncated, unknown format version, or unsigned."""

    kind: ClassVar[str] = "payload-format"


class PayloadAuthenticationError(PayloadError):
    """The frame's tag does not verify: forged, tampered with, or another secret."""

    kind: ClassVar[str] = "payload-authentication"


class ForeignPayloadError(PayloadError):
    """An authentic frame written for another job or another kind of blob."""

    kind: ClassVar[str] = "foreign-payload"


class IcechunkVersionError(PayloadError):
    """The blob was written by an icechunk version whose sessions we cannot load."""

    kind: ClassVar[str] = "icechunk-version"


class RetryableError(CoopError):
    """Running the same worker again can succeed without anyone changing anything."""

    retryable: ClassVar[bool] = True
    kind: ClassVar[str] = "retryable"


class WaitTimeoutError(RetryableError, TimeoutError):
    """A wait reached its deadline; the message names who never arrived."""

    kind: ClassVar[str] = "wait-timeout"

    def __init__(
        self,
        *,
        location: str,
        missing: list[str],
        expected: int,
        waited_seconds: float,
        job: str | None = None,
    ) -> None:
        self.location: Final = location
        self.missing: Final = missing
        self.expected: Final = expected
        self.waited_seconds: Final = waited_seconds
        self.job: Final = job
        what = f" of job {job!r}" if job else ""
        super().__init__(
            f"gave up after {waited_seconds:.1f}s waiting at {location}{what}: "
            f"{len(missing)} of {expected} never arrived: {', '.join(missing)}. "
            "Check that those workers were scheduled and are running (kubectl get pods "
            "-l batch.kubernetes.io/job-name=...), or raise the deadline."
        )


class WorkerFailedError(RetryableError):
    """Another worker of the job reported a failure; waiting for it is pointless."""

    kind: ClassVar[str] = "worker-failed"

    def __init__(
        self, *, location: str, failures: Mapping[str, str], job: str | None = None
    ) -> None:
        self.location: Final = location
        self.failures: Final = dict(failures)
        self.job: Final = job
        what = f"job {job!r}: " if job else ""
        ordered = sorted(failures.items(), key=lambda item: _worker_of(item[0]))
        detail = "; ".join(
            f"{_worker_of(name)[1]} failed ({name} will not come): {summary}"
            for name, summary in ordered
        )
        indexes = "that index" if len(failures) == 1 else "those indexes"
        super().__init__(
            f"{what}{detail}. Fix the cause and re-run {indexes}; failure markers live at "
            f"{location}."
        )


def _worker_of(name: str) -> tuple[int, str]:
    """Who owed the blob ``name``: ``result-3`` is worker 3's, the setup worker 0's.

    A failure message names the worker (the index to look at in ``kubectl``),
    not only the blob; the sort key puts them in index order.
    """
    head, _, tail = name.rpartition("-")
    if head == "result" and tail.isdigit():
        return int(tail), f"worker {int(tail)}"
    if name == "setup":
        return 0, "worker 0"
    return -1, name


class ForeignResultError(RetryableError):
    """A worker's published fork does not belong to this job's setup; refused before merging."""

    kind: ClassVar[str] = "foreign-result"

    def __init__(self, *, job: str, worker_index: int, reason: str) -> None:
        self.job: Final = job
        self.worker_index: Final = worker_index
        self.reason: Final = reason
        super().__init__(
            f"job {job!r}: refused the result of worker {worker_index}: {reason}. "
            f"Re-run worker {worker_index} so it publishes a result for the current setup."
        )


class StorageUnreachableError(RetryableError):
    """The object store did not answer, or kept failing past the retries; it may later.

    Endpoint, network, credentials, or throttling (503 SlowDown) and 500s that
    outlasted the client's retries.
    """

    kind: ClassVar[str] = "storage-unreachable"

    def __init__(self, *, url: str, detail: str) -> None:
        self.url: Final = url
        self.detail: Final = detail
        super().__init__(
            f"cannot reach the storage at {url}: {detail}. Check the endpoint "
            "(AWS_ENDPOINT_URL), the network, the credentials and the store's error "
            "rate; the worker can be retried once it answers."
        )


class CommitOutcomeError(CoopError):
    """What happened to the job's commit; the message says which targets hold the data."""

    kind: ClassVar[str] = "commit-outcome"


class CommitConflictError(CommitOutcomeError):
    """Another writer changed what this job changed; nothing of the job was committed there."""

    kind: ClassVar[str] = "commit-conflict"

    def __init__(
        self, *, job: str, target: str, conflicts: list[str], committed: list[str]
    ) -> None:
        self.job: Final = job
        self.target: Final = target
        self.conflicts: Final = conflicts
        self.committed: Final = committed
        super().__init__(
            f"job {job!r}: another writer committed to target {target!r} after this job "
            f"forked, and it overlaps this job's changes: {'; '.join(conflicts)}. Nothing was "
            f"overwritten.{_committed_phrase(committed)} Re-run the work as a new job once "
            "the other writer is done."
        )


_ALIGN = (
    "Align region jobs to chunk (or shard) boundaries so every chunk has one writer, and put "
    "structural changes (new arrays, resizes, attributes) in worker 0's prepare."
)


def _workers_phrase(workers: list[int]) -> str:
    return " and ".join(str(w) for w in workers)


class OverlapError(CommitOutcomeError):
    """Two workers of one job would write the same chunk or node: one's data would be lost.

    Icechunk's merge keeps one fork's chunk and drops the other's without a
    word; a plain zarr store keeps the last PUT. So the job is refused before
    any target moves. Not retryable: the job's region jobs must change.
    """

    kind: ClassVar[str] = "overlap"


class ChunkOverlapError(OverlapError):
    """The last worker found a chunk (or node metadata) in two workers' writes, bytes differing."""

    kind: ClassVar[str] = "chunk-overlap"

    def __init__(
        self,
        *,
        job: str,
        target: str,
        array: str,
        first: str,
        count: int,
        workers: list[int],
        compared: bool,
        plain: bool,
        keys: list[str],
    ) -> None:
        self.job: Final = job
        self.target: Final = target
        self.array: Final = array
        self.first: Final = first
        self.count: Final = count
        self.workers: Final = workers
        self.compared: Final = compared
        self.plain: Final = plain
        self.keys: Final = keys
        what = (
            "its metadata"
            if first == "metadata"
            else f"{count} chunk{'s' if count != 1 else ''} of it (first: {first})"
        )
        how = (
            "with different bytes"
            if compared
            else "and their bytes cannot be shown to be the same (a node created or deleted, "
            "or a write that bypassed the stores this package handed out)"
        )
        after = (
            f" The chunks are already in the store, so {', '.join(keys)}"
            f"{' and more' if count > len(keys) else ''} may hold another worker's bytes; the "
            "job's new metadata was not published, and a run of the fixed job rewrites them."
            if plain and first != "metadata"
            else " Nothing was committed: no target branch moved and no metadata was published."
        )
        super().__init__(
            f"job {job!r}: workers {_workers_phrase(workers)} both wrote array {array!r} of "
            f"target {target!r}, {what}, {how}; merging would keep one worker's bytes and lose "
            f"the other's.{after} {_ALIGN}"
        )


class RegionOverlapError(OverlapError):
    """Two region jobs given to different workers share a chunk or shard: refused at setup.

    Raised by worker 0 before any worker downloads or writes anything, when
    the region jobs say which region of the append dimension they write.
    """

    kind: ClassVar[str] = "region-overlap"

    def __init__(
        self,
        *,
        job: str,
        array: str,
        dimension: str,
        size: int,
        block: int,
        jobs: list[str],
        workers: list[int],
    ) -> None:
        self.job: Final = job
        self.array: Final = array
        self.dimension: Final = dimension
        self.size: Final = size
        self.block: Final = block
        self.jobs: Final = jobs
        self.workers: Final = workers
        super().__init__(
            f"job {job!r}: region jobs {' and '.join(jobs)} both write block {block} of array "
            f"{array!r} along {dimension!r} (chunks or shards of {size}), and they are assigned "
            f"to workers {_workers_phrase(workers)}: one worker's data would be lost at the "
            f"merge. Refused before any work began. {_ALIGN}"
        )


class AlreadyCommittedError(CommitOutcomeError):
    """The job's commit is already on the primary: there is nothing left to do."""

    kind: ClassVar[str] = "already-committed"

    def __init__(self, *, job: str, snapshot: str | None) -> None:
        self.job: Final = job
        self.snapshot: Final = snapshot
        where = f"snapshot {snapshot}" if snapshot else "its rendezvous says so"
        super().__init__(
            f"job {job!r} is already committed ({where}); nothing to do. "
            "A new run of the same work needs a new job (another name or uid)."
        )


class ShrinkRefusedError(CommitOutcomeError):
    """An update would make the append dimension shorter than readers already see."""

    kind: ClassVar[str] = "shrink-refused"

    def __init__(self, *, job: str, dimension: str, visible: int, final: int) -> None:
        self.job: Final = job
        self.dimension: Final = dimension
        self.visible: Final = visible
        self.final: Final = final
        super().__init__(
            f"job {job!r}: the final metadata would shrink {dimension!r} from {visible} "
            f"(what readers see now) to {final}. Refusing to commit. Data that was published "
            "is not withdrawn by an update; if the source really lost data, repair it with a "
            "backfill."
        )


class BranchKeptMovingError(CommitOutcomeError, RetryableError):
    """Other writers moved a target branch during every commit attempt; a re-run can succeed."""

    retryable: ClassVar[bool] = True  # also inherited from RetryableError; said for the reader
    kind: ClassVar[str] = "branch-kept-moving"

    def __init__(self, *, job: str, attempts: int, committed: list[str]) -> None:
        self.job: Final = job
        self.attempts: Final = attempts
        self.committed: Final = committed
        super().__init__(
            f"job {job!r}: a target branch moved during each of {attempts} commit attempts; "
            f"nothing was overwritten.{_committed_phrase(committed)} Run the last worker "
            "again: it commits the same results to the targets that do not hold them yet."
        )
