"""Cooperative equals serial, as a Hypothesis state machine (icechunk proves it for itself).

Two repositories start equal. Each rule adds to the pending job (a chunk
write, an append of rows) or runs it: once by one session doing the writes
in order, once by N cooperative workers (worker 0 prepares the resize, the
writes are shared out by chunk, the workers in the middle run in a random
order, the last one merges and commits). After every job both repositories
must hold the same array, and the cooperative one exactly one more snapshot.

Workers run in this process (``icechunk_coop.testing.run_in_process``):
fork/merge does not care which process a fork lived in; the multi-process
versions are in ``test_cooperative.py``. CI runs the ``ci`` profile; set
``HYPOTHESIS_PROFILE=long`` for a longer search.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import icechunk
import numpy as np
import zarr
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from icechunk_coop import CooperativeJob, Stores, WorkerOutcome
from icechunk_coop.testing import job_commits, run_in_process

if TYPE_CHECKING:
    from conftest import JobFactory

CHUNKS = (2, 3)
COLS = 6


def _open(path: Path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def _array(repo: icechunk.Repository) -> np.ndarray:
    return np.asarray(zarr.open_array(repo.readonly_session("main").store, path="a")[:])


class CooperativeEqualsSerial(RuleBasedStateMachine):
    def __init__(self, make_job: JobFactory) -> None:
        super().__init__()
        self.make_job = make_job
        self.dir = Path(tempfile.mkdtemp(prefix="coop-prop-"))
        for name in ("serial", "coop"):
            repo = icechunk.Repository.create(
                icechunk.local_filesystem_storage(str(self.dir / name))
            )
            session = repo.writable_session("main")
            root = zarr.open_group(session.store, mode="a")
            root.create_array("a", shape=(4, COLS), chunks=CHUNKS, dtype="i4", fill_value=-1)
            session.commit("base")
        self.rows = 4  # rows readers see
        self.grow = 0  # rows the pending job appends
        self.writes: list[tuple[tuple[int, int], int]] = []  # (block, value), in order
        self.jobs = 0
        self.commits = 0  # jobs that changed something: a job changing nothing commits nothing
        self.changed = False

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(rows=st.sampled_from([2, 4]))
    def append_rows(self, rows: int) -> None:
        self.grow += rows

    @rule(data=st.data(), value=st.integers(0, 999))
    def write_chunk(self, data: st.DataObject, value: int) -> None:
        blocks_i = (self.rows + self.grow) // CHUNKS[0]
        block = (
            data.draw(st.integers(0, blocks_i - 1), label="block row"),
            data.draw(st.integers(0, COLS // CHUNKS[1] - 1), label="block col"),
        )
        self.writes.append((block, value))

    def _write(self, store: zarr.abc.store.Store, block: tuple[int, int], value: int) -> None:
        (ci, cj), (i, j) = CHUNKS, block
        zarr.open_array(store, path="a", mode="r+")[
            i * ci : (i + 1) * ci, j * cj : (j + 1) * cj
        ] = value

    def _resize(self, store: zarr.abc.store.Store) -> None:
        if self.grow:
            zarr.open_array(store, path="a", mode="r+").resize((self.rows + self.grow, COLS))

    def _serial(self) -> None:
        repo = _open(self.dir / "serial")
        session = repo.writable_session("main")
        self._resize(session.store)
        for block, value in self.writes:
            self._write(session.store, block, value)
        # A job that changes nothing commits nothing, on both sides.
        self.changed = session.has_uncommitted_changes
        if self.changed:
            session.commit("serial")
            self.commits += 1

    def _cooperative(self, workers: int, owners: list[int], order: random.Random) -> None:
        owner = {
            block: owners[n % len(owners)] % workers for n, (block, _) in enumerate(self.writes)
        }
        storage = icechunk.local_filesystem_storage(str(self.dir / "coop"))
        make = partial(self.make_job, root=self.dir, primary=storage)

        def run(job: CooperativeJob) -> WorkerOutcome:
            me = job.identity.worker_index

            def work(stores: Stores) -> int:
                mine = [(b, v) for b, v in self.writes if owner[b] == me]
                for block, value in mine:
                    self._write(stores.primary, block, value)
                return len(mine)

            return job.run(work=work, prepare=lambda s: self._resize(s.primary), message="coop")

        middle = list(range(1, workers - 1))
        order.shuffle(middle)
        indexes = [0, *middle, workers - 1] if workers > 1 else [0]
        outcomes = run_in_process(
            make, workers, run, indexes=indexes, job_name="prop", job_uid=str(self.jobs)
        )
        assert outcomes[-1].status == "committed"
        assert sum(o.result for o in outcomes) == len(self.writes)
        expected = 1 if self.changed else 0
        assert len(job_commits(_open(self.dir / "coop"), f"prop-{self.jobs}")) == expected

    @precondition(lambda self: self.jobs < 6)
    @rule(
        workers=st.integers(1, 4),
        owners=st.lists(st.integers(0, 3), min_size=1, max_size=8),
        order=st.randoms(use_true_random=False),
    )
    def run_job(self, workers: int, owners: list[int], order: random.Random) -> None:
        self._serial()
        self._cooperative(workers, owners, order)
        self.jobs += 1
        self.rows += self.grow
        self.grow, self.writes = 0, []

    @invariant()
    def both_hold_the_same(self) -> None:
        serial, coop = _open(self.dir / "serial"), _open(self.dir / "coop")
        np.testing.assert_array_equal(_array(coop), _array(serial))
        # Repository creation, base, and exactly one snapshot per job that changed
        # something, on both sides.
        assert len(list(coop.ancestry(branch="main"))) == 2 + self.commits
        assert len(list(serial.ancestry(branch="main"))) == 2 + self.commits
        assert coop.list_branches() == {"main"}


def test_cooperative_equals_serial(make_job: JobFactory) -> None:
    # The settings a RuleBasedStateMachine's TestCase runs with, over the loaded profile.
    # make_job holds no state: every run of the machine passes its own root.
    run_state_machine_as_test(
        lambda: CooperativeEqualsSerial(make_job),
        settings=settings(deadline=None, suppress_health_check=list(HealthCheck)),
    )
