"""The region-job loop as a function: no base class to inherit, only hooks.

A pipeline already has its region jobs, its template and its own commands.
:func:`run_region_jobs` takes a ready :class:`CooperativeJob`, the *whole*
job list (the same on every worker), how to share it out, and hooks:

- ``context(job, jobs)``: anything a hook needs (the template, say), computed
  once per worker, lazily, after the job's start is pinned;
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
result is already pinned) still has them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import attrs
import zarr.abc.store

from icechunk_coop._errors import ConfigurationError
from icechunk_coop._finalize import Message
from icechunk_coop._regions import refuse_shared_blocks
from icechunk_coop._targets import Stores
from icechunk_coop.cooperative import CooperativeJob, WorkerOutcome

__all__ = ["Assignment", "Loop", "RegionJobLike", "assign_jobs", "run_region_jobs"]

log = logging.getLogger("icechunk_coop.loop")

Store = zarr.abc.store.Store


class RegionJobLike(Protocol):
    """All the loop asks of a region job (a frozen pydantic model is fine)."""

    def process(self, primary_store: Store, replica_stores: Sequence[Store]) -> Any: ...


Assignment = Literal["contiguous", "spread"] | Callable[[int, int, int], Sequence[int]]


def _bit_reversed(n: int) -> list[int]:
    """0..n-1 in bit-reversed order: every prefix is spread over the whole range."""
    bits = max(1, (n - 1).bit_length())
    return [r for i in range(1 << bits) if (r := int(f"{i:0{bits}b}"[::-1], 2)) < n]


def assign_jobs(n_jobs: int, worker_index: int, workers_total: int, how: Assignment) -> list[int]:
    """Which positions of the job list are this worker's.

    ``contiguous``: balanced slices in order (sizes differ by at most one).
    ``spread``: the same slices, handed out in bit-reversed order of the worker
    index, so that when fewer pods run than there are workers (parallelism <
    completions; the lowest indexes start first) the ones running cover the
    whole append dimension instead of its first stretch. A callable gets
    ``(n_jobs, worker_index, workers_total)`` and returns positions.
    """
    if not 0 <= worker_index < workers_total:
        raise ConfigurationError(
            f"worker_index={worker_index} is out of range for workers_total={workers_total}"
        )
    if callable(how):
        return list(how(n_jobs, worker_index, workers_total))
    if how not in ("contiguous", "spread"):
        raise ConfigurationError(f"assignment {how!r}: use 'contiguous', 'spread' or a callable")
    part = _bit_reversed(workers_total)[worker_index] if how == "spread" else worker_index
    return list(range(part * n_jobs // workers_total, (part + 1) * n_jobs // workers_total))


@attrs.define(kw_only=True)
class Loop:
    """What every hook of one worker sees: the job, the whole job list, its share, the context."""

    job: CooperativeJob
    jobs: tuple[Any, ...]
    mine: tuple[int, ...]
    context: Any = None

    @property
    def my_jobs(self) -> list[Any]:
        return [self.jobs[i] for i in self.mine]

    def in_job_order(self, per_worker: Sequence[Sequence[Any]], how: Assignment) -> list[Any]:
        """Every worker's results (in index order) laid out in the order of the job list."""
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


def run_region_jobs(
    job: CooperativeJob,
    jobs: Sequence[Any] | Callable[[CooperativeJob], Sequence[Any]],
    *,
    message: Message,
    assign: Assignment = "spread",
    context: Callable[[CooperativeJob, Sequence[Any]], Any] | None = None,
    prepare: Callable[[Stores, Loop], None] | None = None,
    process: Callable[[Any, Stores, Loop], Any] = _default_process,
    finalize: Callable[[Stores, Loop, list[Any]], None] | None = None,
) -> WorkerOutcome:
    """Run this worker's share of ``jobs`` as one cooperative job; the last one commits.

    ``jobs`` is the whole list, or a callable building it from the job. A
    callable is called once, on worker 0, after the job's start is pinned and
    before ``prepare``, and the list it returns is pinned in the setup (as
    :attr:`CooperativeJob.decision`): every other worker, and any restart,
    takes that list. So the list may depend on the dataset as it is now (an
    update resuming from the last time step present) or on the clock, and
    still be the same everywhere.
    """
    me = job.identity
    cell: list[Loop] = []

    def loop(every: tuple[Any, ...] | None = None) -> Loop:
        if not cell:
            if every is None:
                pinned = job.decision if callable(jobs) else None
                every = tuple(pinned if pinned is not None else jobs(job) if callable(jobs)
                              else jobs)  # fmt: skip
            mine = tuple(assign_jobs(len(every), me.worker_index, me.workers_total, assign))
            made = context(job, every) if context is not None else None
            cell.append(Loop(job=job, jobs=every, mine=mine, context=made))
        return cell[0]

    def prepare_all(stores: Stores) -> tuple[Any, ...] | None:
        state = loop(tuple(jobs(job)) if callable(jobs) else None)
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
        return state.jobs if callable(jobs) else None

    def work(stores: Stores) -> list[Any]:
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
