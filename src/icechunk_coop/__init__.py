"""Many workers, one atomic Icechunk commit.

The public API lives here; modules with a leading underscore are private.

Names are imported on first use (PEP 562): ``import icechunk_coop`` costs
almost nothing, and a process pays for icechunk, zarr and numpy only when it
touches what needs them. The command line's ``--help``, ``status`` of a
missing job or ``run-local``'s controller start without them; a worker
imports them with its first step, as it must. The errors are imported at
once: they are light, and ``except`` clauses name them before anything runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# First, before anything imports icechunk: its log lines carry no colour codes into a pipe.
from icechunk_coop import _plain_logs  # noqa: F401  # isort: skip
from icechunk_coop._errors import (
    AlreadyCommittedError,
    BranchKeptMovingError,
    ChunkOverlapError,
    CommitConflictError,
    CommitOutcomeError,
    ConfigurationError,
    CoopError,
    ForeignPayloadError,
    ForeignResultError,
    IcechunkVersionError,
    IdentityError,
    JobNameReusedError,
    MissingLocationError,
    MissingSecretError,
    OverlapError,
    PayloadAuthenticationError,
    PayloadError,
    PayloadFormatError,
    RegionOverlapError,
    RetryableError,
    ShrinkRefusedError,
    StorageUnreachableError,
    WaitTimeoutError,
    WorkerFailedError,
    WorkersTotalMismatchError,
)
from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop._cleanup import delete_temporary_branches, remove_job, temporary_branches
    from icechunk_coop._identity import WorkerIdentity
    from icechunk_coop._ledger import METADATA_KEY, job_branch_prefix, job_of_branch, job_of_commit
    from icechunk_coop._locations import normalise_url
    from icechunk_coop._loop import Assignment, Loop, RegionJobLike, assign_jobs, run_region_jobs
    from icechunk_coop._payload import INSECURE_ENV, SECRET_ENV, Sealer
    from icechunk_coop._progress import JobProgress, ProgressReader, WorkerProgress
    from icechunk_coop._rendezvous import Rendezvous
    from icechunk_coop._status import (
        JobListing,
        JobStatus,
        WorkerState,
        find_jobs,
        list_jobs,
        read_job,
    )
    from icechunk_coop._storage import icechunk_storage
    from icechunk_coop._targets import IcechunkTarget, Stores, Target, ZarrTarget
    from icechunk_coop._timeline import CriticalPath, Span, Timeline
    from icechunk_coop._waiting import WaitPolicy
    from icechunk_coop.cooperative import (
        CooperativeJob,
        Forks,
        Merged,
        WorkerOutcome,
        commit_merged,
        get_forked_session,
        get_merged_sessions,
        is_first_worker,
        is_last_worker,
        publish_result,
    )

#: Where each lazily imported public name lives.
_LAZY: dict[str, str] = {
    "delete_temporary_branches": "icechunk_coop._cleanup",
    "remove_job": "icechunk_coop._cleanup",
    "temporary_branches": "icechunk_coop._cleanup",
    "WorkerIdentity": "icechunk_coop._identity",
    "METADATA_KEY": "icechunk_coop._ledger",
    "job_branch_prefix": "icechunk_coop._ledger",
    "job_of_branch": "icechunk_coop._ledger",
    "job_of_commit": "icechunk_coop._ledger",
    "normalise_url": "icechunk_coop._locations",
    "Assignment": "icechunk_coop._loop",
    "Loop": "icechunk_coop._loop",
    "RegionJobLike": "icechunk_coop._loop",
    "assign_jobs": "icechunk_coop._loop",
    "run_region_jobs": "icechunk_coop._loop",
    "INSECURE_ENV": "icechunk_coop._payload",
    "SECRET_ENV": "icechunk_coop._payload",
    "Sealer": "icechunk_coop._payload",
    "JobProgress": "icechunk_coop._progress",
    "ProgressReader": "icechunk_coop._progress",
    "WorkerProgress": "icechunk_coop._progress",
    "Rendezvous": "icechunk_coop._rendezvous",
    "JobListing": "icechunk_coop._status",
    "JobStatus": "icechunk_coop._status",
    "WorkerState": "icechunk_coop._status",
    "find_jobs": "icechunk_coop._status",
    "list_jobs": "icechunk_coop._status",
    "read_job": "icechunk_coop._status",
    "icechunk_storage": "icechunk_coop._storage",
    "IcechunkTarget": "icechunk_coop._targets",
    "Stores": "icechunk_coop._targets",
    "Target": "icechunk_coop._targets",
    "ZarrTarget": "icechunk_coop._targets",
    "CriticalPath": "icechunk_coop._timeline",
    "Span": "icechunk_coop._timeline",
    "Timeline": "icechunk_coop._timeline",
    "WaitPolicy": "icechunk_coop._waiting",
    "CooperativeJob": "icechunk_coop.cooperative",
    "Forks": "icechunk_coop.cooperative",
    "Merged": "icechunk_coop.cooperative",
    "WorkerOutcome": "icechunk_coop.cooperative",
    "commit_merged": "icechunk_coop.cooperative",
    "get_forked_session": "icechunk_coop.cooperative",
    "get_merged_sessions": "icechunk_coop.cooperative",
    "is_first_worker": "icechunk_coop.cooperative",
    "is_last_worker": "icechunk_coop.cooperative",
    "publish_result": "icechunk_coop.cooperative",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "INSECURE_ENV",
    "METADATA_KEY",
    "SECRET_ENV",
    "AlreadyCommittedError",
    "Assignment",
    "BranchKeptMovingError",
    "ChunkOverlapError",
    "CommitConflictError",
    "CommitOutcomeError",
    "ConfigurationError",
    "CoopError",
    "CooperativeJob",
    "CriticalPath",
    "ForeignPayloadError",
    "ForeignResultError",
    "Forks",
    "IcechunkTarget",
    "IcechunkVersionError",
    "IdentityError",
    "JobListing",
    "JobNameReusedError",
    "JobProgress",
    "JobStatus",
    "Loop",
    "Merged",
    "MissingLocationError",
    "MissingSecretError",
    "OverlapError",
    "PayloadAuthenticationError",
    "PayloadError",
    "PayloadFormatError",
    "ProgressReader",
    "RegionJobLike",
    "RegionOverlapError",
    "Rendezvous",
    "RetryableError",
    "Sealer",
    "ShrinkRefusedError",
    "Span",
    "StorageUnreachableError",
    "Stores",
    "Target",
    "Timeline",
    "WaitPolicy",
    "WaitTimeoutError",
    "WorkerFailedError",
    "WorkerIdentity",
    "WorkerOutcome",
    "WorkerProgress",
    "WorkerState",
    "WorkersTotalMismatchError",
    "ZarrTarget",
    "assign_jobs",
    "commit_merged",
    "delete_temporary_branches",
    "find_jobs",
    "get_forked_session",
    "get_merged_sessions",
    "icechunk_storage",
    "is_first_worker",
    "is_last_worker",
    "job_branch_prefix",
    "job_of_branch",
    "job_of_commit",
    "list_jobs",
    "normalise_url",
    "publish_result",
    "read_job",
    "remove_job",
    "run_region_jobs",
    "temporary_branches",
]
