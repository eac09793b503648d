"""Reading a worker's identity from its orchestrator's environment.

Each orchestrator's own words for the index and total are read in
``_slots`` (Kubernetes Indexed Jobs, JobSets, Volcano jobs, AWS Batch array
jobs, Cloud Run jobs, Google Batch, Slurm job arrays). :func:`read_identity`
takes the first one present and picks the job's name and uid: the explicit
``JOB_NAME``/``JOB_UID`` win over the orchestrator's own. It also reads,
where the orchestrator gives them, which try of its worker this is and the
pod's name, for failure markers and logs. Orchestrators without an index
variable (Argo Workflows) pass ``WORKER_INDEX`` and ``WORKERS_TOTAL``.
:class:`~icechunk_coop.identity._worker.WorkerIdentity` validates the result again
as a value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime

import attrs

from icechunk_coop.errors import IdentityError
from icechunk_coop.identity._env import (
    JOB_NAME,
    JOB_UID,
    JOBSET_RESTART_ATTEMPT,
    POD_NAME,
    WORKER_ATTEMPT,
    Env,
)
from icechunk_coop.identity._segments import check_segment
from icechunk_coop.identity._slots import Slot, read_slot
from icechunk_coop.identity._start import read_job_start

__all__ = ["IdentityFields", "read_identity"]


@attrs.frozen(kw_only=True)
class IdentityFields:
    """What the environment says, before :class:`WorkerIdentity` checks it as a value."""

    worker_index: int
    workers_total: int
    job_name: str
    job_uid: str | None
    job_start: datetime | None
    orchestrator: str
    attempt: int | None = None
    restart: int | None = None
    pod: str | None = None


def read_identity(environ: Mapping[str, str] | None = None) -> IdentityFields:
    """Read index, total, job name, uid and start from ``environ`` (``os.environ`` by default).

    See :meth:`WorkerIdentity.from_env
    <icechunk_coop.identity._worker.WorkerIdentity.from_env>` for the precedence.
    """
    env = Env(os.environ if environ is None else environ)
    found = read_slot(env)
    name_var, job_name = _pick(env, JOB_NAME, found.name)
    if job_name is None:
        where = f" (nor {found.name_var})" if found.name_var else ""
        raise IdentityError(
            f"{JOB_NAME} is not set{where}: expected the job's name, the same in every "
            f"worker. {found.name_hint}"
        )
    check_segment(name_var, job_name)
    uid_var, job_uid = _pick(env, JOB_UID, found.uid)
    if job_uid is not None:
        check_segment(uid_var, job_uid)
    job_start = read_job_start(env, job_name, name_var)
    return IdentityFields(
        worker_index=found.index,
        workers_total=found.total,
        job_name=job_name,
        job_uid=job_uid,
        job_start=job_start,
        orchestrator=found.orchestrator,
        attempt=_attempt(env, found),
        restart=env.number(JOBSET_RESTART_ATTEMPT, "") if env.has(JOBSET_RESTART_ATTEMPT) else None,
        pod=_pod(env, found),
    )


#: What a pod name may look like: Kubernetes' metadata.name (a DNS subdomain), or a
#: hostname; letters, digits, '.', '-' and '_', starting and ending with a letter or digit.
POD_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


def _attempt(env: Env, found: Slot) -> int | None:
    """Earlier tries of this worker: ``WORKER_ATTEMPT``, else the orchestrator's own count.

    Counted from 0 whatever the orchestrator counts from (AWS Batch from 1).
    None when the environment does not say: a marker then says nothing
    rather than something untrue.
    """
    if env.has(WORKER_ATTEMPT):
        return env.number(WORKER_ATTEMPT, "")
    if found.attempt_var is None or not env.has(found.attempt_var):
        return None
    base = found.attempt_base
    return env.number(found.attempt_var, "", minimum=base) - base


def _pod(env: Env, found: Slot) -> str | None:
    """``POD_NAME``, else (in a Kubernetes pod) ``HOSTNAME``, which the kubelet sets to it.

    A bad ``POD_NAME`` is refused (someone set it, wrongly); a ``HOSTNAME``
    that is not a pod name (``spec.hostname`` set to something else) is
    only left out.
    """
    raw = env.get(POD_NAME)
    if raw is not None:
        if POD_PATTERN.fullmatch(raw) is None:
            raise IdentityError(
                f"{POD_NAME}={raw!r} is not a pod name: expected at most 253 letters, digits, "
                "'.', '-' or '_', as Kubernetes' metadata.name (set it from the downward "
                "API: fieldPath metadata.name)"
            )
        return raw
    host = env.get("HOSTNAME")
    if found.in_pod and host is not None and POD_PATTERN.fullmatch(host):
        return host
    return None


def _pick(env: Env, explicit: str, fallback: tuple[str, str] | None) -> tuple[str, str | None]:
    value = env.get(explicit)
    if value is not None or fallback is None:
        return explicit, value
    return fallback
