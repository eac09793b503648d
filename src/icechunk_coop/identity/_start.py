"""The job's scheduled start, read from the environment and never the pod's clock.

``job_start`` comes from ``JOB_START``, or from the scheduled time a
Kubernetes CronJob encodes in its Job's name (``CRONJOB_NAME`` or
``CRON_JOB_NAME`` names the CronJob), so every pod of a job derives the
same value, and so the same work list, however late it was scheduled or
however often it was retried. When neither gives a start (a Job made by
hand from a CronJob has no scheduled-minute suffix) the identity has none,
and worker 0 decides it once for the whole job and pins it in the setup.

A timestamp without an offset means UTC, as it does in numpy, xarray, CF
and ``pd.Timestamp``: that is how the ecosystem writes times.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from icechunk_coop.errors import IdentityError
from icechunk_coop.identity._env import CRON_JOB_NAME, CRONJOB_NAME, DIGITS, JOB_START, Env

__all__ = ["as_utc", "is_aware", "read_job_start"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() is not None


def as_utc(value: datetime) -> datetime:
    """The same instant in UTC; a naive value (numpy's, xarray's, CF's) already is UTC."""
    if not is_aware(value):
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def read_job_start(env: Env, job_name: str, name_var: str) -> datetime | None:
    raw = env.get(JOB_START)
    if raw is not None:
        try:
            value = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise IdentityError(
                f"{JOB_START}={raw!r} is not an ISO 8601 timestamp: expected e.g. "
                "2025-02-19T21:20:00Z"
            ) from None
        if len(raw.strip()) <= 10:  # a date alone: the hour is not implied
            raise IdentityError(
                f"{JOB_START}={raw!r} has no time of day: expected e.g. 2025-02-19T21:20:00Z"
            )
        return as_utc(value)
    cronjob = env.get(CRONJOB_NAME) or env.get(CRON_JOB_NAME)
    if cronjob is None:
        return None
    prefix = f"{cronjob}-"
    suffix = job_name[len(prefix) :] if job_name.startswith(prefix) else ""
    if DIGITS.fullmatch(suffix) is None:
        # A Job made by hand (kubectl create job --from=cronjob/NAME) carries no
        # schedule: no pod may read one off its own clock, so worker 0 decides.
        return None
    try:
        return _EPOCH + timedelta(minutes=int(suffix))
    except (OverflowError, ValueError):
        raise IdentityError(
            f"{name_var}={job_name!r} has a scheduled-minute suffix {suffix!r} beyond any "
            f"date: expected minutes since 1970, or set {JOB_START}"
        ) from None
