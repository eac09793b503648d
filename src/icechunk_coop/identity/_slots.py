"""Which task of how many: each orchestrator's own variables, read and checked.

Every orchestrator that runs indexed work tells each task its index in its
own words. :func:`read_slot` finds the first one present and normalises its
numbering to ``0 <= index < total`` (the same checks whatever the source,
each error naming the variable it read), with where that orchestrator keeps
the job's name, uid and try count.
"""

from __future__ import annotations

import re

import attrs

from icechunk_coop.errors import IdentityError
from icechunk_coop.identity._env import (
    INDEX_VARIABLES,
    JOB_INDEX_FAILURE_COUNT,
    JOBSET_JOB_INDEX,
    JOBSET_JOBS,
    JOBSET_NAME,
    JOBSET_UID,
    WORKER_INDEX,
    WORKERS_TOTAL,
    Env,
    number,
)

__all__ = ["Slot", "read_slot"]


_KUBERNETES_NAME_HINT = (
    "On Kubernetes set it from the downward API (metadata.labels['batch.kubernetes.io/job-name'])."
)


@attrs.frozen(kw_only=True)
class Slot:
    """Index and total as read, with where the orchestrator keeps its names."""

    orchestrator: str
    index: int
    total: int
    name: tuple[str, str] | None = None  # (variable, value) of the job name
    name_var: str | None = None  # where this orchestrator keeps the job name, if anywhere
    uid: tuple[str, str] | None = None
    name_hint: str = _KUBERNETES_NAME_HINT
    attempt_var: str | None = None  # where this orchestrator counts earlier tries
    attempt_base: int = 0  # what that count says on the first try
    in_pod: bool = False  # a Kubernetes pod: HOSTNAME is the pod's name


def _in_range(index_var: str, index: int, total_var: str, total: int, env: Env) -> None:
    if index >= total:
        raise IdentityError(
            f"{index_var}={env.get(index_var)!r} is out of range for "
            f"{total_var}={env.get(total_var)!r}: expected 0..{total - 1}"
        )


def _total(env: Env, own: str, index_var: str) -> tuple[str, int]:
    """The orchestrator's own count, or WORKERS_TOTAL; the two must agree if both are set."""
    if env.has(own):
        total = env.number(own, "", minimum=1)
        _agrees(env, f"{own}={env.get(own)!r}", total)
        return own, total
    why = (
        f"{index_var} is set but neither {own} nor {WORKERS_TOTAL} says how many workers there are"
    )
    return WORKERS_TOTAL, env.number(WORKERS_TOTAL, why, minimum=1)


def _counted(env: Env, index_var: str, own_total: str) -> tuple[int, int]:
    """Index and total from an orchestrator's pair of variables (or ``WORKERS_TOTAL``), checked."""
    index = env.number(index_var, "")
    total_var, total = _total(env, own_total, index_var)
    _in_range(index_var, index, total_var, total, env)
    return index, total


def _agrees(env: Env, source: str, total: int) -> None:
    """WORKERS_TOTAL, when also set, must not contradict the orchestrator's count."""
    raw = env.get(WORKERS_TOTAL)
    if raw is not None and number(WORKERS_TOTAL, raw, minimum=1) != total:
        raise IdentityError(
            f"{WORKERS_TOTAL}={raw!r} contradicts {source}, which means {total} workers: "
            f"expected them to agree (or leave {WORKERS_TOTAL} unset)"
        )


def read_slot(env: Env) -> Slot:
    if env.has(WORKER_INDEX):
        return _explicit(env)
    if env.has("JOB_COMPLETION_INDEX"):
        if any(env.has(name) for name in (JOBSET_NAME, JOBSET_JOB_INDEX, JOBSET_JOBS)):
            return _jobset(env)
        return _kubernetes(env)
    if env.has("VC_TASK_INDEX") or env.has("VK_TASK_INDEX"):
        return _volcano(env)
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
        f"no worker index found{hint}: looked for {', '.join(INDEX_VARIABLES)}. Expected an "
        f"indexed job (Kubernetes Indexed Job, JobSet, Volcano job, AWS Batch array, Cloud Run "
        f"job, Google Batch, Slurm array) or {WORKER_INDEX} and {WORKERS_TOTAL} set explicitly "
        "(Argo Workflows and anything else that starts the workers itself)."
    )


