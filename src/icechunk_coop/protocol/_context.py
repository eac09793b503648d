"""What every step of one worker's run shares, and the two things around each step.

``JobContext`` is the worker's fixed view of its job: who it is, where the
job meets, and a driver per target in commit order (replicas first, the
primary last). ``StepClock`` times steps and ``failure_markers`` turns an
exception into the markers that stop the other workers' waits: one context
manager each, instead of flags and hand-timed sections in the flow.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import attrs

from icechunk_coop.errors import AlreadyCommittedError, MissingSecretError
from icechunk_coop.identity._worker import WorkerIdentity
from icechunk_coop.rendezvous._meeting import InProcessMeeting, MeetingPoint, StoredMeeting
from icechunk_coop.rendezvous._rendezvous import Rendezvous
from icechunk_coop.rendezvous._waiting import WaitPolicy, policy_for_environment
from icechunk_coop.targets._drivers import TargetDriver
from icechunk_coop.targets._targets import Target, ZarrTarget
from icechunk_coop.wire._ledger import Provenance
from icechunk_coop.wire._payload import INSECURE_ENV, SECRET_ENV, Sealer
from icechunk_coop.wire._records import SETUP, result_name

__all__ = [
    "Done",
    "JobContext",
    "Markers",
    "Pinned",
    "StepClock",
    "each",
    "failure_markers",
    "meeting_for",
    "summary",
]

log = logging.getLogger("icechunk_coop.protocol")


def each[T, R](fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn`` on every item at once (one thread each), results in order; the first error raised.

    For a step's round trips that do not depend on each other (one per
    target: staging, the finalizer's checks and rebases): with a replica or
    two they cost one round trip, not one each.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="icechunk-coop") as pool:
        return list(pool.map(fn, items))


def summary(exc: BaseException) -> str:
    """An exception on one line (icechunk's errors span several, and end blank)."""
    lines = traceback.format_exception_only(exc)
    return " ".join(" ".join(line.split()) for line in lines if line.strip())[:1500]


@attrs.frozen
class Done:
    """The job is committed already: nothing is left for this worker to do.

    A normal outcome, not an error (a twin of this worker, or an earlier
    attempt, finished the job), so the steps return it and the run returns
    ``already-committed``. ``snapshot`` is the primary's commit of the job
    when this worker found it there, else None (the ``committed`` marker
    said so). Deep down, a wait that meets the marker raises
    :class:`~icechunk_coop.errors.AlreadyCommittedError` to end itself; the
    step that waited turns it into this.
    """

    snapshot: str | None = None

    @classmethod
    def of(cls, exc: AlreadyCommittedError) -> Done:
        return cls(snapshot=exc.snapshot)

    def error(self, job_id: str) -> AlreadyCommittedError:
        """For the step functions, whose callers expect forks or a merge back."""
        return AlreadyCommittedError(job=job_id, snapshot=self.snapshot)


@attrs.define
class Pinned:
    """What the setup fixed for every worker: the job's start, and worker 0's decision.

    ``start`` is the environment's or worker 0's; ``decision`` is whatever
    worker 0's ``prepare`` returned (a job list read from the dataset, say),
    so that no other worker computes it again from its own reading.
    """

    start: datetime | None = None
    decision: Any = None


def _now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen(kw_only=True)
class JobContext:
    """One worker's fixed facts about its job.

    ``decide_start`` is asked, on worker 0 only and only when the environment
    gives no start, for the start every worker of the job then uses.
    """

    identity: WorkerIdentity
    meeting: MeetingPoint
    drivers: tuple[TargetDriver, ...]
    cleanup: bool
    commit_attempts: int
    decide_start: Callable[[], datetime] = _now
    pinned: Pinned = attrs.field(factory=Pinned, eq=False)

    @property
    def job_id(self) -> str:
        return self.identity.job_id

    @property
    def primary(self) -> TargetDriver:
        return self.drivers[-1]

    @property
    def where(self) -> str:
        i = self.identity
        run = f" ({i.run_label})" if i.run_label else ""  # attempt and pod, where known
        return f"job {self.job_id!r} worker {i.worker_index}/{i.workers_total}{run}"

    def provenance(self, token: str, job_start: str | None) -> Provenance:
        i = self.identity
        return Provenance(
            job=self.job_id,
            job_name=i.job_name,
            job_uid=i.job_uid,
            job_start=job_start,
            workers=i.workers_total,
            setup=token,
        )


@attrs.define
class StepClock:
    """When each step of a run began and ended (Unix seconds), by step name.

    Wall-clock times, not monotonic ones, because the spans of different
    workers end up side by side on one timeline (``Committed.timeline``).
    """

    spans: dict[str, tuple[float, float]] = attrs.field(factory=dict)

    @property
    def seconds(self) -> dict[str, float]:
        return {name: end - start for name, (start, end) in self.spans.items()}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.time()
        try:
            yield
        finally:
            self.spans[name] = (started, time.time())


@attrs.define
class Markers:
    setup_published: bool = False


@contextlib.contextmanager
def failure_markers(ctx: JobContext) -> Iterator[Markers]:
    """On an error, tell the job: this index failed (and the setup, if it was worker 0's).

    A ``BaseException`` that is not an ``Exception`` (a kill, Ctrl-C) leaves no
    marker, like a pod that is OOM-killed: the others wait for its retry.
    The error itself is raised, not logged: the caller reports it, once.
    """
    state = Markers()
    try:
        yield state
    except Exception as exc:
        text = summary(exc)
        if getattr(exc, "url", None) == ctx.meeting.url:
            raise  # the meeting point itself is missing or unreachable: nowhere to tell
        log.info("%s: failed (%s); telling the other workers", ctx.where, type(exc).__name__)
        try:
            ctx.meeting.mark_failed(result_name(ctx.identity.worker_index), text)
            if ctx.identity.is_first and not state.setup_published:
                ctx.meeting.mark_failed(SETUP, text)
        except Exception as marker_exc:  # the original error matters more
            log.warning("could not publish the failure marker: %s", marker_exc)
        raise


def _is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _is_local(target: Target) -> bool:
    """Whether a target lives on this machine's filesystem (no credentials involved)."""
    if isinstance(target, ZarrTarget):
        return _is_local_url(target.url)
    # icechunk.Storage exposes its kind only through its repr; anything else fails closed.
    return "type: local filesystem" in repr(target.storage)


def meeting_for(
    identity: WorkerIdentity,
    *,
    rendezvous_url: str,
    targets: Sequence[Target],
    storage_options: Mapping[str, Any] | None,
    policy: WaitPolicy | None,
    environ: Mapping[str, str],
) -> MeetingPoint:
    """Where this worker's job meets, under the secret policy and the job's deadline.

    ``ICECHUNK_COOP_DEADLINE_SECONDS`` in ``environ`` (the Job's
    ``activeDeadlineSeconds``) is read first, whatever the job's size, so a
    bad value stops every worker at once; the waits then end a little before
    it (:func:`~icechunk_coop.rendezvous._waiting.policy_for_environment`).

    A one-worker job meets in its own memory: nothing goes through
    ``rendezvous_url`` and no secret is needed. A job of more workers refuses
    to run unsealed (``ICECHUNK_COOP_INSECURE``) unless every target and the
    rendezvous are on this machine: an unsealed session would expose its
    storage configuration, and anyone who can write could plant a pickle.
    """
    policy = policy_for_environment(policy, environ)
    if identity.workers_total == 1:
        return InProcessMeeting(job_id=identity.job_id)
    sealer = Sealer.from_env(identity.job_id, environ)
    rendezvous = Rendezvous.for_job(
        rendezvous_url,
        job_id=identity.job_id,
        sealer=sealer,
        storage_options=storage_options,
        policy=policy,
    )
    if not sealer.authenticated:
        remote = [t.name for t in targets if not _is_local(t)]
        if not _is_local_url(rendezvous.url):
            remote.append(f"rendezvous {rendezvous.url}")
        if remote:
            raise MissingSecretError(
                f"job {identity.job_id!r}: {INSECURE_ENV}=1 works only when the "
                f"rendezvous and every target are local files, and these are not: "
                f"{', '.join(remote)}. Set {SECRET_ENV} to the same random value in "
                "every worker instead (e.g. from a Kubernetes Secret)"
            )
    return StoredMeeting(rendezvous=rendezvous, identity=identity)
