"""The steps of :meth:`CooperativeJob.run` one by one, for a loop that drives them itself.

``get_forked_session`` (worker 0 prepares and publishes; the others wait and
load), the worker's own writes, then ``publish_result`` on every worker but
the last, and ``get_merged_sessions`` then ``commit_merged`` on the last.
Each raises :class:`~icechunk_coop.errors.AlreadyCommittedError` where
``run`` would return "already-committed".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from icechunk_coop.errors import ConfigurationError
from icechunk_coop.identity._worker import WorkerIdentity
from icechunk_coop.protocol import _commit, _finalize, _setup, _work
from icechunk_coop.protocol._context import Done
from icechunk_coop.protocol._cooperative import CooperativeJob
from icechunk_coop.protocol._finalize import Finalize, Merged, Message
from icechunk_coop.protocol._setup import Prepare
from icechunk_coop.protocol._work import Forks
from icechunk_coop.targets._drivers import BranchMoved
from icechunk_coop.targets._targets import Stores

__all__ = [
    "commit_merged",
    "get_forked_session",
    "get_merged_sessions",
    "is_first_worker",
    "is_last_worker",
    "publish_result",
]


def is_first_worker(identity: WorkerIdentity) -> bool:
    """Worker 0 prepares the job (structural changes, the fork everyone writes into)."""
    return identity.is_first


def is_last_worker(identity: WorkerIdentity) -> bool:
    """The highest index merges and commits: with parallelism < completions it starts last."""
    return identity.is_last


def get_forked_session(job: CooperativeJob, prepare: Prepare | None = None) -> Forks:
    """Worker 0 prepares and publishes the setup; the others wait and load it.

    Returns this worker's own fork of every target (``forks.stores``).
    Raises :class:`~icechunk_coop.errors.AlreadyCommittedError` if the job
    is committed already: there is nothing left to write.
    """
    ctx = job._ctx
    setup = _setup.setup(ctx, prepare)
    if isinstance(setup, Done):
        raise setup.error(ctx.job_id)
    return _work.open_forks(ctx, setup)


def publish_result(job: CooperativeJob, forks: Forks, value: Any = None) -> None:
    """Publish this worker's forks and ``value`` (any picklable) for the last worker."""
    _work.publish_result(job._ctx, _work.result_of(job._ctx, forks, value))


def get_merged_sessions(job: CooperativeJob, forks: Forks, value: Any = None) -> Merged:
    """On the last worker: publish its own result, wait for every other, pin and merge.

    Nothing is committed yet: write final metadata into ``merged.stores``,
    then call :func:`commit_merged`. Raises
    :class:`~icechunk_coop.errors.AlreadyCommittedError` if a twin of this
    worker committed the job meanwhile.
    """
    ctx = job._ctx
    if not job.identity.is_last:
        raise ConfigurationError(
            f"{ctx.where}: only the last worker merges; call publish_result on the others"
        )
    publish_result(job, forks, value)
    collected = _finalize.collect_and_merge(ctx, forks.setup)
    if isinstance(collected, Done):
        raise collected.error(ctx.job_id)
    merged = _finalize.pin_and_merge(ctx, forks.setup, *collected)
    if isinstance(merged, Done):
        raise merged.error(ctx.job_id)
    return merged


def commit_merged(
    job: CooperativeJob, merged: Merged, *, message: Message, finalize: Finalize | None = None
) -> Mapping[str, str]:
    """Commit a merge to every target (replicas first) and clean up; return the snapshots.

    If a target moves under the commit, the merge is rebuilt; ``finalize``
    (the same as you applied to ``merged``) is then run on the new merge.
    Without it a retry would lose your final metadata, so none is made.
    Raises :class:`~icechunk_coop.errors.AlreadyCommittedError` if every
    target holds the job already (a twin committed it).
    """
    ctx = job._ctx
    if finalize is None:
        # What was written into ``merged`` cannot be written again: the first
        # attempt is the only one, and a merge made for another stops it.
        ctx = attrs.evolve(ctx, commit_attempts=1)

        def finalize(stores: Stores, results: Sequence[Any]) -> None:
            raise BranchMoved(ctx.primary.name)

    snapshots = _commit.commit(
        ctx, merged.setup, merged.plan, message=message, finalize=finalize, merged=merged
    )
    if isinstance(snapshots, Done):
        raise snapshots.error(ctx.job_id)
    _commit.after_commit(ctx, snapshots)
    return snapshots
