"""gcsfs is the optional ``gcs`` extra: a gs:// location without it is refused early, by name.

The missing module is simulated in a child interpreter with
``sys.modules["gcsfs"] = None`` set before anything is imported, which is
what Python itself does to make an import fail; the test suite's own
interpreter keeps gcsfs (the GCS emulator tests need it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = "pip install 'icechunk-coop[gcs]'"

_CHILD = """
import json, sys
sys.modules["gcsfs"] = None  # as if the extra were not installed
from icechunk_coop import ConfigurationError
from icechunk_coop.rendezvous._blobs import BlobStore
from icechunk_coop.rendezvous._locations import filesystem
from icechunk_coop.targets._storage import icechunk_storage
from icechunk_coop.targets._targets import ZarrTarget
from icechunk_coop.targets._zarr import ZarrDriver

out = {}
def attempt(name, fn):
    try:
        fn()
    except ConfigurationError as exc:
        out[name] = str(exc)
    else:
        out[name] = None

attempt("filesystem", lambda: filesystem("gs://bucket/rendezvous"))
attempt("gcs-scheme", lambda: filesystem("gcs://bucket/rendezvous"))
attempt("blobs", lambda: BlobStore(url="gs://bucket/rendezvous"))
attempt("zarr", lambda: ZarrDriver(
    target=ZarrTarget(name="plain", url="gs://bucket/plain.zarr"), job_id="j", meeting=None))
attempt("s3", lambda: filesystem("s3://bucket/rendezvous"))
attempt("icechunk", lambda: icechunk_storage("gs://bucket/repo"))
out["gcsfs-imported"] = sys.modules.get("gcsfs") is not None
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def without_gcsfs() -> dict[str, object]:
    """What each way of opening a location says in an interpreter without gcsfs."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("opened", ["filesystem", "gcs-scheme", "blobs", "zarr"])
def test_a_gs_location_without_gcsfs_is_refused_naming_the_extra(
    without_gcsfs: dict[str, object], opened: str
) -> None:
    message = without_gcsfs[opened]
    assert isinstance(message, str), f"{opened}: nothing was refused"
    assert "gcsfs" in message and FIX in message, message
    assert "bucket" in message, message  # the URL refused is named


def test_s3_and_an_icechunk_repository_on_gs_do_not_need_gcsfs(
    without_gcsfs: dict[str, object],
) -> None:
    # icechunk reaches GCS itself: only fsspec locations (rendezvous, plain zarr) need gcsfs.
    assert without_gcsfs["s3"] is None
    assert without_gcsfs["icechunk"] is None
    assert without_gcsfs["gcsfs-imported"] is False


def test_gcsfs_is_an_extra_and_a_dev_dependency_but_not_a_requirement() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = [d.split(">")[0].split("=")[0].strip() for d in project["project"]["dependencies"]]
    assert "gcsfs" not in required
    assert project["project"]["optional-dependencies"]["gcs"] == ["gcsfs>=2025.1"]
    assert any(d.startswith("gcsfs") for d in project["dependency-groups"]["dev"])


def test_with_gcsfs_installed_a_gs_location_opens() -> None:
    pytest.importorskip("gcsfs")
    from icechunk_coop.rendezvous._locations import require_filesystem

    require_filesystem("gs://bucket/rendezvous")  # raises if it were refused
