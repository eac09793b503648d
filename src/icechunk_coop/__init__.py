"""Many workers, one atomic Icechunk commit.

The public API lives here; modules with a leading underscore are private.
"""

# First, before anything imports icechunk: its log lines carry no colour codes into a pipe.
from icechunk_coop import _plain_logs  # noqa: F401  # isort: skip
from icechunk_coop._cleanup import delete_temporary_branches, remove_job, temporary_branches
from icechunk_coop._errors import (
    AlreadyCommittedError,
    BranchKeptMovingError,
    CommitConflictError,
    CommitOutcomeError,
    ConfigurationError,
    CoopError,
    ForeignPayloadError,
    ForeignResultError,
    IcechunkVersionError,
    IdentityError,
    MissingLocationError,
    MissingSecretError,
    PayloadAuthenticationError,
    PayloadError,
    PayloadFormatError,
    RetryableError,
    ShrinkRefusedError,
    StorageUnreachableError,
    WaitTimeoutError,
    WorkerFailedError,
    WorkersTotalMismatchError,
)
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

__all__ = [
    "INSECURE_ENV",
    "METADATA_KEY",
    "SECRET_ENV",
    "AlreadyCommittedError",
    "Assignment",
    "BranchKeptMovingError",
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
    "JobProgress",
    "JobStatus",
    "Loop",
    "Merged",
    "MissingLocationError",
    "MissingSecretError",
    "PayloadAuthenticationError",
    "PayloadError",
    "PayloadFormatError",
    "ProgressReader",
    "RegionJobLike",
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
