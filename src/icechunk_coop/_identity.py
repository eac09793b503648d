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
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from icechunk_coop._errors import IdentityError

__all__ = ["ORCHESTRATORS", "WorkerIdentity"]

#: Where an identity can come from; the value of :attr:`WorkerIdentity.orchestrator`.
ORCHESTRATORS: Final = ("explicit", "kubernetes", "aws-batch", "cloud-run", "google-batch", "slurm")

# Explicit variables: they win over anything an orchestrator sets.
WORKER_INDEX: Final = "WORKER_INDEX"
WORKERS_TOTAL: Final = "WORKERS_TOTAL"
JOB_NAME: Final = "JOB_NAME"
JOB_UID: Final = "JOB_UID"
JOB_START: Final = "JOB_START"
CRONJOB_NAME: Final = "CRONJOB_NAME"

_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_MAX_JOB_ID = 253
_DIGITS = re.compile(r"[0-9]+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SEGMENT_RULE = (
    "expected 1 to 253 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
)
_INDEX_VARIABLES: Final = (
    WORKER_INDEX,
    "JOB_COMPLETION_INDEX",
    "AWS_BATCH_JOB_ARRAY_INDEX",
    "CLOUD_RUN_TASK_INDEX",
    "BATCH_TASK_INDEX",
    "SLURM_ARRAY_TASK_ID",
)


# ---- validation shared by the class and the environment reader ---------------


def _segment_problem(value: str) -> str | None:
    """Why ``value`` is not a safe path segment, or None when it is."""
    if value in (".", ".."):
        return f"{_SEGMENT_RULE}; '.' and '..' are not allowed"
    if _SAFE_SEGMENT.fullmatch(value) is None:
        return _SEGMENT_RULE
    return None


def _check_segment(attribute: str, value: object) -> None:
    if not isinstance(value, str):
        raise IdentityError(f"{attribute}={value!r} is not a string: {_SEGMENT_RULE}")
    problem = _segment_problem(value)
    if problem is not None:
        raise IdentityError(
            f"{attribute}={value!r} is not safe as a path segment (it names the job's "
            f"rendezvous folder): {problem}"
        )


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
    _check_segment(attribute.name, value)


