"""One pod of a reformatters-shaped backfill (tests/test_reformatters.py starts three).

``argv``: the stores' base directory and the backfill's end. The index and
the total come from the environment, as their Typer commands read
``WORKER_INDEX`` (the completion index) and ``WORKERS_TOTAL``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from reformatters_standin import DynamicalDataset, MaterializedRegionJob, StoreFactory


def main() -> int:
    base, end = Path(sys.argv[1]), pd.Timestamp(sys.argv[2])
    dataset = DynamicalDataset(store_factory=StoreFactory(base=base),
                               region_job_class=MaterializedRegionJob)  # fmt: skip
    outcome = dataset.backfill(
        end,
        os.environ["JOB_NAME"],
        worker_index=int(os.environ["JOB_COMPLETION_INDEX"]),
        workers_total=int(os.environ["WORKERS_TOTAL"]),
    )
    print(f"worker {outcome.worker_index}: {outcome.status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
