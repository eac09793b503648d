"""Who this worker is: its index, the worker count and the job it belongs to.

Every orchestrator that runs indexed work tells each task its index in its
own words (Kubernetes Indexed Jobs, JobSets, Volcano jobs, AWS Batch array
jobs, Cloud Run jobs, Google Batch, Slurm job arrays). :meth:`WorkerIdentity.from_env` reads
those variables and normalises them to ``0 <= worker_index < workers_total``
plus a job name that is safe to use as a path segment, because the job's
rendezvous blobs live under it.

Nothing here reads the clock. ``job_start`` comes from the environment
(``JOB_START``, or the scheduled time a Kubernetes CronJob encodes in its
Job's name), so every pod of a job derives the same value, and so the same
work list, however late it was scheduled or however often it was retried.

This module holds the value and its checks. Reading the environment lives
in :mod:`icechunk_coop.identity._orchestrators` (one reader per orchestrator), with
:mod:`~icechunk_coop.identity._env` (variable names, empty-as-unset),
:mod:`~icechunk_coop.identity._start` (the scheduled start) and
:mod:`~icechunk_coop.identity._segments` (the path-segment rule) beside it.
The variable names are re-exported here, where callers import them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from icechunk_coop.errors import IdentityError

# The variable names are re-exported (``X as X``): other code and tests import them from here.
from icechunk_coop.identity._env import CRONJOB_NAME as CRONJOB_NAME
from icechunk_coop.identity._env import JOB_NAME as JOB_NAME
from icechunk_coop.identity._env import JOB_START as JOB_START
from icechunk_coop.identity._env import JOB_UID as JOB_UID
from icechunk_coop.identity._env import JOBSET_RESTART_ATTEMPT as JOBSET_RESTART_ATTEMPT
from icechunk_coop.identity._env import ORCHESTRATORS as ORCHESTRATORS
from icechunk_coop.identity._env import POD_NAME as POD_NAME
from icechunk_coop.identity._env import WORKER_ATTEMPT as WORKER_ATTEMPT
from icechunk_coop.identity._env import WORKER_INDEX as WORKER_INDEX
from icechunk_coop.identity._env import WORKERS_TOTAL as WORKERS_TOTAL
from icechunk_coop.identity._orchestrators import POD_PATTERN, read_identity
from icechunk_coop.identity._segments import MAX_JOB_ID, check_segment
from icechunk_coop.identity._start import as_utc, is_aware

__all__ = ["ORCHESTRATORS", "WorkerIdentity"]


# ---- validation ---------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_total(_instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not _is_int(value) or value < 1:
        raise IdentityError(f"{attribute.name}={value!r} is invalid: expected an integer >= 1")


def _validate_index(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    total = instance.workers_total
    if not _is_int(total) or total < 1:
        return  # reported by the workers_total validator
    if not _is_int(value) or not 0 <= value < total:
        raise IdentityError(
            f"{attribute.name}={value!r} is out of range for workers_total={total!r}: "
            f"expected an integer in 0..{total - 1}"
        )


def _validate_name(_instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    check_segment(attribute.name, value)


def _validate_uid(
    _instance: Any, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        check_segment(attribute.name, value)


def _to_utc(value: datetime | None) -> datetime | None:
    """Normalise a datetime to UTC (naive means UTC); anything else is left for the validator."""
    if isinstance(value, datetime):
        return as_utc(value)
    return value


def _validate_start(
    _instance: Any, attribute: attrs.Attribute[datetime | None], value: datetime | None
) -> None:
    if value is None:
        return
    if not isinstance(value, datetime) or not is_aware(value):
        raise IdentityError(f"{attribute.name}={value!r} is invalid: expected a datetime")


def _validate_count(
    _instance: Any, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (not _is_int(value) or value < 0):
        raise IdentityError(
            f"{attribute.name}={value!r} is invalid: expected None or an integer >= 0"
        )


def _validate_pod(
    _instance: Any, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and (not isinstance(value, str) or POD_PATTERN.fullmatch(value) is None):
        raise IdentityError(
            f"{attribute.name}={value!r} is invalid: expected None or a pod name (at most 253 "
            "letters, digits, '.', '-' or '_')"
        )


def _validate_orchestrator(_instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ORCHESTRATORS:
        raise IdentityError(
            f"{attribute.name}={value!r} is unknown: expected one of {', '.join(ORCHESTRATORS)}"
        )


# ---- the identity -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WorkerIdentity:
    """One worker's place in one job.

    ``worker_index`` runs from 0 to ``workers_total - 1`` whatever the
    orchestrator numbers its tasks from, so work can be split by index.
    ``job_name`` (plus ``job_uid`` when the orchestrator has one) names the
    job's rendezvous folder, so both must be safe as path segments.
    ``job_start`` is the job's scheduled start, never this pod's clock, so
    every pod of the job derives the same work list from it; it is None when
    the environment does not say. ``orchestrator`` records where the
    identity was read from, for logs and error messages.

    ``attempt`` (earlier tries of this worker, 0 on the first), ``restart``
    (a JobSet's restarts of the whole set) and ``pod`` (the pod's name) say
    which run of the worker this is, where the orchestrator tells: they go
    into failure markers and log lines, so a marker left by an earlier try
    is told from a current one, and a log line leads to the pod. They take
    no part in the protocol: two tries of one worker are one worker.
    """

    worker_index: int = attrs.field(validator=_validate_index)
    workers_total: int = attrs.field(validator=_validate_total)
    job_name: str = attrs.field(validator=_validate_name)
    job_uid: str | None = attrs.field(default=None, validator=_validate_uid)
    job_start: datetime | None = attrs.field(
        default=None, converter=_to_utc, validator=_validate_start
    )
    orchestrator: str = attrs.field(default="explicit", validator=_validate_orchestrator)
    attempt: int | None = attrs.field(default=None, validator=_validate_count)
    restart: int | None = attrs.field(default=None, validator=_validate_count)
    pod: str | None = attrs.field(default=None, validator=_validate_pod)

    def __attrs_post_init__(self) -> None:
        if len(self.job_id) > MAX_JOB_ID:
            raise IdentityError(
                f"job_id={self.job_id!r} (job_name-job_uid) is {len(self.job_id)} characters: "
                f"expected at most {MAX_JOB_ID} so it stays a valid path segment; "
                "shorten JOB_NAME or JOB_UID"
            )

    @property
    def is_first(self) -> bool:
        """Worker 0, the one that sets the job up."""
        return self.worker_index == 0

    @property
    def is_last(self) -> bool:
        """The highest index, the one that commits."""
        return self.worker_index == self.workers_total - 1

    @property
    def run_label(self) -> str:
        """Which run of this worker, for logs: ``"attempt 1, pod x-3-abcde"``, or "" if unknown."""
        parts = []
        if self.restart is not None:
            parts.append(f"restart {self.restart}")
        if self.attempt is not None:
            parts.append(f"attempt {self.attempt}")
        if self.pod is not None:
            parts.append(f"pod {self.pod}")
        return ", ".join(parts)

    @property
    def job_id(self) -> str:
        """The rendezvous namespace key: ``job_name-job_uid``, or ``job_name`` without a uid.

        Adding the uid keeps a re-created job of the same name (a Kubernetes
        Job deleted and created again) away from the first one's blobs. Both
        parts are safe path segments, and so is the joined key.
        """
        if self.job_uid is None:
            return self.job_name
        return f"{self.job_name}-{self.job_uid}"

    def to_env(self) -> dict[str, str]:
        """The explicit variables that make :meth:`from_env` return this identity.

        A launcher starting workers itself (a local process pool, a test)
        passes these, so the worker needs no orchestrator. Only
        ``orchestrator`` does not survive: the result reads as ``explicit``.
        """
        env = {
            WORKER_INDEX: str(self.worker_index),
            WORKERS_TOTAL: str(self.workers_total),
            JOB_NAME: self.job_name,
        }
        if self.job_uid is not None:
            env[JOB_UID] = self.job_uid
        if self.job_start is not None:
            env[JOB_START] = self.job_start.isoformat()
        if self.attempt is not None:
            env[WORKER_ATTEMPT] = str(self.attempt)
        if self.restart is not None:
            env[JOBSET_RESTART_ATTEMPT] = str(self.restart)
        if self.pod is not None:
            env[POD_NAME] = self.pod
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerIdentity:
        """Read the identity from the environment (``os.environ`` by default).

        Index and total come from the first of these that is present:
        ``WORKER_INDEX``/``WORKERS_TOTAL`` (Argo Workflows, or anything that
        starts the workers itself); a Kubernetes Indexed Job's
        ``JOB_COMPLETION_INDEX`` (with ``WORKERS_TOTAL``, which the pod spec
        must set: no Kubernetes variable carries the completions), read as a
        JobSet's when ``JOBSET_NAME``, ``JOBSET_JOB_INDEX`` or ``JOBSET_JOBS``
        is set (worker ``JOBSET_JOB_INDEX * completions + JOB_COMPLETION_INDEX``
        of ``WORKERS_TOTAL``); a Volcano job's ``VC_TASK_INDEX`` (total from
        ``VC_<TASK>_NUM`` when the job has one task, else ``WORKERS_TOTAL``);
        AWS Batch array jobs; Cloud Run jobs; Google Batch; Slurm job arrays
        (task ids renumbered to 0..N-1). ``JOB_NAME`` and ``JOB_UID`` win over
        the orchestrator's own names (a JobSet's are ``JOBSET_NAME`` and
        ``JOBSET_UID``). ``JOB_START`` (ISO 8601 with an offset)
        wins for the start time; otherwise, with ``CRONJOB_NAME`` set, the
        start is the scheduled minute a CronJob encodes in its Job's name.
        A variable set to the empty string counts as unset (the downward API
        yields "" for a missing label). ``attempt`` comes from
        ``WORKER_ATTEMPT``, else the orchestrator's count
        (``JOB_INDEX_FAILURE_COUNT`` from the pod's
        ``batch.kubernetes.io/job-index-failure-count`` annotation,
        ``CLOUD_RUN_TASK_ATTEMPT``, ``AWS_BATCH_JOB_ATTEMPT`` - 1,
        ``BATCH_TASK_RETRY_ATTEMPT``, ``SLURM_RESTART_COUNT``); ``restart``
        from ``JOBSET_RESTART_ATTEMPT``; ``pod`` from ``POD_NAME``, else, in
        a Kubernetes pod, ``HOSTNAME``. Every unusable value raises
        :class:`~icechunk_coop.IdentityError` naming the variable.
        """
        fields = read_identity(environ)
        return cls(
            worker_index=fields.worker_index,
            workers_total=fields.workers_total,
            job_name=fields.job_name,
            job_uid=fields.job_uid,
            job_start=fields.job_start,
            orchestrator=fields.orchestrator,
            attempt=fields.attempt,
            restart=fields.restart,
            pod=fields.pod,
        )
