"""No silent loss between the workers of one job: overlapping writes are refused.

In-process workers (``run_in_process``) on local storage; the same cases with
real worker processes on moto are in ``test_overlap_e2e.py``. The property at
the end is the rule itself: whatever the partition of an array into region
jobs and of the jobs among workers, a job either commits exactly what one
worker running every job would have written, or stops with an overlap error
naming the array, and only where two workers really shared a chunk.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import icechunk
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    Stores,
    WorkerIdentity,
    ZarrTarget,
    run_region_jobs,
)
from icechunk_coop.errors import ChunkOverlapError, OverlapError, RegionOverlapError
from icechunk_coop.targets._overlap import RecordingStore, split_key
from icechunk_coop.testing import run_in_process
from icechunk_coop.wire._records import Result

if TYPE_CHECKING:
    from conftest import JobFactory

LENGTH, CHUNK = 20, 10


@attrs.frozen
class Place:
    """Where a job writes: an Icechunk repository or a plain zarr store, and its rendezvous."""

    root: Path
    jobs: JobFactory  # the make_job fixture
    plain: bool = False

    @property
    def url(self) -> str:
        return str(self.root / ("plain" if self.plain else "repo"))

    def target(self) -> IcechunkTarget | ZarrTarget:
        if self.plain:
            return ZarrTarget(name="primary", url=self.url)
        return IcechunkTarget(name="primary", storage=icechunk.local_filesystem_storage(self.url))

    def create(self, values: np.ndarray | None = None) -> None:
        if self.plain:
            store: Any = self.url
        else:
            repo = icechunk.Repository.create(icechunk.local_filesystem_storage(self.url))
            session = repo.writable_session("main")
            store = session.store
        x = zarr.open_group(store, mode="a").create_array(
            "x", shape=(LENGTH,), chunks=(CHUNK,), dtype="i4", fill_value=-1
        )
        if values is not None:
            x[:] = values
        if not self.plain:
            session.commit("base")

    def read(self) -> np.ndarray:
        if self.plain:
            return np.asarray(zarr.open_array(self.url, path="x", mode="r")[:])
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(self.url))
        return np.asarray(zarr.open_array(repo.readonly_session("main").store, path="x")[:])

    def snapshots(self) -> int:
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(self.url))
        return len(list(repo.ancestry(branch="main")))

    def make(self) -> Callable[[WorkerIdentity], CooperativeJob]:
        return lambda identity: self.jobs(identity, root=self.root, primary=self.target())


@pytest.fixture(params=["icechunk", "zarr"])
def place(request: pytest.FixtureRequest, tmp_path: Path, make_job: JobFactory) -> Place:
    where = Place(root=tmp_path, jobs=make_job, plain=request.param == "zarr")
    where.create()
    return where


def _write_each(
    place: Place, writes: Sequence[Callable[[Stores], None]], uid: str = "u"
) -> list[Any]:
    def run(job: CooperativeJob) -> Any:
        mine = writes[job.identity.worker_index]
        return job.run(work=mine, message="overlap")

    return run_in_process(place.make(), len(writes), run, job_name="ov", job_uid=uid)


def _region(lo: int, hi: int, value: int) -> Callable[[Stores], None]:
    def write(stores: Stores) -> None:
        zarr.open_array(stores.primary, path="x", mode="r+")[lo:hi] = value

    return write


def test_two_halves_of_one_chunk_are_refused_naming_array_chunk_and_workers(place: Place) -> None:
    with pytest.raises(ChunkOverlapError) as caught:
        _write_each(place, [_region(10, 15, 1), _region(15, 20, 2)])
    error = caught.value
    assert (error.array, error.first, error.count, error.workers) == ("/x", "(1,)", 1, [0, 1])
    assert error.compared and error.plain is place.plain
    assert "Align region jobs to chunk (or shard) boundaries" in str(error)
    assert not error.retryable
    if not place.plain:
        assert place.snapshots() == 2  # creation and base: nothing of the job
        np.testing.assert_array_equal(place.read(), [-1] * LENGTH)


def test_one_chunk_with_different_values_is_refused(place: Place) -> None:
    with pytest.raises(ChunkOverlapError, match=r"workers 0 and 1 both wrote array '/x'"):
        _write_each(place, [_region(0, 10, 1), _region(0, 10, 2)])


def test_one_chunk_with_the_same_bytes_from_every_worker_commits(place: Place) -> None:
    outcomes = _write_each(place, [_region(0, 10, 7), _region(0, 10, 7), _region(10, 20, 8)])
    assert outcomes[-1].status == "committed"
    np.testing.assert_array_equal(place.read(), [7] * 10 + [8] * 10)


def _set_attr(value: int) -> Callable[[Stores], None]:
    def write(stores: Stores) -> None:
        zarr.open_array(stores.primary, path="x", mode="r+").attrs["by"] = value

    return write


def test_two_workers_changing_one_arrays_metadata_differently_are_refused(place: Place) -> None:
    with pytest.raises(ChunkOverlapError) as caught:
        _write_each(place, [_set_attr(1), _set_attr(2)])
    assert caught.value.first == "metadata" and caught.value.array == "/x"
    assert "its metadata" in str(caught.value)


def test_one_workers_metadata_change_reaches_the_target(place: Place) -> None:
    # A plain zarr target used to drop a worker's metadata silently (it stayed staged there).
    outcomes = _write_each(place, [_set_attr(5), _region(0, 10, 1)])
    assert outcomes[-1].status == "committed"
    if place.plain:
        attrs_now = zarr.open_array(place.url, path="x", mode="r").attrs.asdict()
    else:
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(place.url))
        store = repo.readonly_session("main").store
        attrs_now = zarr.open_array(store, path="x", mode="r").attrs.asdict()
    assert attrs_now == {"by": 5}


def test_a_node_created_in_two_workers_is_refused_before_icechunk_merges(
    tmp_path: Path, make_job: JobFactory
) -> None:
    place = Place(root=tmp_path, jobs=make_job)
    place.create()

    def create(stores: Stores) -> None:
        zarr.open_group(stores.primary, mode="a").create_array("y", shape=(2,), dtype="i4")

    with pytest.raises(ChunkOverlapError) as caught:
        _write_each(place, [create, create])
    assert caught.value.array == "/y" and not caught.value.compared
    assert "cannot be shown to be the same" in str(caught.value)


def test_the_recording_store_notes_sets_and_deletes_also_through_a_read_only_copy(
    tmp_path: Path,
) -> None:
    store = RecordingStore(zarr.storage.LocalStore(str(tmp_path)))
    x = zarr.create_array(store, name="x", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    x[0:2] = 5
    x[0:2] = 0  # all fill value: zarr deletes the chunk
    zarr.open_array(store.with_read_only(False), path="x", mode="r+")[2:4] = 1
    assert store.written["x/c/0"] == "deleted"
    assert {"x/zarr.json", "x/c/1"} <= set(store.written)
    assert split_key("x/c/1") == ("/x", "(1,)")
    assert split_key("g/x/c/1/2") == ("/g/x", "(1, 2)")
    assert split_key("zarr.json") == ("/", "metadata")


def test_a_result_of_the_release_before_decodes_with_no_writes() -> None:
    wire = Result(token="t", index=0, workers_total=1, forks={}).to_wire()
    del wire["writes"]
    assert Result.from_wire(wire, "result-0").writes == {}


# ---- fail fast: worker 0 refuses region jobs of two workers sharing a block --------------


@attrs.frozen
class Var:
    name: str


@attrs.frozen
class RegionJob:
    """A region job of reformatters' shape: a region along the append dimension, its variables."""

    region: slice
    data_vars: tuple[Var, ...] = (Var("x"),)
    append_dim: str = "time"

    def process(self, primary_store: Any, replica_stores: Sequence[Any]) -> int:
        zarr.open_array(primary_store, path="x", mode="r+")[self.region] = self.region.start
        return self.region.stop - self.region.start


