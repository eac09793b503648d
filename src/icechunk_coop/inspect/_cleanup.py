"""Removing what jobs leave behind: their rendezvous namespace, their temporary branches.

A job cleans up after its own commit. What a crashed job leaves (a
namespace that never committed, a branch a finalizer was killed on) is
removed with these, by ``icechunk-coop clean`` or a script. Nothing here
opens a blob, so no secret is needed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from icechunk_coop.rendezvous._rendezvous import Rendezvous
from icechunk_coop.wire._ledger import job_of_branch
from icechunk_coop.wire._payload import Sealer

if TYPE_CHECKING:
    import icechunk

__all__ = ["delete_temporary_branches", "remove_job", "temporary_branches"]


def remove_job(
    root_url: str, job_id: str, *, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Delete the whole namespace of ``job_id`` under ``root_url``; returns its URL.

    The committed marker goes too: a pod of the job that starts afterwards
    would set the job up again. Remove only jobs that are finished or dead.
    """
    sealer = Sealer(job_id=job_id, secret=None)  # deleting opens nothing
    rv = Rendezvous.for_job(root_url, job_id=job_id, sealer=sealer, storage_options=storage_options)
    rv.remove_all()
    return rv.url


def temporary_branches(repo: icechunk.Repository) -> dict[str, list[str]]:
    """The temporary branches in ``repo``, by the job they belong to (other branches left out)."""
    found: dict[str, list[str]] = {}
    for branch in sorted(repo.list_branches()):
        job = job_of_branch(branch)
        if job is not None:
            found.setdefault(job, []).append(branch)
    return found


def delete_temporary_branches(repo: icechunk.Repository, job_ids: Collection[str]) -> list[str]:
    """Delete every temporary branch of the jobs ``job_ids`` in ``repo``; returns their names.

    Only branches in the jobs' own namespace (``icechunk-coop/<job>/...``)
    are touched; a job's commit on the target branch stays.
    """
    deleted = []
    for job, branches in temporary_branches(repo).items():
        if job in job_ids:
            for branch in branches:
                repo.delete_branch(branch)
                deleted.append(branch)
    return deleted
