"""A worker process for the overlap tests, started like a pod (identity from the environment).

The dataset is the one of the overlap finding: an array ``x`` of 20 values
chunked by 10, and a coordinate-like ``t`` (20 values, one chunk) that every
region job may write the same way. ``OVERLAP_CASE`` says what each worker
writes:

``halves``     worker i writes ``x[10+5i : 15+5i]`` (both halves of chunk 1)
``same``       worker i writes ``x[0:10] = i + 1`` (one chunk, different values)
``identical``  worker i writes its own chunk of ``x`` and all of ``t`` the same way
``metadata``   worker i writes its own chunk of ``x`` and sets ``x.attrs["by"] = i``
``aligned``    worker i writes its own chunk of ``x``

It prints ``OUTCOME <status>`` or ``REFUSED <kind>: <message>`` and exits 0 or 3.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import numpy as np
import zarr

from icechunk_coop import (
    CooperativeJob,
    CoopError,
    IcechunkTarget,
    Stores,
    WaitPolicy,
    ZarrTarget,
    icechunk_storage,
)


def prepare(stores: Stores) -> None:
    for store in stores.all:
        root = zarr.open_group(store, mode="a")
        if "x" not in root:
            root.create_array("x", shape=(20,), chunks=(10,), dtype="f8", fill_value=np.nan)
            root.create_array("t", shape=(20,), chunks=(20,), dtype="i8", fill_value=-1)


def work(stores: Stores, index: int) -> dict[str, Any]:
    case = os.environ["OVERLAP_CASE"]
    for store in stores.all:
        x = zarr.open_array(store, path="x", mode="r+")
        if case == "halves":
            x[10 + 5 * index : 15 + 5 * index] = index + 1
        elif case == "same":
            x[0:10] = index + 1
        else:
            x[10 * index : 10 * index + 10] = index + 1
        if case == "identical":
            zarr.open_array(store, path="t", mode="r+")[:] = np.arange(20) * 60
        if case == "metadata":
            x.attrs["by"] = index
    return {"index": index}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--rendezvous", required=True)
    parser.add_argument("--zarr-primary", action="store_true")
    parser.add_argument("--zarr", action="append", default=[], help="a plain zarr replica")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    primary: Any = (
        ZarrTarget(name="primary", url=args.repo)
        if args.zarr_primary
        else IcechunkTarget(name="primary", storage=icechunk_storage(args.repo))
    )
    replicas = [ZarrTarget(name=f"zarr{k}", url=url) for k, url in enumerate(args.zarr)]
    job = CooperativeJob.create(
        rendezvous_url=args.rendezvous,
        primary=primary,
        replicas=replicas,
        policy=WaitPolicy(timeout=120, initial_interval=0.05, max_interval=0.3),
    )
    index = job.identity.worker_index
    try:
        outcome = job.run(work=lambda s: work(s, index), prepare=prepare, message="overlap test")
    except CoopError as exc:
        print(f"REFUSED {type(exc).__name__}: {exc}", flush=True)
        return 3
    print(f"OUTCOME {outcome.status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