def _loop(place: Place, jobs: list[RegionJob], total: int, uid: str) -> list[Any]:
    processed: list[int] = []

    def prepare(stores: Stores, loop: Any) -> None:
        root = zarr.open_group(stores.primary, mode="a")
        del root["x"]
        root.create_array(
            "x",
            shape=(LENGTH,),
            chunks=(CHUNK // 2,),
            shards=(CHUNK,),
            dtype="i4",
            fill_value=-1,
            dimension_names=["time"],
        )

    def process(job: RegionJob, stores: Stores, loop: Any) -> int:
        processed.append(job.region.start)
        return job.process(stores.primary, stores.replicas)

    def run(job: CooperativeJob) -> Any:
        return run_region_jobs(
            job, jobs, message="loop", assign="contiguous", prepare=prepare, process=process
        )

    outcomes = run_in_process(place.make(), total, run, job_name="loop", job_uid=uid)
    return [processed, outcomes]


def test_region_jobs_of_two_workers_sharing_a_shard_are_refused_before_any_work(
    tmp_path: Path, make_job: JobFactory
) -> None:
    place = Place(root=tmp_path, jobs=make_job)
    place.create()
    jobs = [RegionJob(region=slice(0, 15)), RegionJob(region=slice(15, 20))]
    processed: list[int] = []
    with pytest.raises(RegionOverlapError) as caught:
        processed = _loop(place, jobs, 2, "a")[0]
    assert processed == []
    error = caught.value
    assert error.jobs == ["#0 (time 0:15)", "#1 (time 15:20)"]
    assert (error.array, error.block, error.size, error.workers) == ("x", 1, 10, [0, 1])
    assert "before any work began" in str(error)
    assert place.snapshots() == 2


def test_region_jobs_sharing_a_shard_on_one_worker_and_aligned_ones_commit(
    tmp_path: Path, make_job: JobFactory
) -> None:
    place = Place(root=tmp_path, jobs=make_job)
    place.create()
    jobs = [RegionJob(region=slice(0, 10)), RegionJob(region=slice(10, 15))]
    jobs += [RegionJob(region=slice(15, 20))]
    processed, outcomes = _loop(place, jobs, 2, "b")  # worker 0: job 0; worker 1: jobs 1, 2
    assert sorted(processed) == [0, 10, 15]
    assert outcomes[-1].status == "committed"
    np.testing.assert_array_equal(place.read(), [0] * 10 + [10] * 5 + [15] * 5)


def test_region_jobs_that_do_not_say_what_they_write_are_left_to_the_last_worker(
    tmp_path: Path, make_job: JobFactory
) -> None:
    place = Place(root=tmp_path, jobs=make_job)
    place.create()
    jobs = [RegionJob(region=slice(0, 15)), RegionJob(region=slice(15, 20))]
    unnamed = [attrs.evolve(j, data_vars=None) for j in jobs]  # type: ignore[arg-type]
    with pytest.raises(ChunkOverlapError):
        _loop(place, unnamed, 2, "c")


# ---- the rule, as a property --------------------------------------------------------------


@st.composite
def partitions(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[int], int]:
    """Region jobs covering part of the array (aligned or not), and the worker of each."""
    workers = draw(st.integers(2, 6))
    cuts = sorted(draw(st.sets(st.integers(1, LENGTH - 1), max_size=6)))
    bounds = [0, *cuts, LENGTH]
    regions = list(itertools.pairwise(bounds))
    regions = [r for r in regions if draw(st.booleans()) or r == regions[0]]
    owners = [draw(st.integers(0, workers - 1)) for _ in regions]
    return regions, owners, workers


# make_job is function-scoped but holds no state: every example passes its own root.
@settings(
    suppress_health_check=[
        *settings.default.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ]
)
@given(case=partitions(), plain=st.booleans(), rewrite=st.booleans())
def test_a_job_commits_what_one_worker_would_or_refuses_a_real_overlap(
    make_job: JobFactory,
    case: tuple[list[tuple[int, int]], list[int], int],
    plain: bool,
    rewrite: bool,
) -> None:
    regions, owners, workers = case
    root = Path(tempfile.mkdtemp(prefix="coop-overlap-"))
    try:
        place = Place(root=root, jobs=make_job, plain=plain)
        # rewrite: the base already holds the values the jobs write, so every
        # worker's copy of a shared chunk is byte for byte the same.
        values = np.arange(LENGTH, dtype="i4") * 3
        place.create(values if rewrite else None)
        expected = values.copy() if rewrite else np.full(LENGTH, -1, dtype="i4")
        for lo, hi in regions:
            expected[lo:hi] = values[lo:hi]

        def mine(index: int) -> Callable[[Stores], None]:
            def write(stores: Stores) -> None:
                x = zarr.open_array(stores.primary, path="x", mode="r+")
                for (lo, hi), owner in zip(regions, owners, strict=True):
                    if owner == index:
                        x[lo:hi] = values[lo:hi]

            return write

        chunk_writers: dict[int, set[int]] = {}
        for (lo, hi), owner in zip(regions, owners, strict=True):
            for chunk in range(lo // CHUNK, -(-hi // CHUNK)):
                chunk_writers.setdefault(chunk, set()).add(owner)
        shared = any(len(w) > 1 for w in chunk_writers.values())
        refused: OverlapError | None = None
        try:
            outcomes = _write_each(place, [mine(i) for i in range(workers)])
        except OverlapError as error:
            refused = error
        if refused is not None:
            assert shared and not rewrite, f"refused with no real overlap: {refused}"
            assert isinstance(refused, ChunkOverlapError) and refused.array == "/x"
            if not plain:
                assert place.snapshots() == 2
            return
        assert outcomes[-1].status == "committed"
        assert not shared or rewrite, "two workers shared a chunk and the job committed"
        np.testing.assert_array_equal(place.read(), expected)
    finally:
        shutil.rmtree(root, ignore_errors=True)
