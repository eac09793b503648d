"""A worker process whose setup only the workers can unpickle, started like a pod.

Worker 0's ``prepare`` returns a :class:`OnlyTheWorkersImportThis`, a class
of this script's ``__main__``: ``status`` and ``report``, run anywhere else,
cannot import it, which is what a real job's decision (a list of the
dataset's own region jobs) does to them. Identity and secret come from the
environment, as in ``coop_worker.py``.

``--timeout`` bounds each wait (a worker whose setup never comes gives up);
``STATUS_TEST_RAISE=1`` makes ``work`` raise (a failure marker).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import attrs
import zarr

from icechunk_coop import CooperativeJob, IcechunkTarget, Stores, WaitPolicy, icechunk_storage


@attrs.frozen
class OnlyTheWorkersImportThis:
    """A value of a class that lives in this script's ``__main__`` only."""

    jobs: tuple[str, ...]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--rendezvous", required=True)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = CooperativeJob.create(
        rendezvous_url=args.rendezvous,
        primary=IcechunkTarget(name="primary", storage=icechunk_storage(args.repo)),
        policy=WaitPolicy(timeout=args.timeout, initial_interval=0.05, max_interval=0.2),
    )
    index = job.identity.worker_index

    def prepare(stores: Stores) -> OnlyTheWorkersImportThis:
        zarr.open_group(stores.primary, mode="a").attrs["prepared"] = True
        return OnlyTheWorkersImportThis(jobs=("a", "b", "c"))

    def work(stores: Stores) -> dict[str, Any]:
        del stores
        if os.environ.get("STATUS_TEST_RAISE"):
            raise RuntimeError(f"worker {index} found no source files")
        return {"index": index}

    outcome = job.run(work=work, prepare=prepare, message="status test")
    print("OUTCOME", json.dumps({"status": outcome.status}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
