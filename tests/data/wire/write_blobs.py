"""Write one job's blobs, as this release seals them, into a folder of this one.

Run with the release whose blobs ``tests/test_wire_compat.py`` should keep
reading (``uv run python tests/data/wire/write_blobs.py``): each release's
blobs go in a folder of their own, named by the package and icechunk
versions, so that later releases are held to every format ever written.

Two jobs on local files, kept after they end (no cleanup): ``done``, two
workers writing an Icechunk primary and a plain zarr replica, committed;
``failed``, whose worker 1 fails in its work (its failure marker).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import icechunk
import zarr

from icechunk_coop import CooperativeJob, IcechunkTarget, Stores, WorkerIdentity, ZarrTarget
from icechunk_coop.testing import run_in_process

#: The secret the test opens these blobs with (it seals nothing real).
SECRET = "wire-compat-0123456789abcdef0123456789abcdef"


def prepare(stores: Stores) -> str:
    for store in (stores.primary, *stores.replicas):
        zarr.open_group(store, mode="a").create_array(
            "a", shape=(4,), chunks=(1,), dtype="i4", fill_value=0
        )
    return "decision of worker 0"


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:

        def make(identity: WorkerIdentity) -> CooperativeJob:
            root = Path(tmp) / identity.job_name  # a repository of each job's own
            return CooperativeJob.create(
                identity=identity,
                rendezvous_url=str(root / "rv"),
                primary=IcechunkTarget(
                    name="primary",
                    storage=icechunk.local_filesystem_storage(str(root / "repo")),
                ),
                replicas=[ZarrTarget(name="plain", url=str(root / "plain"))],
                environ={"ICECHUNK_COOP_SECRET": SECRET, "HOSTNAME": "pod-x"},
                cleanup=False,
            )

        def work(stores: Stores, index: int) -> dict[str, int]:
            for store in (stores.primary, *stores.replicas):
                zarr.open_array(store, path="a", mode="r+")[index] = 10 + index
            return {"rows": index}

        def run_done(job: CooperativeJob) -> object:
            i = job.identity.worker_index
            return job.run(work=lambda s: work(s, i), prepare=prepare, message="m")

        run_in_process(make, 2, run_done, job_name="done", job_uid="u")

        def run_failed(job: CooperativeJob) -> object:
            if job.identity.worker_index == 0:
                return run_done(job)
            try:
                return job.run(work=lambda s: 1 / 0, message="m")
            except ZeroDivisionError:
                return None

        run_in_process(make, 2, run_failed, indexes=[0, 1], job_name="failed", job_uid="u")
        for job in ("done", "failed"):
            for blob in sorted((Path(tmp) / job / "rv" / f"{job}-u").iterdir()):
                (out / f"{job}-u").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(blob, out / f"{job}-u" / blob.name)


if __name__ == "__main__":
    version = f"{metadata.version('icechunk-coop')}-icechunk-{metadata.version('icechunk')}"
    folder = Path(__file__).parent / version
    if folder.exists():
        sys.exit(f"{folder} exists: blobs of a release are written once")
    main(folder)
    print(f"wrote {folder}")
