"""Cooperative equals serial: the property icechunk's own fork/merge tests hold, for us.

For many random jobs (array shape and chunking, number of workers, which
chunks get written and by whom, with or without growing the array first),
N in-process workers going through the whole protocol must leave exactly what
one session doing the same writes leaves. Workers run one after another in
this process: fork/merge does not care which process a fork lived in, and the
multi-process versions are in ``test_cooperative.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr

from icechunk_coop import CooperativeJob, IcechunkTarget, Stores, WorkerIdentity
from icechunk_coop.dynamical import Store

SECRET = "property-secret-0123456789abcdef"


@dataclass(frozen=True)
class Spec:
    """One random job: the array, how much it grows, which worker writes which chunk."""

    shape: tuple[int, int]
    chunks: tuple[int, int]
    grow: int
    workers: int
    owner: dict[tuple[int, int], int]
    values: dict[tuple[int, int], int]


def random_job(rng: random.Random) -> Spec:
    chunks = (rng.randint(1, 3), rng.randint(1, 4))
    shape = (chunks[0] * rng.randint(1, 4), chunks[1] * rng.randint(1, 3))
    grow = rng.randint(0, 2) * chunks[0]  # rows the job appends (prepare resizes)
    rows = shape[0] + grow
    blocks = [(i, j) for i in range(rows // chunks[0]) for j in range(shape[1] // chunks[1])]
    written = rng.sample(blocks, rng.randint(1, len(blocks)))
    workers = rng.randint(1, 5)
    return Spec(
        shape=shape,
        chunks=chunks,
        grow=grow,
        workers=workers,
        owner={block: rng.randrange(workers) for block in written},  # disjoint by construction
        values={block: rng.randint(1, 1000) for block in written},
    )


def create(repo: icechunk.Repository, spec: Spec) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    array = root.create_array("a", shape=spec.shape, chunks=spec.chunks, dtype="i4", fill_value=-1)
    array[:] = 0
    session.commit("base")


def write_block(store: Store, spec: Spec, block: tuple[int, int]) -> None:
    (ci, cj), (i, j) = spec.chunks, block
    array = zarr.open_array(store, path="a", mode="r+")
    array[i * ci : (i + 1) * ci, j * cj : (j + 1) * cj] = spec.values[block]


def grow(store: Store, spec: Spec) -> None:
    array = zarr.open_array(store, path="a", mode="r+")
    array.resize((spec.shape[0] + spec.grow, spec.shape[1]))


def serial(tmp_path: Path, spec: Spec) -> np.ndarray:
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "serial")))
    create(repo, spec)
    session = repo.writable_session("main")
    grow(session.store, spec)
    for block in spec.owner:
        write_block(session.store, spec, block)
    session.commit("serial", allow_empty=True)
    return np.asarray(zarr.open_array(repo.readonly_session("main").store, path="a")[:])


def cooperative(tmp_path: Path, spec: Spec) -> tuple[np.ndarray, int]:
    storage = icechunk.local_filesystem_storage(str(tmp_path / "coop"))
    repo = icechunk.Repository.create(storage)
    create(repo, spec)
    total = spec.workers
    for index in range(total):  # 0 prepares first; the last one merges and commits
        job = CooperativeJob.for_identity(
            WorkerIdentity(worker_index=index, workers_total=total, job_name="prop", job_uid="u"),
            rendezvous_url=str(tmp_path / "rv"),
            primary=IcechunkTarget(name="primary", storage=storage),
            environ={"ICECHUNK_COOP_SECRET": SECRET},
        )

        def work(stores: Stores, index: int = index) -> int:
            mine = [block for block, owner in spec.owner.items() if owner == index]
            for block in mine:
                write_block(stores.primary, spec, block)
            return len(mine)

        job.run(work=work, prepare=lambda stores: grow(stores.primary, spec), message="coop")
    repo = icechunk.Repository.open(storage)
    history = list(repo.ancestry(branch="main"))
    return np.asarray(zarr.open_array(repo.readonly_session("main").store, path="a")[:]), len(
        history
    )


@pytest.mark.parametrize("seed", range(20))
def test_cooperative_equals_serial(tmp_path: Path, seed: int) -> None:
    spec = random_job(random.Random(seed))
    expected = serial(tmp_path, spec)
    got, snapshots = cooperative(tmp_path, spec)
    np.testing.assert_array_equal(got, expected, err_msg=str(spec))
    assert snapshots == 3  # repository created, base, and exactly one for the job