def _explicit(env: Env) -> Slot:
    index = env.number(WORKER_INDEX, "")
    raw_index = env.get(WORKER_INDEX)
    total = env.number(
        WORKERS_TOTAL,
        f"{WORKER_INDEX}={raw_index!r} is set, so {WORKERS_TOTAL} must say how many workers "
        "there are: expected an integer >= 1",
        minimum=1,
    )
    _in_range(WORKER_INDEX, index, WORKERS_TOTAL, total, env)
    return Slot(orchestrator="explicit", index=index, total=total)


def _kubernetes(env: Env) -> Slot:
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
    return Slot(
        orchestrator="kubernetes",
        index=index,
        total=total,
        attempt_var=JOB_INDEX_FAILURE_COUNT,
        in_pod=True,
    )


def _jobset(env: Env) -> Slot:
    """A JobSet: child Jobs of equal completions, numbered by ``JOBSET_JOB_INDEX``.

    Worker ``i`` of child Job ``j`` is worker ``j * completions + i`` of the
    whole JobSet, which is the job: its name and uid are the JobSet's, so
    every child Job meets in one place. Without ``JOBSET_JOB_INDEX`` and
    ``JOBSET_JOBS`` every child Job would take itself for the first, so
    they are required, not defaulted.
    """
    var = "JOB_COMPLETION_INDEX"
    completion = env.number(var, "")
    label = "metadata.labels['jobset.sigs.k8s.io/{}']"

    def why(name: str, key: str) -> str:
        return (
            f"{var} is set in a JobSet pod, which needs {JOBSET_JOB_INDEX} and {JOBSET_JOBS} "
            f"to tell its child Jobs apart: set {name} from the downward API "
            f"({label.format(key)})"
        )

    job_index = env.number(JOBSET_JOB_INDEX, why(JOBSET_JOB_INDEX, "job-global-index"))
    jobs = env.number(JOBSET_JOBS, why(JOBSET_JOBS, "global-replicas"), minimum=1)
    total = env.number(
        WORKERS_TOTAL,
        f"{var}={env.get(var)!r} is set in a JobSet pod, but no variable carries the "
        f"worker count: the pod spec must pass {WORKERS_TOTAL} equal to the child Jobs' "
        f"completions times {JOBSET_JOBS}",
        minimum=1,
    )
    _in_range(JOBSET_JOB_INDEX, job_index, JOBSET_JOBS, jobs, env)
    if total % jobs:
        raise IdentityError(
            f"{WORKERS_TOTAL}={env.get(WORKERS_TOTAL)!r} is not a multiple of "
            f"{JOBSET_JOBS}={env.get(JOBSET_JOBS)!r}: expected every child Job to have the "
            f"same completions, and {WORKERS_TOTAL} = completions x {JOBSET_JOBS}"
        )
    per_job = total // jobs
    if completion >= per_job:
        raise IdentityError(
            f"{var}={env.get(var)!r} is out of range for child Jobs of {per_job} completions "
            f"({WORKERS_TOTAL}={env.get(WORKERS_TOTAL)!r} / {JOBSET_JOBS}="
            f"{env.get(JOBSET_JOBS)!r}): expected 0..{per_job - 1}"
        )
    return Slot(
        orchestrator="jobset",
        index=job_index * per_job + completion,
        total=total,
        name=_named(env, JOBSET_NAME),
        name_var=JOBSET_NAME,
        uid=_named(env, JOBSET_UID),
        name_hint=(
            f"In a JobSet set {JOBSET_NAME} from the downward API "
            f"({label.format('jobset-name')}), not the child Job's name, which differs "
            "between child Jobs."
        ),
        attempt_var=JOB_INDEX_FAILURE_COUNT,
        in_pod=True,
    )