def _validate_uid(
    _instance: Any, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        _check_segment(attribute.name, value)


def _to_utc(value: datetime | None) -> datetime | None:
    """Normalise an aware datetime to UTC; anything else is left for the validator."""
    if isinstance(value, datetime) and _is_aware(value):
        return value.astimezone(UTC)
    return value


def _is_aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() is not None


def _validate_start(
    _instance: Any, attribute: attrs.Attribute[datetime | None], value: datetime | None
) -> None:
    if value is None:
        return
    if not isinstance(value, datetime) or not _is_aware(value):
        raise IdentityError(
            f"{attribute.name}={value!r} is invalid: expected a timezone-aware datetime "
            "(a naive one would mean something different on every machine)"
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
        if len(self.job_id) > _MAX_JOB_ID:
            raise IdentityError(
                f"job_id={self.job_id!r} (job_name-job_uid) is {len(self.job_id)} characters: "
                f"expected at most {_MAX_JOB_ID} so it stays a valid path segment; "
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
        env = _Env(os.environ if environ is None else environ)
        found = _read_slot(env)
        name_var, job_name = _pick(env, JOB_NAME, found.name)
        if job_name is None:
            where = f" (nor {found.name_var})" if found.name_var else ""
            raise IdentityError(
                f"{JOB_NAME} is not set{where}: expected the job's name, the same in every "
                "worker. On Kubernetes set it from the downward API "
                "(metadata.labels['batch.kubernetes.io/job-name'])."
            )
        _check_env_segment(name_var, job_name)
        uid_var, job_uid = _pick(env, JOB_UID, found.uid)
        if job_uid is not None:
            _check_env_segment(uid_var, job_uid)
        job_start = _job_start(env, job_name, name_var)
        return cls(
            worker_index=found.index,
            workers_total=found.total,
            job_name=job_name,
            job_uid=job_uid,
            job_start=job_start,
            orchestrator=found.orchestrator,
        )


# ---- reading the environment --------------------------------------------------


class _Env:
    """The environment with empty values treated as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value else None

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def need(self, name: str, why: str) -> str:
        value = self.get(name)
        if value is None:
            raise IdentityError(f"{name} is not set: {why}")
        return value

    def number(self, name: str, why: str, *, minimum: int = 0) -> int:
        return _number(name, self.need(name, why), minimum=minimum)


@attrs.frozen(kw_only=True)
class _Slot:
    """Index and total as read, with where the orchestrator keeps its names."""

    orchestrator: str
    index: int
    total: int
    name: tuple[str, str] | None = None  # (variable, value) of the job name
    name_var: str | None = None  # where this orchestrator keeps the job name, if anywhere
    uid: tuple[str, str] | None = None


def _number(name: str, raw: str, *, minimum: int = 0) -> int:
    text = raw.strip()
    if _DIGITS.fullmatch(text) is None:
        kind = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise IdentityError(f"{name}={raw!r} is not a valid number: expected {kind}")
    try:
        value = int(text)
    except ValueError:  # more digits than int() will parse
        raise IdentityError(f"{name}={raw!r} is not a valid number: too many digits") from None
    if value < minimum:
        raise IdentityError(f"{name}={raw!r} is too small: expected an integer >= {minimum}")
    return value


def _check_env_segment(name: str, value: str) -> None:
    problem = _segment_problem(value)
    if problem is not None:
        raise IdentityError(
            f"{name}={value!r} is not safe as a path segment (it names the job's rendezvous "
            f"folder): {problem}"
        )


def _pick(env: _Env, explicit: str, fallback: tuple[str, str] | None) -> tuple[str, str | None]:
    value = env.get(explicit)
    if value is not None or fallback is None:
        return explicit, value
    return fallback


def _in_range(index_var: str, index: int, total_var: str, total: int, env: _Env) -> None:
    if index >= total:
        raise IdentityError(
            f"{index_var}={env.get(index_var)!r} is out of range for "
            f"{total_var}={env.get(total_var)!r}: expected 0..{total - 1}"
        )


def _total(env: _Env, own: str, index_var: str) -> tuple[str, int]:
    """The orchestrator's own count, or WORKERS_TOTAL; the two must agree if both are set."""
    if env.has(own):
        total = env.number(own, "", minimum=1)
        _agrees(env, f"{own}={env.get(own)!r}", total)
        return own, total
    why = (
        f"{index_var} is set but neither {own} nor {WORKERS_TOTAL} says how many workers there are"
    )
    return WORKERS_TOTAL, env.number(WORKERS_TOTAL, why, minimum=1)


def _agrees(env: _Env, source: str, total: int) -> None:
    """WORKERS_TOTAL, when also set, must not contradict the orchestrator's count."""
    raw = env.get(WORKERS_TOTAL)
    if raw is not None and _number(WORKERS_TOTAL, raw, minimum=1) != total:
        raise IdentityError(
            f"{WORKERS_TOTAL}={raw!r} contradicts {source}, which means {total} workers: "
            f"expected them to agree (or leave {WORKERS_TOTAL} unset)"
        )


def _read_slot(env: _Env) -> _Slot:
    if env.has(WORKER_INDEX):
        return _explicit(env)
    if env.has("JOB_COMPLETION_INDEX"):
        return _kubernetes(env)
    if env.has("AWS_BATCH_JOB_ARRAY_INDEX"):
        return _aws_batch(env)
    if env.has("CLOUD_RUN_TASK_INDEX"):
        return _cloud_run(env)
    if env.has("BATCH_TASK_INDEX"):
        return _google_batch(env)
    if env.has("SLURM_ARRAY_TASK_ID"):
        return _slurm(env)
    hint = f" ({WORKERS_TOTAL} is set, but no index variable is)" if env.has(WORKERS_TOTAL) else ""
    raise IdentityError(
        f"no worker index found{hint}: looked for {', '.join(_INDEX_VARIABLES)}. Expected an "
        f"indexed job (Kubernetes Indexed Job, AWS Batch array, Cloud Run job, Google Batch, "
        f"Slurm array) or {WORKER_INDEX} and {WORKERS_TOTAL} set explicitly."
    )


def _explicit(env: _Env) -> _Slot:
    index = env.number(WORKER_INDEX, "")
    raw_index = env.get(WORKER_INDEX)
    total = env.number(
        WORKERS_TOTAL,
        f"{WORKER_INDEX}={raw_index!r} is set, so {WORKERS_TOTAL} must say how many workers "
        "there are: expected an integer >= 1",
        minimum=1,
    )
    _in_range(WORKER_INDEX, index, WORKERS_TOTAL, total, env)
    return _Slot(orchestrator="explicit", index=index, total=total)


def _kubernetes(env: _Env) -> _Slot:
    var = "JOB_COMPLETION_INDEX"
    index = env.number(var, "")
    total = env.number(
        WORKERS_TOTAL,
        f"{var}={env.get(var)!r} is set (a Kubernetes Indexed Job), but no Kubernetes "
        f"variable carries the Job's completions: the pod spec must pass {WORKERS_TOTAL} "
        "equal to spec.completions",
        minimum=1,
    )
    _in_range(var, index, WORKERS_TOTAL, total, env)
    return _Slot(orchestrator="kubernetes", index=index, total=total)


def _aws_batch(env: _Env) -> _Slot:
    var = "AWS_BATCH_JOB_ARRAY_INDEX"
    index = env.number(var, "")
    total_var, total = _total(env, "AWS_BATCH_JOB_ARRAY_SIZE", var)
    _in_range(var, index, total_var, total, env)
    name = None
    job_id = env.get("AWS_BATCH_JOB_ID")
    if job_id is not None:
        # A child of an array job is "<parent id>:<index>"; every child shares the parent.
        parent, colon, tail = job_id.rpartition(":")
        name = ("AWS_BATCH_JOB_ID", parent if colon and tail.isdigit() else job_id)
    return _Slot(
        orchestrator="aws-batch", index=index, total=total, name=name, name_var="AWS_BATCH_JOB_ID"
    )


def _cloud_run(env: _Env) -> _Slot:
    var = "CLOUD_RUN_TASK_INDEX"
    index = env.number(var, "")
    total_var, total = _total(env, "CLOUD_RUN_TASK_COUNT", var)
    _in_range(var, index, total_var, total, env)
    return _Slot(
        orchestrator="cloud-run",
        index=index,
        total=total,
        name=_named(env, "CLOUD_RUN_JOB"),
        name_var="CLOUD_RUN_JOB",
        uid=_named(env, "CLOUD_RUN_EXECUTION"),
    )


def _google_batch(env: _Env) -> _Slot:
    var = "BATCH_TASK_INDEX"
    index = env.number(var, "")
    total_var, total = _total(env, "BATCH_TASK_COUNT", var)
    _in_range(var, index, total_var, total, env)
    return _Slot(
        orchestrator="google-batch",
        index=index,
        total=total,
        name=_named(env, "BATCH_JOB_ID"),
        name_var="BATCH_JOB_ID",
    )


def _named(env: _Env, name: str) -> tuple[str, str] | None:
    value = env.get(name)
    return None if value is None else (name, value)


def _slurm(env: _Env) -> _Slot:
    var = "SLURM_ARRAY_TASK_ID"
    task_id = env.number(var, "")
    low = env.number(
        "SLURM_ARRAY_TASK_MIN",
        f"{var}={env.get(var)!r} is set, so the array's lowest task id is needed",
    )
    step = (
        env.number("SLURM_ARRAY_TASK_STEP", "", minimum=1)
        if env.has("SLURM_ARRAY_TASK_STEP")
        else 1
    )
    high = env.number("SLURM_ARRAY_TASK_MAX", "") if env.has("SLURM_ARRAY_TASK_MAX") else None
    count = (
        env.number("SLURM_ARRAY_TASK_COUNT", "", minimum=1)
        if env.has("SLURM_ARRAY_TASK_COUNT")
        else None
    )
    facts = ", ".join(
        f"{name}={env.get(name)!r}"
        for name in (
            var,
            "SLURM_ARRAY_TASK_MIN",
            "SLURM_ARRAY_TASK_MAX",
            "SLURM_ARRAY_TASK_STEP",
            "SLURM_ARRAY_TASK_COUNT",
        )
        if env.has(name)
    )
    advice = (
        f"expected a regular range such as --array=0-15 or --array=0-12:4; for a sparse "
        f"array pass {WORKER_INDEX} and {WORKERS_TOTAL} explicitly"
    )
    if task_id < low or (high is not None and task_id > high):
        raise IdentityError(f"{var}={env.get(var)!r} lies outside the array ({facts}): {advice}")
    if high is not None and high < low:
        raise IdentityError(
            f"SLURM_ARRAY_TASK_MAX={env.get('SLURM_ARRAY_TASK_MAX')!r} is below "
            f"SLURM_ARRAY_TASK_MIN={env.get('SLURM_ARRAY_TASK_MIN')!r}: expected MAX >= MIN"
        )
    span = None if high is None else (high - low) // step + 1
    if count is None and span is None:
        count = env.number(
            WORKERS_TOTAL,
            f"neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX is set ({facts}): "
            f"expected Slurm to set them for an array job, or pass {WORKERS_TOTAL}",
            minimum=1,
        )
    elif count is None:
        count = span
    elif span is not None and span != count:
        # Every task of a sparse array fails alike, rather than some running and some not.
        raise IdentityError(
            f"the Slurm array is sparse ({facts}): task ids cannot be renumbered 0..N-1; {advice}"
        )
    assert count is not None
    offset = task_id - low
    if offset % step != 0 or offset // step >= count:
        raise IdentityError(
            f"{var}={env.get(var)!r} does not fit a regular array of {count} tasks "
            f"({facts}); {advice}"
        )
    _agrees(env, f"the Slurm array ({facts})", count)
    array_id = env.get("SLURM_ARRAY_JOB_ID")
    return _Slot(
        orchestrator="slurm",
        index=offset // step,
        total=count,
        name=None if array_id is None else ("SLURM_ARRAY_JOB_ID", f"slurm-{array_id}"),
        name_var="SLURM_ARRAY_JOB_ID",
    )


def _job_start(env: _Env, job_name: str, name_var: str) -> datetime | None:
    raw = env.get(JOB_START)
    if raw is not None:
        try:
            value = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise IdentityError(
                f"{JOB_START}={raw!r} is not an ISO 8601 timestamp: expected e.g. "
                "2025-02-19T21:20:00Z"
            ) from None
        if not _is_aware(value):
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
    if _DIGITS.fullmatch(suffix) is None:
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
