"""Exactly once: what a commit says about its job, and how a job finds its own commit.

A restarted finalizer must not commit again, and a late pod must learn that
its job is done. Both read the target's history: every commit a job makes
carries the job id under :data:`METADATA_KEY`. Scanning from the tip down to
the job's base is enough, however many commits others made since: the job's
commit, if it exists, lies above the base it forked from. Temporary branches
are named after the job too, so cleanup (and ``icechunk-coop clean``) can
tell a dead job's leftovers from anyone else's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import icechunk

__all__ = [
    "BRANCH_PREFIX",
    "METADATA_KEY",
    "Provenance",
    "attempt_branch",
    "find_job_commit",
    "find_job_snapshot",
    "job_branch_prefix",
    "job_of_branch",
    "job_snapshot_in",
]

METADATA_KEY = "icechunk_coop"
BRANCH_PREFIX = "icechunk-coop/"
#: How far back a job with no known base looks for its own commit.
DEFAULT_SCAN = 500


def job_branch_prefix(job_id: str) -> str:
    """Where a job's temporary branches live: ``icechunk-coop/<job>/<attempt>``.

    Each merge attempt of a finalizer gets a branch of its own, so two copies
    of the last worker never reset or delete each other's work in progress.
    All of them are deleted after the commit (``icechunk-coop clean`` removes
    those of jobs that died).
    """
    return f"{BRANCH_PREFIX}{job_id}/"


def attempt_branch(job_id: str) -> str:
    """A fresh temporary branch for one merge attempt of ``job_id``."""
    return job_branch_prefix(job_id) + uuid.uuid4().hex[:12]


def job_of_branch(branch: str) -> str | None:
    """The job a temporary branch belongs to, or None for any other branch."""
    if not branch.startswith(BRANCH_PREFIX):
        return None
    return branch[len(BRANCH_PREFIX) :].split("/", 1)[0] or None


def job_of_commit(metadata: Mapping[str, Any] | None) -> str | None:
    """The job id a commit's metadata names, if it was made by a cooperative job."""
    meta = (metadata or {}).get(METADATA_KEY)
    return meta.get("job") if isinstance(meta, dict) else None


def _start_of_commit(metadata: Mapping[str, Any] | None) -> str | None:
    meta = (metadata or {}).get(METADATA_KEY)
    start = meta.get("job_start") if isinstance(meta, dict) else None
    return start if isinstance(start, str) else None


def find_job_snapshot(
    repo: icechunk.Repository,
    tip: str,
    job_id: str,
    base: str | None,
    scan: int = DEFAULT_SCAN,
    start: str | None = None,
) -> icechunk.SnapshotInfo | None:
    """The snapshot ``job_id`` committed among the ancestors of ``tip``, if any.

    With the job's ``base`` known the scan goes all the way down to it.
    Without it (no setup left to tell) the scan stops after ``scan``
    snapshots. ``start``, for a job known by its name alone (no uid), is
    this run's job start: a commit of the name that records another start
    belongs to an earlier run of the name, not to this one.
    """
    return job_snapshot_in(repo.ancestry(snapshot_id=tip), job_id, base, scan, start)


def job_snapshot_in(
    history: Iterable[icechunk.SnapshotInfo],
    job_id: str,
    base: str | None,
    scan: int = DEFAULT_SCAN,
    start: str | None = None,
) -> icechunk.SnapshotInfo | None:
    """The snapshot ``job_id`` committed in ``history`` (newest first), if any.

    :func:`find_job_snapshot` from a history already opened: a branch's
    (``repo.ancestry(branch=...)``) costs one read of the refs, where looking
    its tip up and then the tip's history costs two.
    """
    for n, info in enumerate(history):
        if job_of_commit(info.metadata) == job_id and (
            start is None or _start_of_commit(info.metadata) in (None, start)
        ):
            return info
        if info.id == base or (base is None and n >= scan):
            return None
    return None


def find_job_commit(
    repo: icechunk.Repository,
    tip: str,
    job_id: str,
    base: str | None,
    scan: int = DEFAULT_SCAN,
    start: str | None = None,
) -> str | None:
    """The id of :func:`find_job_snapshot`'s snapshot."""
    info = find_job_snapshot(repo, tip, job_id, base, scan, start)
    return None if info is None else str(info.id)


@attrs.frozen(kw_only=True)
class Provenance:
    """What every commit of a job records about it (under :data:`METADATA_KEY`)."""

    job: str
    job_name: str
    job_uid: str | None
    job_start: str | None
    workers: int
    setup: str

    def metadata(self, *, target: str, base: str, written: Mapping[str, Any]) -> dict[str, Any]:
        """The commit metadata of this job on ``target`` (forked at ``base``)."""
        return {
            METADATA_KEY: {
                **attrs.asdict(self),
                "target": target,
                "base": base,
                "written": dict(written),
            }
        }
