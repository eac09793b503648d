"""The region-job loop as a function: shares, hooks, results in job order (in-process)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import icechunk
import pytest
import zarr

from icechunk_coop import (
    ConfigurationError,
    CooperativeJob,
    Loop,
    Stores,
    WorkerOutcome,
    assign_jobs,
    run_region_jobs,
)
from icechunk_coop.testing import Killed, at_crash_point, job_commits, run_in_process

if TYPE_CHECKING:
    from conftest import JobFactory


@pytest.mark.parametrize("how", ["contiguous", "bit-reversed-blocks", "interleaved"])
@pytest.mark.parametrize(("n_jobs", "total"), [(10, 3), (8, 8), (3, 5), (64, 6), (0, 2)])
def test_every_job_goes_to_exactly_one_worker(how: str, n_jobs: int, total: int) -> None:
    shares = [assign_jobs(n_jobs, i, total, how) for i in range(total)]  # type: ignore[arg-type]
    flat = sorted(p for share in shares for p in share)
    assert flat == list(range(n_jobs))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_bit_reversed_blocks_cover_the_whole_range_with_the_first_workers() -> None:
    # 16 jobs, 4 workers, only 2 pods running: they hold the first and the third quarter.
    first_two = [assign_jobs(16, i, 4, "bit-reversed-blocks") for i in (0, 1)]
    assert first_two == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert [assign_jobs(16, i, 4, "contiguous") for i in (0, 1)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_interleaved_scatters_each_workers_jobs_along_the_list() -> None:
    # The list in bit-reversed order (0 8 4 2 6 1 9 5 3 7), dealt round-robin: each
    # worker's jobs lie far apart, and the workers running at once read far apart too.
    shares = [assign_jobs(10, i, 3, "interleaved") for i in range(3)]
    assert shares == [[0, 2, 9, 7], [8, 6, 5], [4, 1, 3]]


def test_the_old_name_spread_still_works_and_names_its_successors() -> None:
    with pytest.warns(DeprecationWarning, match=r"'bit-reversed-blocks'.*'interleaved'"):
        old = assign_jobs(16, 1, 4, "spread")
    assert old == assign_jobs(16, 1, 4, "bit-reversed-blocks")


def test_a_bad_index_or_assignment_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="out of range"):
        assign_jobs(4, 3, 3, "spread")
    with pytest.raises(ConfigurationError, match=r"'round-robin'.*'interleaved'"):
        assign_jobs(4, 0, 3, "round-robin")  # type: ignore[arg-type]


@dataclass(frozen=True)
class Region:
    """Only ``process``: the Protocol asks nothing more."""

    row: int

    def process(self, primary_store: Any, replica_stores: Sequence[Any]) -> dict[str, int]:
        zarr.open_array(primary_store, path="a", mode="r+")[self.row] = 100 + self.row
        return {"row": self.row}


@pytest.mark.parametrize("restart_last", [False, True])
def test_hooks_see_the_whole_list_and_finalize_gets_results_in_job_order(
    tmp_path: Path, make_job: JobFactory, restart_last: bool
) -> None:
    storage = icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    regions = [Region(row=r) for r in range(10)]
    contexts: list[Any] = []
    final: list[Any] = []

    def prepare(stores: Stores, loop: Loop) -> None:
        assert len(loop.jobs) == 10
        zarr.open_group(stores.primary, mode="a").create_array(
            "a", shape=(len(loop.jobs),), chunks=(1,), dtype="i4", fill_value=0
        )

    def finalize(stores: Stores, loop: Loop, results: list[Any]) -> None:
        final.extend(results)
        zarr.open_group(stores.primary, mode="a").attrs["template"] = loop.context

    def run(job: CooperativeJob) -> WorkerOutcome:
        return run_region_jobs(
            job,
            regions,
            message="loop",
            context=lambda job, jobs: contexts.append(len(jobs)) or f"template of {len(jobs)}",
            prepare=prepare,
            finalize=finalize,
        )

    if restart_last:
        # The last worker dies once the plan is pinned; restarted, it skips its own
        # work (its result is in the plan) and still has the job list and context.
        with at_crash_point("after-pin-plan"), pytest.raises(Killed):
            run_in_process(make_job, 4, run, job_name="loop", job_uid="u")
        contexts.clear()
        outcomes = run_in_process(make_job, 4, run, indexes=[3], job_name="loop", job_uid="u")
        assert contexts == [10]
    else:
        outcomes = run_in_process(make_job, 4, run, job_name="loop", job_uid="u")
        assert contexts == [10, 10, 10, 10]  # once per worker
    assert outcomes[-1].status == "committed"
    assert final == [{"row": r} for r in range(10)]  # job order, not worker order
    repo = icechunk.Repository.open(storage)
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert list(root["a"][:]) == [100 + r for r in range(10)]
    assert root.attrs["template"] == "template of 10"
    assert len(job_commits(repo, "loop-u")) == 1


@pytest.mark.parametrize("restart_first", [False, True])
def test_a_job_list_built_by_a_callable_is_worker_0s_for_every_worker(
    tmp_path: Path, make_job: JobFactory, restart_first: bool
) -> None:
    """A list that depends on when and where it is read is computed once and pinned.

    Here every call of the callable sees a different "dataset" (a counter): worker
    0's first reading decides for all, and nobody else (not even a restarted worker
    0, which reuses the setup) reads it again.
    """
    storage = icechunk.local_filesystem_storage(str(tmp_path / "repo"))
    readings: list[int] = []

    def jobs(job: CooperativeJob) -> list[Region]:
        readings.append(job.identity.worker_index)
        start = 3 * len(readings)  # a different answer every time it is asked
        return [Region(row=r) for r in range(start, start + 5)]

    def prepare(stores: Stores, loop: Loop) -> None:
        zarr.open_group(stores.primary, mode="a").create_array(
            "a", shape=(20,), chunks=(1,), dtype="i4", fill_value=0
        )

    final: list[Any] = []

    def run(job: CooperativeJob) -> WorkerOutcome:
        return run_region_jobs(
            job, jobs, message="pinned", prepare=prepare,
            finalize=lambda stores, loop, results: final.extend(results),
        )  # fmt: skip

    if restart_first:
        with at_crash_point("after-publish-setup"), pytest.raises(Killed):
            run_in_process(make_job, 3, run, indexes=[0], job_name="pin", job_uid="u")
    outcomes = run_in_process(make_job, 3, run, job_name="pin", job_uid="u")
    assert readings == [0]
    assert [o.status for o in outcomes] == ["published", "published", "committed"]
    assert outcomes[0].worker_index == 0
    assert final == [{"row": r} for r in range(3, 8)]
    repo = icechunk.Repository.open(storage)
    a = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    assert list(a[:]) == [100 + r if 3 <= r < 8 else 0 for r in range(20)]


@dataclass(frozen=True)
class Scratch:
    """A job that carries a worker-local path, as reformatters' ``tmp_store``."""

    row: int
    scratch: str

    def process(self, primary_store: Any, replica_stores: Sequence[Any]) -> dict[str, Any]:
        zarr.open_array(primary_store, path="a", mode="r+")[self.row] = 100 + self.row
        return {"row": self.row, "scratch": self.scratch}


def test_a_pinned_list_is_rebound_to_each_workers_own_values(make_job: JobFactory) -> None:
    final: list[Any] = []

    def prepare(stores: Stores, loop: Loop[Scratch, None]) -> None:
        zarr.open_group(stores.primary, mode="a").create_array(
            "a", shape=(6,), chunks=(1,), dtype="i4", fill_value=0
        )

    def run(job: CooperativeJob) -> WorkerOutcome:
        me = job.identity.worker_index
        return run_region_jobs(
            job,
            lambda job: [Scratch(row=r, scratch=f"/tmp/worker-{me}") for r in range(6)],
            message="rebind",
            assign="interleaved",
            rebind=lambda j, worker: Scratch(row=j.row, scratch=f"/tmp/worker-{worker}"),
            prepare=prepare,
            finalize=lambda stores, loop, results: final.extend(results),
        )

    run_in_process(make_job, 3, run, job_name="rebind", job_uid="u")
    owner = {p: w for w in range(3) for p in assign_jobs(6, w, 3, "interleaved")}
    assert final == [{"row": r, "scratch": f"/tmp/worker-{owner[r]}"} for r in range(6)]
