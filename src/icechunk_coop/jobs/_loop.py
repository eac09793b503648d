"""The region-job loop as a function: no base class to inherit, only hooks.

A pipeline already has its region jobs, its template and its own commands.
:func:`run_region_jobs` takes a ready :class:`CooperativeJob`, the *whole*
job list (the same on every worker), how to share it out, and hooks:

- ``context(job, jobs)``: anything a hook needs (the template, say), computed
  once per worker, lazily, after the job's start is pinned;
- ``rebind(region_job, worker_index)``: a job as this worker must run it.
  A list pinned by worker 0 carries worker 0's values to every worker: a
  local scratch path (reformatters' ``tmp_store``), a client, a pid. Return
  the job with this worker's own (``job.model_copy(update={"tmp_store":
  mine})``); applied to every job of the list when the worker's view is made;
- ``prepare(stores, loop)``: worker 0, structural changes into the forks;
  then, where the region jobs say where they write (``region``,
  ``append_dim``, ``data_vars``), jobs of two workers sharing a chunk or
  shard are refused before anyone starts (``_regions``);
- ``process(region_job, stores, loop)``: every worker, once per job of its
  share (default: ``region_job.process(stores.primary, stores.replicas)``);
- ``finalize(stores, loop, results)``: the last worker, every job's result
  in job order, before the commit (final metadata, guards).

The job list and the context are handed to every hook through one
:class:`Loop` value, so a restarted last worker that skips its own work (its
result is already pinned) still has them. ``Loop`` is generic in the job and
context types, so hooks typed for a pipeline's own classes need no casts.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol

import attrs
import zarr.abc.store

from icechunk_coop.errors import ConfigurationError
from icechunk_coop.jobs._regions import refuse_shared_blocks
from icechunk_coop.protocol._cooperative import CooperativeJob, WorkerOutcome
from icechunk_coop.protocol._finalize import Message
from icechunk_coop.targets._targets import Stores

if TYPE_CHECKING:
    # Defaults (PEP 696) keep a bare ``Loop`` meaning ``Loop[Any, Any]``; at run
    # time plain TypeVars do (generics are erased).
    from typing_extensions import TypeVar

    LoopJobT = TypeVar("LoopJobT", covariant=True, default=Any)
    LoopContextT = TypeVar("LoopContextT", covariant=True, default=Any)
else:
    from typing import TypeVar

    LoopJobT = TypeVar("LoopJobT", covariant=True)
    LoopContextT = TypeVar("LoopContextT", covariant=True)

__all__ = ["Assignment", "Loop", "RegionJobLike", "assign_jobs", "run_region_jobs"]

log = logging.getLogger("icechunk_coop.loop")

Store = zarr.abc.store.Store


class RegionJobLike(Protocol):
    """All the loop asks of a region job (a frozen pydantic model is fine)."""

    def process(self, primary_store: Store, replica_stores: Sequence[Store]) -> Any: ...


#: How a job list is shared out: a name, or ``(n_jobs, worker_index, workers_total)
#: -> positions``. ``"spread"`` is the old name of ``"bit-reversed-blocks"``.
Assignment = (
    Literal["contiguous", "interleaved", "bit-reversed-blocks", "spread"]
    | Callable[[int, int, int], Sequence[int]]
)
_NAMES = ("contiguous", "interleaved", "bit-reversed-blocks")
_RENAMED = {"spread": "bit-reversed-blocks"}


def _bit_reversed(n: int) -> list[int]:
    """0..n-1 in bit-reversed order: every prefix is spread over the whole range."""
    bits = max(1, (n - 1).bit_length())
    return [r for i in range(1 << bits) if (r := int(f"{i:0{bits}b}"[::-1], 2)) < n]


def _current_name(how: Assignment, *, stacklevel: int) -> Assignment:
    """``how`` under its current name; an old name still works, with a warning."""
    if isinstance(how, str) and how in _RENAMED:
        new = _RENAMED[how]
        warnings.warn(
            f"assign={how!r} is deprecated and will be removed in the next release: "
            f"it is assign={new!r} (each worker one contiguous block, the blocks handed "
            "out in bit-reversed order). For each worker's jobs scattered along the "
            "append dimension (reformatters' 'spread'), use assign='interleaved'",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        return new  # type: ignore[return-value]  # one of the names, by construction
    return how


def assign_jobs(n_jobs: int, worker_index: int, workers_total: int, how: Assignment) -> list[int]:
    """Which positions of the job list are this worker's, in the order it runs them.

    ``contiguous``: balanced slices in order (sizes differ by at most one).
    ``bit-reversed-blocks``: the same slices, handed out in bit-reversed order
    of the worker index, so that when fewer pods run than there are workers
    (parallelism < completions; the lowest indexes start first) the ones
    running cover the whole append dimension instead of its first stretch;
    each worker still holds one stretch.
    ``interleaved``: the list in bit-reversed order, dealt out round-robin:
    each worker's jobs are scattered over the whole append dimension, so
    workers running at once read source files far apart (no hot prefix).
    This is reformatters' ``worker_assignment = "spread"``.
    A callable gets ``(n_jobs, worker_index, workers_total)`` and returns positions.
    """
    if not 0 <= worker_index < workers_total:
        raise ConfigurationError(
            f"worker_index={worker_index} is out of range for workers_total={workers_total}"
        )
    how = _current_name(how, stacklevel=2)
    if callable(how):
        return list(how(n_jobs, worker_index, workers_total))
    if how not in _NAMES:
        names = ", ".join(repr(n) for n in _NAMES)
        raise ConfigurationError(f"assignment {how!r}: use one of {names}, or a callable")
    if how == "interleaved":
        return _bit_reversed(n_jobs)[worker_index::workers_total]
    part = _bit_reversed(workers_total)[worker_index] if how != "contiguous" else worker_index
    return list(range(part * n_jobs // workers_total, (part + 1) * n_jobs // workers_total))


@attrs.frozen(kw_only=True)
class Loop(Generic[LoopJobT, LoopContextT]):  # noqa: UP046 - defaults need Python 3.13 syntax
    """What every hook of one worker sees: the job, the whole job list, its share, the context.

    ``jobs`` are this worker's (after ``rebind``); ``Loop[MyJob, MyTemplate]``
    types ``jobs`` and ``context`` for hooks that want them typed.
    """

    job: CooperativeJob
    jobs: tuple[LoopJobT, ...]
    mine: tuple[int, ...]
    context: LoopContextT

    @property
    def my_jobs(self) -> list[LoopJobT]:
        return [self.jobs[i] for i in self.mine]

    def in_job_order(self, per_worker: Sequence[Sequence[Any]], how: Assignment) -> list[Any]:
        """Every worker's results (in index order) laid out in the order of the job list."""
        how = _current_name(how, stacklevel=2)
        total = self.job.identity.workers_total
        ordered: list[Any] = [None] * len(self.jobs)
        for index, results in enumerate(per_worker):
            for position, result in zip(
                assign_jobs(len(self.jobs), index, total, how), results, strict=True
            ):
                ordered[position] = result
        return ordered


