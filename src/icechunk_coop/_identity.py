"""Who this worker is: its index, the worker count and the job it belongs to.

Every orchestrator that runs indexed work tells each task its index in its
own words (Kubernetes Indexed Jobs, AWS Batch array jobs, Cloud Run jobs,
Google Batch, Slurm job arrays). :meth:`WorkerIdentity.from_env` reads
those variables and normalises them to ``0 <= worker_index < workers_total``
plus a job name that is safe to use as a path segment, because the job's
rendezvous blobs live under it.

Nothing here reads the clock. ``job_start`` comes from the environment
(``JOB_START``, or the scheduled time a Kubernetes CronJob encodes in its
Job's name), so every pod of a job derives the same value, and so the same
work list, however late it was scheduled or however often it was retried.

This module holds the value and its checks. Reading the environment lives
in :mod:`icechunk_coop._orchestrators` (one reader per orchestrator), with
:mod:`~icechunk_coop._identity_env` (variable names, empty-as-unset),
:mod:`~icechunk_coop._identity_start` (the scheduled start) and
:mod:`~icechunk_coop._identity_segments` (the path-segment rule) beside it.
The variable names are re-exported here, where callers import them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from icechunk_coop._errors import IdentityError

# The variable names are re-exported (``X as X``): other code and tests import them from here.
from icechunk_coop._identity_env import CRONJOB_NAME as CRONJOB_NAME
from icechunk_coop._identity_env import JOB_NAME as JOB_NAME
from icechunk_coop._identity_env import JOB_START as JOB_START
from icechunk_coop._identity_env import JOB_UID as JOB_UID
from icechunk_coop._identity_env import ORCHESTRATORS as ORCHESTRATORS
from icechunk_coop._identity_env import WORKER_INDEX as WORKER_INDEX
from icechunk_coop._identity_env import WORKERS_TOTAL as WORKERS_TOTAL
from icechunk_coop._identity_segments import MAX_JOB_ID, check_segment
from icechunk_coop._identity_start import as_utc, is_aware
from icechunk_coop._orchestrators import read_identity

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
    """

    worker_index: int = attrs.field(validator=_validate_index)
    workers_total: int = attrs.field(validator=_validate_total)
    job_name: str = attrs.field(validator=_validate_name)
    job_uid: str | None = attrs.field(default=None, validator=_validate_uid)
    job_start: datetime | None = attrs.field(
        default=None, converter=_to_utc, validator=_validate_start
    )
    orchestrator: str = attrs.field(default="explicit", validator=_validate_orchestrator)

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
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerIdentity:
        """Read the identity from the environment (``os.environ`` by default).

        Index and total come from the first of these that is present:
        ``WORKER_INDEX``/``WORKERS_TOTAL``; a Kubernetes Indexed Job's
        ``JOB_COMPLETION_INDEX`` (with ``WORKERS_TOTAL``, which the pod spec
        must set: no Kubernetes variable carries the completions); AWS Batch
        array jobs; Cloud Run jobs; Google Batch; Slurm job arrays (task ids
        renumbered to 0..N-1). ``JOB_NAME`` and ``JOB_UID`` win over the
        orchestrator's own names. ``JOB_START`` (ISO 8601 with an offset)
        wins for the start time; otherwise, with ``CRONJOB_NAME`` set, the
        start is the scheduled minute a CronJob encodes in its Job's name.
        A variable set to the empty string counts as unset (the downward API
        yields "" for a missing label). Every unusable value raises
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
        )
