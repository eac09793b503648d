"""The job's scheduled start, read from the environment and never the clock.

``job_start`` comes from ``JOB_START``, or from the scheduled time a
Kubernetes CronJob encodes in its Job's name, so every pod of a job derives
the same value, and so the same work list, however late it was scheduled
or however often it was retried.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from icechunk_coop._errors import IdentityError
from icechunk_coop._identity_env import CRONJOB_NAME, DIGITS, JOB_START, Env

__all__ = ["is_aware", "read_job_start"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() is not None


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
        if not is_aware(value):
            raise IdentityError(
                f"{JOB_START}={raw!r} has no UTC offset: expected an offset such as Z or "
                "+00:00 (e.g. 2025-02-19T21:20:00Z), so every worker reads the same instant"
            )
        return value.astimezone(UTC)
    cronjob = env.get(CRONJOB_NAME)
    if cronjob is None:
        return None
    prefix = f"{cronjob}-"
    suffix = job_name[len(prefix) :] if job_name.startswith(prefix) else ""
    if DIGITS.fullmatch(suffix) is None:
        raise IdentityError(
            f"{name_var}={job_name!r} does not end in the scheduled-minute suffix a CronJob "
            f"gives its Jobs ({CRONJOB_NAME}={cronjob!r}, so expected {cronjob}-<minutes since "
            f"1970>). A Job made by hand (kubectl create job --from=cronjob/{cronjob} NAME) "
            f"carries no schedule: set {JOB_START} (ISO 8601 with an offset such as Z)"
        )
    try:
        return _EPOCH + timedelta(minutes=int(suffix))
    except (OverflowError, ValueError):
        raise IdentityError(
            f"{name_var}={job_name!r} has a scheduled-minute suffix {suffix!r} beyond any "
            f"date: expected minutes since 1970, or set {JOB_START}"
        ) from None
