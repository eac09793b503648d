"""Many workers, one atomic Icechunk commit.

The public API is the names here, and three modules beside them:
:mod:`icechunk_coop.errors` (every error, by family), :mod:`icechunk_coop.inspect`
(status, progress, timeline and cleanup of jobs) and :mod:`icechunk_coop.testing`
(local servers, crash points, the fault proxy). Integrations sit in a module
named after what they integrate with (:mod:`icechunk_coop.dynamical`,
:mod:`icechunk_coop.reformatters`). The subpackages are the layers, each
importing only those below it::

    cli -> reformatters, dynamical -> jobs | inspect -> protocol -> targets
        -> rendezvous -> wire -> identity -> errors

Names are imported on first use (PEP 562): ``import icechunk_coop`` costs
almost nothing, and a process pays for icechunk, zarr and numpy only when it
touches what needs them. The command line's ``--help``, ``status`` of a
missing job or ``run-local``'s controller start without them; a worker
imports them with its first step, as it must.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# First, before anything imports icechunk: its log lines carry no colour codes into a pipe.
from icechunk_coop import _plain_logs  # noqa: F401  # isort: skip
from icechunk_coop.errors import ConfigurationError, CoopError, RetryableError

if TYPE_CHECKING:
    from icechunk_coop.identity import WorkerIdentity
    from icechunk_coop.jobs import Assignment, Loop, RegionJobLike, assign_jobs, run_region_jobs
    from icechunk_coop.protocol import (
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
    from icechunk_coop.rendezvous import WaitPolicy
    from icechunk_coop.targets import IcechunkTarget, Stores, Target, ZarrTarget, icechunk_storage
    from icechunk_coop.wire import INSECURE_ENV, SECRET_ENV

#: Where each lazily imported public name lives (the layer that owns it).
_LAZY: dict[str, str] = {
    "WorkerIdentity": "icechunk_coop.identity",
    "INSECURE_ENV": "icechunk_coop.wire",
    "SECRET_ENV": "icechunk_coop.wire",
    "WaitPolicy": "icechunk_coop.rendezvous",
    "IcechunkTarget": "icechunk_coop.targets",
    "Stores": "icechunk_coop.targets",
    "Target": "icechunk_coop.targets",
    "ZarrTarget": "icechunk_coop.targets",
    "icechunk_storage": "icechunk_coop.targets",
    **dict.fromkeys(
        [
            "CooperativeJob",
            "Forks",
            "Merged",
            "WorkerOutcome",
            "commit_merged",
            "get_forked_session",
            "get_merged_sessions",
            "is_first_worker",
            "is_last_worker",
            "publish_result",
        ],
        "icechunk_coop.protocol",
    ),
    **dict.fromkeys(
        ["Assignment", "Loop", "RegionJobLike", "assign_jobs", "run_region_jobs"],
        "icechunk_coop.jobs",
    ),
}

#: Names that lived here until 0.x and moved to a module of their own: they still
#: work, with a DeprecationWarning naming the new home, for one release.
_MOVED: dict[str, str] = {
    **dict.fromkeys(
        [
            "AlreadyCommittedError",
            "BranchKeptMovingError",
            "ChunkOverlapError",
            "CommitConflictError",
            "CommitOutcomeError",
            "ForeignPayloadError",
            "ForeignResultError",
            "IcechunkVersionError",
            "IdentityError",
            "JobNameReusedError",
            "MissingLocationError",
            "MissingSecretError",
            "OverlapError",
            "PayloadAuthenticationError",
            "PayloadError",
            "PayloadFormatError",
            "RegionOverlapError",
            "ShrinkRefusedError",
            "StorageUnreachableError",
            "WaitTimeoutError",
            "WorkerFailedError",
            "WorkersTotalMismatchError",
        ],
        "icechunk_coop.errors",
    ),
    **dict.fromkeys(
        [
            "CriticalPath",
            "JobListing",
            "JobProgress",
            "JobStatus",
            "METADATA_KEY",
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
        ],
        "icechunk_coop.inspect",
    ),
    "Rendezvous": "icechunk_coop.rendezvous",
    "normalise_url": "icechunk_coop.rendezvous",
    "Sealer": "icechunk_coop.wire",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    module = _MOVED.get(name)
    if module is not None:
        warnings.warn(
            f"icechunk_coop.{name} moved to {module}.{name}; import it from there "
            "(the old name goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "INSECURE_ENV",
    "SECRET_ENV",
    "Assignment",
    "ConfigurationError",
    "CoopError",
    "CooperativeJob",
    "Forks",
    "IcechunkTarget",
    "Loop",
    "Merged",
    "RegionJobLike",
    "RetryableError",
    "Stores",
    "Target",
    "WaitPolicy",
    "WorkerIdentity",
    "WorkerOutcome",
    "ZarrTarget",
    "assign_jobs",
    "commit_merged",
    "get_forked_session",
    "get_merged_sessions",
    "icechunk_storage",
    "is_first_worker",
    "is_last_worker",
    "publish_result",
    "run_region_jobs",
]
