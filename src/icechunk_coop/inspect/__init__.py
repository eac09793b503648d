"""What an operator reads: a job's status, progress and timeline, and its cleanup.

A read model over the rendezvous and the targets: nothing here takes part
in a job. ``status``, ``report`` and ``clean`` of the command line are
built on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop.inspect._cleanup import (
        delete_temporary_branches,
        remove_job,
        temporary_branches,
    )
    from icechunk_coop.inspect._progress import JobProgress, ProgressReader, WorkerProgress
    from icechunk_coop.inspect._status import (
        JobListing,
        JobStatus,
        WorkerState,
        find_jobs,
        list_jobs,
        read_job,
    )
    from icechunk_coop.inspect._timeline import CriticalPath, Span, Timeline
    from icechunk_coop.wire._ledger import (
        METADATA_KEY,
        job_branch_prefix,
        job_of_branch,
        job_of_commit,
    )

_LAZY: dict[str, str] = {
    "JobListing": "icechunk_coop.inspect._status",
    "JobStatus": "icechunk_coop.inspect._status",
    "WorkerState": "icechunk_coop.inspect._status",
    "find_jobs": "icechunk_coop.inspect._status",
    "list_jobs": "icechunk_coop.inspect._status",
    "read_job": "icechunk_coop.inspect._status",
    "JobProgress": "icechunk_coop.inspect._progress",
    "ProgressReader": "icechunk_coop.inspect._progress",
    "WorkerProgress": "icechunk_coop.inspect._progress",
    "CriticalPath": "icechunk_coop.inspect._timeline",
    "Span": "icechunk_coop.inspect._timeline",
    "Timeline": "icechunk_coop.inspect._timeline",
    "delete_temporary_branches": "icechunk_coop.inspect._cleanup",
    "remove_job": "icechunk_coop.inspect._cleanup",
    "temporary_branches": "icechunk_coop.inspect._cleanup",
    "METADATA_KEY": "icechunk_coop.wire._ledger",
    "job_branch_prefix": "icechunk_coop.wire._ledger",
    "job_of_branch": "icechunk_coop.wire._ledger",
    "job_of_commit": "icechunk_coop.wire._ledger",
}

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "METADATA_KEY",
    "CriticalPath",
    "JobListing",
    "JobProgress",
    "JobStatus",
    "ProgressReader",
    "Span",
    "Timeline",
    "WorkerProgress",
    "WorkerState",
    "delete_temporary_branches",
    "find_jobs",
    "job_branch_prefix",
    "job_of_branch",
    "job_of_commit",
    "list_jobs",
    "read_job",
    "remove_job",
    "temporary_branches",
]