_VOLCANO_COUNT = re.compile(r"VC_[A-Z0-9_]+_NUM")


def _volcano(env: Env) -> Slot:
    """A Volcano job's task: ``VC_TASK_INDEX`` (its env plugin), total from ``VC_<TASK>_NUM``.

    The svc plugin gives every pod one ``VC_<TASK>_NUM`` per task of the job;
    with one task that is the worker count, with several the pod cannot tell
    which is its own, so ``WORKERS_TOTAL`` must say.
    """
    var = "VC_TASK_INDEX" if env.has("VC_TASK_INDEX") else "VK_TASK_INDEX"
    index = env.number(var, "")
    if env.has("VK_TASK_INDEX") and env.number("VK_TASK_INDEX", "") != index:
        raise IdentityError(
            f"VK_TASK_INDEX={env.get('VK_TASK_INDEX')!r} contradicts "
            f"VC_TASK_INDEX={env.get('VC_TASK_INDEX')!r}: Volcano sets both to the same value"
        )
    counts = [name for name in env.names() if _VOLCANO_COUNT.fullmatch(name)]
    if len(counts) == 1:
        total_var, total = _total(env, counts[0], var)
    else:
        several = f" (it has several tasks: {', '.join(counts)})" if counts else ""
        total_var, total = (
            WORKERS_TOTAL,
            env.number(
                WORKERS_TOTAL,
                f"{var}={env.get(var)!r} is set (a Volcano job), but which task count is this "
                f"task's is unknown{several}: set {WORKERS_TOTAL} to the task's replicas",
                minimum=1,
            ),
        )
    _in_range(var, index, total_var, total, env)
    return Slot(
        orchestrator="volcano",
        index=index,
        total=total,
        name_hint=(
            "In a Volcano job set it from the downward API "
            "(metadata.annotations['volcano.sh/job-name'])."
        ),
        in_pod=True,
    )


def _aws_batch(env: Env) -> Slot:
    index, total = _counted(env, "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE")
    name = None
    job_id = env.get("AWS_BATCH_JOB_ID")
    if job_id is not None:
        # A child of an array job is "<parent id>:<index>"; every child shares the parent.
        parent, colon, tail = job_id.rpartition(":")
        name = ("AWS_BATCH_JOB_ID", parent if colon and tail.isdigit() else job_id)
    return Slot(
        orchestrator="aws-batch",
        index=index,
        total=total,
        name=name,
        name_var="AWS_BATCH_JOB_ID",
        attempt_var="AWS_BATCH_JOB_ATTEMPT",
        attempt_base=1,
    )


def _cloud_run(env: Env) -> Slot:
    index, total = _counted(env, "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT")
    return Slot(
        orchestrator="cloud-run",
        index=index,
        total=total,
        name=_named(env, "CLOUD_RUN_JOB"),
        name_var="CLOUD_RUN_JOB",
        uid=_named(env, "CLOUD_RUN_EXECUTION"),
        attempt_var="CLOUD_RUN_TASK_ATTEMPT",
    )


def _google_batch(env: Env) -> Slot:
    index, total = _counted(env, "BATCH_TASK_INDEX", "BATCH_TASK_COUNT")
    return Slot(
        orchestrator="google-batch",
        index=index,
        total=total,
        name=_named(env, "BATCH_JOB_ID"),
        name_var="BATCH_JOB_ID",
        attempt_var="BATCH_TASK_RETRY_ATTEMPT",
    )


def _named(env: Env, name: str) -> tuple[str, str] | None:
    value = env.get(name)
    return None if value is None else (name, value)


def _slurm(env: Env) -> Slot:
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
    return Slot(
        orchestrator="slurm",
        index=offset // step,
        total=count,
        name=None if array_id is None else ("SLURM_ARRAY_JOB_ID", f"slurm-{array_id}"),
        name_var="SLURM_ARRAY_JOB_ID",
        attempt_var="SLURM_RESTART_COUNT",
    )
