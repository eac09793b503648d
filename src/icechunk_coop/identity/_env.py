"""The environment as the identity reads it: variable names and raw values.

These are the variables :meth:`WorkerIdentity.from_env
<icechunk_coop.identity._worker.WorkerIdentity.from_env>` consults, the view of
the environment that treats an empty value as unset (the downward API
yields "" for a missing label), and the one way a number is parsed from it,
so every reader reports a bad value alike, naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from icechunk_coop.errors import IdentityError

__all__ = [
    "CRONJOB_NAME",
    "CRON_JOB_NAME",
    "DIGITS",
    "INDEX_VARIABLES",
    "JOBSET_JOBS",
    "JOBSET_JOB_INDEX",
    "JOBSET_NAME",
    "JOBSET_RESTART_ATTEMPT",
    "JOBSET_UID",
    "JOB_INDEX_FAILURE_COUNT",
    "JOB_NAME",
    "JOB_START",
    "JOB_UID",
    "ORCHESTRATORS",
    "POD_NAME",
    "WORKERS_TOTAL",
    "WORKER_ATTEMPT",
    "WORKER_INDEX",
    "Env",
    "number",
]

#: Where an identity can come from; the value of :attr:`WorkerIdentity.orchestrator`.
ORCHESTRATORS: Final = (
    "explicit",
    "kubernetes",
    "jobset",
    "volcano",
    "aws-batch",
    "cloud-run",
    "google-batch",
    "slurm",
)

# Explicit variables: they win over anything an orchestrator sets.
WORKER_INDEX: Final = "WORKER_INDEX"
WORKERS_TOTAL: Final = "WORKERS_TOTAL"
JOB_NAME: Final = "JOB_NAME"
JOB_UID: Final = "JOB_UID"
JOB_START: Final = "JOB_START"
CRONJOB_NAME: Final = "CRONJOB_NAME"
CRON_JOB_NAME: Final = "CRON_JOB_NAME"  # the spelling reformatters' CronJobs use

# Which try of its worker this pod is, and which pod: for failure markers and logs only.
# The pod spec sets them from the downward API (Kubernetes has no variable of its own):
# WORKER_ATTEMPT wins over every orchestrator's count (Argo: "{{retries}}");
# JOB_INDEX_FAILURE_COUNT from metadata.annotations['batch.kubernetes.io/job-index-failure-count'];
# POD_NAME from metadata.name (HOSTNAME stands in on Kubernetes when it is not set).
WORKER_ATTEMPT: Final = "WORKER_ATTEMPT"
JOB_INDEX_FAILURE_COUNT: Final = "JOB_INDEX_FAILURE_COUNT"
POD_NAME: Final = "POD_NAME"

# JobSet: the pods of every child Job are Indexed Job pods (JOB_COMPLETION_INDEX); these,
# set from the pod's jobset.sigs.k8s.io/... labels, say which child Job and which JobSet.
JOBSET_NAME: Final = "JOBSET_NAME"  # jobset-name
JOBSET_UID: Final = "JOBSET_UID"  # jobset-uid
JOBSET_JOB_INDEX: Final = "JOBSET_JOB_INDEX"  # job-global-index (or job-index)
JOBSET_JOBS: Final = "JOBSET_JOBS"  # global-replicas (or replicatedjob-replicas)
JOBSET_RESTART_ATTEMPT: Final = "JOBSET_RESTART_ATTEMPT"  # restart-attempt

DIGITS: Final = re.compile(r"[0-9]+")
INDEX_VARIABLES: Final = (
    WORKER_INDEX,
    "JOB_COMPLETION_INDEX",
    "VC_TASK_INDEX",
    "AWS_BATCH_JOB_ARRAY_INDEX",
    "CLOUD_RUN_TASK_INDEX",
    "BATCH_TASK_INDEX",
    "SLURM_ARRAY_TASK_ID",
)


class Env:
    """The environment with empty values treated as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value else None

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def names(self) -> list[str]:
        """The names of the variables that are set (and not empty), sorted."""
        return sorted(name for name, value in self._environ.items() if value)

    def need(self, name: str, why: str) -> str:
        value = self.get(name)
        if value is None:
            raise IdentityError(f"{name} is not set: {why}")
        return value

    def number(self, name: str, why: str, *, minimum: int = 0) -> int:
        return number(name, self.need(name, why), minimum=minimum)


def number(name: str, raw: str, *, minimum: int = 0) -> int:
    text = raw.strip()
    if DIGITS.fullmatch(text) is None:
        kind = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise IdentityError(f"{name}={raw!r} is not a valid number: expected {kind}")
    try:
        value = int(text)
    except ValueError:  # more digits than int() will parse
        raise IdentityError(f"{name}={raw!r} is not a valid number: too many digits") from None
    if value < minimum:
        raise IdentityError(f"{name}={raw!r} is too small: expected an integer >= {minimum}")
    return value
