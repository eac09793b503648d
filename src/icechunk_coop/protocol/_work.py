"""Step 2, work: a worker's own forks of every target, and the result it publishes.

A worker that runs twice replaces its own result whole (publish is
idempotent), so the merge sees exactly one result per index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs

from icechunk_coop.protocol import _crash
from icechunk_coop.protocol._context import JobContext
from icechunk_coop.protocol._setup import stores_of
from icechunk_coop.targets._drivers import Fork
from icechunk_coop.targets._targets import Stores
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, Result, Setup, result_name

__all__ = ["Forks", "open_forks", "publish_result", "result_of"]

log = logging.getLogger("icechunk_coop.protocol")


@attrs.frozen(kw_only=True)
class Forks:
    """What one worker writes into: its own copy of every target, as zarr stores."""

    setup: Setup = attrs.field(repr=False)
    forks: Mapping[str, Fork] = attrs.field(repr=False)
    stores: Stores


def open_forks(ctx: JobContext, setup: Setup) -> Forks:
    """This worker's private fork (or staging store) of every target."""
    forks = {d.name: d.fork(setup.targets[d.name]) for d in ctx.drivers}
    stores = stores_of(ctx, {name: f.store for name, f in forks.items()})
    return Forks(setup=setup, forks=forks, stores=stores)


def result_of(
    ctx: JobContext,
    forks: Forks,
    value: Any,
    timeline: Mapping[str, tuple[float, float]] | None = None,
) -> Result:
    """The result record of this worker: its forks and the value its work returned."""
    index = ctx.identity.worker_index
    sessions = {name: s for name, f in forks.forks.items() if (s := f.session) is not None}
    return Result(
        token=forks.setup.token,
        index=index,
        workers_total=ctx.identity.workers_total,
        forks=sessions,
        value=value,
        timeline=dict(timeline or {}),
        writes={name: f.writes() for name, f in forks.forks.items()},
    )


def _job_committed(ctx: JobContext) -> bool:
    return ctx.meeting.read(COMMITTED, Committed) is not None


def publish_result(ctx: JobContext, result: Result) -> None:
    """Publish this worker's result, replacing an earlier attempt's."""
    _crash.reach("before-publish-result")
    name = result_name(result.index)
    ctx.meeting.publish(name, result)
    log.info("%s: published its result", ctx.where)
    if ctx.cleanup and not ctx.identity.is_last and _job_committed(ctx):
        # The job committed while this copy worked (a twin, a late restart), and
        # its cleanup may have run before this result landed: nobody else would
        # ever remove it. The marker is published before the cleanup starts, so
        # a result that landed after the cleanup always sees it here.
        ctx.meeting.remove(name)
        log.info("%s: the job committed meanwhile; withdrew its result", ctx.where)
    _crash.reach("after-publish-result")