def _default_process(region_job: Any, stores: Stores, loop: Loop) -> Any:
    return region_job.process(stores.primary, list(stores.replicas))


def run_region_jobs[JobT, ContextT, ResultT](
    job: CooperativeJob,
    jobs: Sequence[JobT] | Callable[[CooperativeJob], Sequence[JobT]],
    *,
    message: Message,
    assign: Assignment = "bit-reversed-blocks",
    context: Callable[[CooperativeJob, Sequence[JobT]], ContextT] | None = None,
    rebind: Callable[[JobT, int], JobT] | None = None,
    prepare: Callable[[Stores, Loop[JobT, ContextT]], None] | None = None,
    process: Callable[[JobT, Stores, Loop[JobT, ContextT]], ResultT] = _default_process,
    finalize: Callable[[Stores, Loop[JobT, ContextT], list[ResultT]], None] | None = None,
) -> WorkerOutcome:
    """Run this worker's share of ``jobs`` as one cooperative job; the last one commits.

    ``jobs`` is the whole list, or a callable building it from the job. A
    callable is called once, on worker 0, after the job's start is pinned and
    before ``prepare``, and the list it returns is pinned in the setup (as
    :attr:`CooperativeJob.decision`): every other worker, and any restart,
    takes that list. So the list may depend on the dataset as it is now (an
    update resuming from the last time step present) or on the clock, and
    still be the same everywhere. What a pinned job holds that is worker 0's
    alone (a local path) is for ``rebind`` to replace.

    Without ``context`` every hook's ``loop.context`` is None.
    """
    me = job.identity
    assign = _current_name(assign, stacklevel=2)
    cell: list[Loop[JobT, ContextT]] = []

    def loop(every: tuple[JobT, ...] | None = None) -> Loop[JobT, ContextT]:
        if not cell:
            if every is None:
                pinned = job.decision if callable(jobs) else None
                every = tuple(pinned if pinned is not None else jobs(job) if callable(jobs)
                              else jobs)  # fmt: skip
            if rebind is not None:
                every = tuple(rebind(j, me.worker_index) for j in every)
            mine = tuple(assign_jobs(len(every), me.worker_index, me.workers_total, assign))
            made = context(job, every) if context is not None else None
            cell.append(Loop(job=job, jobs=every, mine=mine, context=made))  # type: ignore[arg-type]
        return cell[0]

    def prepare_all(stores: Stores) -> tuple[JobT, ...] | None:
        decided = tuple(jobs(job)) if callable(jobs) else None
        state = loop(decided)
        if prepare is not None:
            prepare(stores, state)
        n, total = len(state.jobs), me.workers_total
        owner = {p: w for w in range(total) for p in assign_jobs(n, w, total, assign)}
        refuse_shared_blocks(
            job_id=job.job_id,
            jobs=state.jobs,
            worker_of=lambda p: owner.get(p, -1 - p),
            store=stores.primary,
        )
        return decided  # pinned as the callable returned it, before any rebind

    def work(stores: Stores) -> list[ResultT]:
        state = loop()
        mine = state.my_jobs
        total = len(state.jobs)
        log.info("worker %d/%d: %d of %d region job%s", me.worker_index, me.workers_total,
                 len(mine), total, "" if total == 1 else "s")  # fmt: skip
        started, results = time.monotonic(), []
        for n, region_job in enumerate(mine, 1):
            results.append(process(region_job, stores, state))
            elapsed = time.monotonic() - started
            log.info("worker %d/%d: %d/%d done, %.1fs elapsed, ~%.0fs left", me.worker_index,
                     me.workers_total, n, len(mine), elapsed,
                     elapsed / n * (len(mine) - n))  # fmt: skip
        return results

    def finalize_all(stores: Stores, per_worker: list[Any]) -> None:
        if finalize is not None:
            state = loop()
            finalize(stores, state, state.in_job_order(per_worker, assign))

    return job.run(
        work=work,
        message=message,
        prepare=prepare_all,
        finalize=finalize_all,
    )
