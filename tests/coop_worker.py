"""A worker process for the cooperative-write tests, started like a pod.

Identity and secret come from the environment (``JOB_COMPLETION_INDEX``,
``WORKERS_TOTAL``, ``JOB_NAME``, ``JOB_UID``, ``ICECHUNK_COOP_SECRET``).
The dataset: ``temp`` (rows x 8, one row per chunk) along ``time``; each job
appends ``ROWS_PER_JOB`` rows, split evenly across the workers. Values depend
only on the row, so one worker and N workers must produce identical arrays.

Fault injection (for restart tests), by environment:
``COOP_TEST_DIE_IN_WORK=1``: hard exit after writing half the rows;
``COOP_TEST_RAISE_IN_WORK=1``: raise (a clean failure, marker published);
``ICECHUNK_COOP_CRASH_AT=<point>``: the package's own crash points (e.g.
``between-commits``: hard exit after the first target moved; ``mid-work``:
half way through this worker's rows);
``COOP_TEST_SLEEP_IN_WORK=S``: sleep S seconds in work (a slow worker);
``COOP_TEST_NO_WRITE=1``: the job appends nothing and writes nothing;
``COOP_TEST_REWRITE_ROW=R``: the last worker also rewrites existing row R.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np
import zarr

from icechunk_coop import (
    CooperativeJob,
    IcechunkTarget,
    Stores,
    WaitPolicy,
    ZarrTarget,
    icechunk_storage,
)
from icechunk_coop.testing import crash_point

COLS = 8
ROWS_PER_JOB = 16


def values(rows: range) -> np.ndarray:
    r = np.arange(rows.start, rows.stop, dtype="f8")[:, None]
    return r * 100 + np.arange(COLS)[None, :]


def ensure_arrays(store: Any) -> int:
    """Create the arrays if missing; return the current number of rows."""
    root = zarr.open_group(store, mode="a")
    if "temp" not in root:
        root.create_array(
            "time", shape=(0,), chunks=(1,), dtype="i8", fill_value=-1, dimension_names=["time"]
        )
        root.create_array(
            "temp",
            shape=(0, COLS),
            chunks=(1, COLS),
            dtype="f8",
            fill_value=np.nan,
            dimension_names=["time", "x"],
        )
    return int(root["temp"].shape[0])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--rendezvous", required=True)
    parser.add_argument("--replica", action="append", default=[])
    parser.add_argument("--zarr", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument(
        "--zarr-primary", action="store_true", help="--repo is a plain zarr v3 store"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    primary: Any = (
        ZarrTarget(name="primary", url=args.repo)
        if args.zarr_primary
        else IcechunkTarget(name="primary", storage=icechunk_storage(args.repo))
    )
    replicas: list[Any] = [
        IcechunkTarget(name=f"replica{k}", storage=icechunk_storage(url))
        for k, url in enumerate(args.replica)
    ]
    replicas += [ZarrTarget(name=f"zarr{k}", url=url) for k, url in enumerate(args.zarr)]
    job = CooperativeJob.create(
        rendezvous_url=args.rendezvous,
        primary=primary,
        replicas=replicas,
        policy=WaitPolicy(timeout=args.timeout, initial_interval=0.1, max_interval=0.5),
    )
    total = job.identity.workers_total
    rows_per_job = 0 if os.environ.get("COOP_TEST_NO_WRITE") else ROWS_PER_JOB
    index = job.identity.worker_index

    def prepare(stores: Stores) -> None:
        for store in stores.all:
            start = ensure_arrays(store)
            root = zarr.open_group(store, mode="a")
            new = start + rows_per_job
            root["temp"].resize((new, COLS))
            root["time"].resize((new,))
            root.attrs["pending_rows"] = new

    def work(stores: Stores) -> dict[str, Any]:
        root = zarr.open_group(stores.primary, mode="r")
        first = int(root["temp"].shape[0]) - rows_per_job
        rows = range(
            first + index * rows_per_job // total, first + (index + 1) * rows_per_job // total
        )
        if os.environ.get("COOP_TEST_SLEEP_IN_WORK"):
            time.sleep(float(os.environ["COOP_TEST_SLEEP_IN_WORK"]))
        for store in stores.all:
            temp = zarr.open_array(store, path="temp", mode="r+")
            tcoord = zarr.open_array(store, path="time", mode="r+")
            for n, row in enumerate(rows):
                if n == max(1, len(rows) // 2):
                    if os.environ.get("COOP_TEST_DIE_IN_WORK"):
                        print("DYING in work", flush=True)
                        os._exit(9)
                    crash_point("mid-work")  # ICECHUNK_COOP_CRASH_AT=mid-work
                temp[row, :] = values(range(row, row + 1))[0]
                tcoord[row] = row
        rewrite = os.environ.get("COOP_TEST_REWRITE_ROW")
        if rewrite and job.identity.is_last:
            row = int(rewrite)
            zarr.open_array(stores.primary, path="temp", mode="r+")[row, :] = values(
                range(row, row + 1)
            )[0]
        if os.environ.get("COOP_TEST_RAISE_IN_WORK"):
            raise RuntimeError(f"worker {index} found no source files")
        return {"index": index, "rows": [rows.start, rows.stop]}

    def finalize(stores: Stores, results: list[Any]) -> None:
        for store in stores.all:
            root = zarr.open_group(store, mode="a")
            root.attrs["last_job"] = job.job_id
            root.attrs["rows_written"] = sum(r["rows"][1] - r["rows"][0] for r in results)
            if "pending_rows" in root.attrs:
                del root.attrs["pending_rows"]

    outcome = job.run(work=work, prepare=prepare, finalize=finalize, message="test append")
    print("OUTCOME", json.dumps({"status": outcome.status, "snapshots": dict(outcome.snapshots)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
