"""Who am I: the worker's index, the job's total, name, uid and start.

Read from the orchestrator's environment (a Kubernetes Indexed Job first;
JobSet, Volcano, AWS Batch, Cloud Run, Google Batch, Slurm, or explicit
variables) and validated. Knows nothing of storage or icechunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop.identity._worker import ORCHESTRATORS, WorkerIdentity

_LAZY: dict[str, str] = {
    "WorkerIdentity": "icechunk_coop.identity._worker",
    "ORCHESTRATORS": "icechunk_coop.identity._worker",
}

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ORCHESTRATORS",
    "WorkerIdentity",
]
