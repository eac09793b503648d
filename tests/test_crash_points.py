"""Every crash point x every role: kill, restart the same index, and the job still commits once.

In this process, for speed (56 cases); ``test_cooperative.py`` and
``test_faults.py`` do the same with real processes for a subset. A kill is
``Killed`` raised at the named point (no failure marker, like an OOM kill);
the restart is the same index run again, as Kubernetes would.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import icechunk
import numpy as np
import pytest
import zarr

from icechunk_coop import CooperativeJob, Stores, WorkerOutcome
from icechunk_coop.testing import (
    CRASH_POINTS,
    Killed,
    at_crash_point,
    crash_point,
    job_commits,
)
from icechunk_coop.wire._records import COMMITTED

if TYPE_CHECKING:
    from conftest import JobFactory

ROWS = 2  # per worker
ROLES = {"first": (0, 3), "middle": (1, 3), "last": (2, 3), "only": (0, 1)}


def run(job: CooperativeJob) -> WorkerOutcome:
    total, index = job.identity.workers_total, job.identity.worker_index

    def prepare(stores: Stores) -> None:
        for store in stores.all:
            zarr.open_group(store, mode="a").create_array(
                "a", shape=(ROWS * total,), chunks=(1,), dtype="i4", fill_value=-1
            )

    def work(stores: Stores) -> int:
        for n in range(ROWS):
            if n == 1:
                crash_point("mid-work")
            for store in stores.all:
                zarr.open_array(store, path="a", mode="r+")[index * ROWS + n] = index * ROWS + n
        return index

    def finalize(stores: Stores, results: list[object]) -> None:
        for store in stores.all:
            zarr.open_group(store, mode="a").attrs["results"] = results

    return job.run(work=work, prepare=prepare, finalize=finalize, message="crash points")


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_every_point_then_restart_commits_once(
    tmp_path: Path, make_job: JobFactory, point: str, role: str
) -> None:
    victim, total = ROLES[role]
    make = partial(make_job, total=total, name="cp", replicas=["replica"])
    outcomes: dict[int, WorkerOutcome] = {}
    killed = False
    for index in range(total):
        if index != victim:
            outcomes[index] = run(make(index))
            continue
        with at_crash_point(point) as reached:
            try:
                outcomes[index] = run(make(index))
            except Killed:
                killed = True
        assert killed == (point in reached)
        if killed:
            outcomes[index] = run(make(index))  # the pod, restarted
    statuses = {o.status for o in outcomes.values()}
    assert "committed" in statuses or "already-committed" in statuses, outcomes
    for name in ("repo", "replica"):
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / name)))
        assert len(job_commits(repo, "cp-u")) == 1, (name, point, role)
        root = zarr.open_group(repo.readonly_session("main").store, mode="r")
        np.testing.assert_array_equal(root["a"][:], np.arange(ROWS * total))
        assert root.attrs["results"] == list(range(total))
        assert repo.list_branches() == {"main"}  # no temporary branch left
    # What is left in the rendezvous is only the marker that tells late pods.
    assert make(0).meeting.arrived() <= {COMMITTED}
