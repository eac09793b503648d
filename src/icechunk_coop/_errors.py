"""One error tree, grouped by what the caller does next.

Every error carries its facts as attributes (the job, the indexes, the
location, the seconds waited), formats a message that says what to do, and
survives pickling, because errors cross process boundaries (a worker's
failure is reported by another process, and ``multiprocessing`` pickles
exceptions).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


def _rebuild(cls: type[CoopError], fields: dict[str, Any]) -> CoopError:
    return cls(**fields)


def _indexes(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(values)) or "none"


def _committed_phrase(committed: list[str]) -> str:
    if committed:
        return f" Targets already committed by this job: {', '.join(committed)}."
    return " No target holds this job's data."


class CoopError(Exception):
    """Root of every error icechunk-coop raises on purpose.

    ``retryable`` says whether running the same worker again can succeed
    without anyone changing anything: true for waits (a peer may arrive or be
    retried meanwhile), false for bad input, refused blobs and conflicts. An
    orchestrator's retry policy can key on it (see ``examples/k8s``).
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self._fields = {"message": message, **fields} if type(self) is CoopError else fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._fields))


class ConfigurationError(CoopError, ValueError):
    """A value given to us (environment, URL, name, option) is unusable. Fix the input."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._fields = {"message": message}


class IdentityError(ConfigurationError):
    """The orchestrator's environment does not describe a valid worker."""


class MissingSecretError(ConfigurationError):
    """No shared secret was configured and the insecure opt-out was not chosen."""


class PayloadError(CoopError):
    """A blob was refused before anything in it was trusted or unpickled."""

    def __init__(self, *, location: str, reason: str) -> None:
        super().__init__(
            f"refused the blob at {location}: {reason}", location=location, reason=reason
        )
        self.location: str = location
        self.reason: str = reason


class PayloadFormatError(PayloadError):
    """Not a frame we wrote: truncated, unknown format version, or unsigned."""


class PayloadAuthenticationError(PayloadError):
    """The frame's tag does not verify: forged, tampered with, or another secret."""


class ForeignPayloadError(PayloadError):
    """An authentic frame written for another job or another kind of blob."""


class IcechunkVersionError(PayloadError):
    """The blob was written by an icechunk version whose sessions we cannot load."""


class WaitTimeoutError(CoopError, TimeoutError):
    """A wait reached its deadline; the message names who never arrived."""

    retryable: ClassVar[bool] = True

    def __init__(
        self,
        *,
        location: str,
        missing: list[str],
        expected: int,
        waited_seconds: float,
        job: str | None = None,
    ) -> None:
        what = f" of job {job!r}" if job else ""
        super().__init__(
            f"gave up after {waited_seconds:.1f}s waiting at {location}{what}: "
            f"{len(missing)} of {expected} never arrived: {', '.join(missing)}. "
            "Check that those workers were scheduled and are running (kubectl get pods "
            "-l batch.kubernetes.io/job-name=...), or raise the deadline.",
            location=location,
            missing=missing,
            expected=expected,
            waited_seconds=waited_seconds,
            job=job,
        )
        self.location: str = location
        self.missing: list[str] = missing
        self.expected: int = expected
        self.waited_seconds: float = waited_seconds
        self.job: str | None = job


class WorkerFailedError(CoopError):
    """Another worker of the job reported a failure; waiting for it is pointless."""

    retryable: ClassVar[bool] = True

    def __init__(
        self, *, location: str, failures: Mapping[str, str], job: str | None = None
    ) -> None:
        what = f"job {job!r}: " if job else ""
        detail = "; ".join(f"{name}: {summary}" for name, summary in sorted(failures.items()))
        super().__init__(
            f"{what}worker(s) {', '.join(sorted(failures))} failed ({detail}). "
            f"Fix the cause and re-run those indexes; failure markers live at {location}.",
            location=location,
            failures=dict(failures),
            job=job,
        )
        self.location: str = location
        self.failures: dict[str, str] = dict(failures)
        self.job: str | None = job


class WorkersTotalMismatchError(CoopError, ValueError):
    """Workers of one job disagree on how many workers there are."""

    def __init__(self, *, job: str, worker_index: int, expected: int, got: int) -> None:
        super().__init__(
            f"job {job!r}: worker {worker_index} has WORKERS_TOTAL={got} but the job was set "
            f"up for {expected} workers. Every pod must get the same WORKERS_TOTAL (equal to "
            "the Job's completions); fix the pod spec and re-create the job.",
            job=job,
            worker_index=worker_index,
            expected=expected,
            got=got,
        )
        self.job: str = job
        self.worker_index: int = worker_index
        self.expected: int = expected
        self.got: int = got


class ForeignResultError(CoopError):
    """A worker's published fork does not belong to this job's setup; refused before merging."""

    retryable: ClassVar[bool] = True

    def __init__(self, *, job: str, worker_index: int, reason: str) -> None:
        super().__init__(
            f"job {job!r}: refused the result of worker {worker_index}: {reason}. "
            f"Re-run worker {worker_index} so it publishes a result for the current setup.",
            job=job,
            worker_index=worker_index,
            reason=reason,
        )
        self.job: str = job
        self.worker_index: int = worker_index
        self.reason: str = reason


class CommitConflictError(CoopError):
    """Another writer changed what this job changed; nothing of the job was committed there."""

    def __init__(
        self, *, job: str, target: str, conflicts: list[str], committed: list[str]
    ) -> None:
        done = _committed_phrase(committed)
        super().__init__(
            f"job {job!r}: another writer committed to target {target!r} after this job "
            f"forked, and it overlaps this job's changes: {'; '.join(conflicts)}. Nothing was "
            f"overwritten.{done} Re-run the work as a new job once the other writer is done.",
            job=job,
            target=target,
            conflicts=conflicts,
            committed=committed,
        )
        self.job: str = job
        self.target: str = target
        self.conflicts: list[str] = conflicts
        self.committed: list[str] = committed


class BranchKeptMovingError(CoopError):
    """Other writers moved a target branch during every commit attempt; a re-run can succeed."""

    retryable: ClassVar[bool] = True

    def __init__(self, *, job: str, attempts: int, committed: list[str]) -> None:
        done = _committed_phrase(committed)
        super().__init__(
            f"job {job!r}: a target branch moved during each of {attempts} commit attempts; "
            f"nothing was overwritten.{done} Run the last worker again: it commits the same "
            "results to the targets that do not hold them yet.",
            job=job,
            attempts=attempts,
            committed=committed,
        )
        self.job: str = job
        self.attempts: int = attempts
        self.committed: list[str] = committed


class AlreadyCommittedError(CoopError):
    """The job's commit is already on the primary: there is nothing left to do."""

    def __init__(self, *, job: str, snapshot: str | None) -> None:
        where = f"snapshot {snapshot}" if snapshot else "its rendezvous says so"
        super().__init__(
            f"job {job!r} is already committed ({where}); nothing to do. "
            "A new run of the same work needs a new job (another name or uid).",
            job=job,
            snapshot=snapshot,
        )
        self.job: str = job
        self.snapshot: str | None = snapshot
