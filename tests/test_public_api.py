"""The public API: a small top level, clear homes for the rest, old names that still work."""

from __future__ import annotations

import importlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import icechunk_coop
import icechunk_coop.errors
import icechunk_coop.inspect
from icechunk_coop import SECRET_ENV, ConfigurationError, CooperativeJob, WorkerIdentity

if TYPE_CHECKING:
    from conftest import JobFactory


def test_the_top_level_is_small_and_every_name_resolves() -> None:
    assert len(icechunk_coop.__all__) <= 30
    assert icechunk_coop.__all__ == sorted(icechunk_coop.__all__, key=lambda n: (n != n.upper(), n))
    for name in icechunk_coop.__all__:
        assert getattr(icechunk_coop, name) is not None, name


@pytest.mark.parametrize("module", ["errors", "inspect", "identity", "wire", "rendezvous",
                                    "targets", "protocol", "jobs"])  # fmt: skip
def test_each_layer_exports_what_it_lists(module: str) -> None:
    layer = importlib.import_module(f"icechunk_coop.{module}")
    for name in layer.__all__:
        assert getattr(layer, name) is not None, f"{module}.{name}"


@pytest.mark.parametrize("name", sorted(icechunk_coop._MOVED))
def test_a_moved_name_still_works_for_a_release_and_says_where_it_went(name: str) -> None:
    home = importlib.import_module(icechunk_coop._MOVED[name])
    with pytest.warns(DeprecationWarning, match=f"moved to {home.__name__}.{name}"):
        value = getattr(icechunk_coop, name)
    assert value is getattr(home, name)
    assert name not in icechunk_coop.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        icechunk_coop.no_such_name  # noqa: B018


def test_the_old_module_path_of_the_protocol_warns_and_works() -> None:
    code = (
        "import warnings; warnings.simplefilter('error');\n"
        "try:\n    import icechunk_coop.cooperative\nexcept DeprecationWarning as w:\n"
        "    print('warned:', w)\n"
        "warnings.simplefilter('ignore'); import importlib, icechunk_coop;\n"
        "m = importlib.import_module('icechunk_coop.cooperative');\n"
        "print(m.CooperativeJob is icechunk_coop.CooperativeJob)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "warned: icechunk_coop.cooperative moved to icechunk_coop.protocol" in out.stdout
    assert out.stdout.strip().endswith("True")


def test_importing_the_package_imports_no_storage_library() -> None:
    code = (
        "import sys, icechunk_coop, icechunk_coop.errors, icechunk_coop.inspect;"
        "print(sorted(m for m in ('icechunk', 'zarr', 'numpy', 'fsspec') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_old_keyword_for_deciding_the_start_warns_and_decides(
    make_job: JobFactory, tmp_path: Path, secret: str
) -> None:
    """``create(job_start=...)`` is ``decide_start=...`` for one release, with a warning."""
    decided = datetime(2031, 5, 6, tzinfo=UTC)
    primary = make_job().primary
    options = {"rendezvous_url": str(tmp_path / "rv"), "primary": primary,
               "identity": WorkerIdentity(worker_index=0, workers_total=1, job_name="old"),
               "environ": {SECRET_ENV: secret}}  # fmt: skip
    with pytest.warns(DeprecationWarning, match="decide_start"):
        job = CooperativeJob.create(**options, job_start=lambda: decided)  # type: ignore[arg-type]
    job.run(work=lambda stores: None, message="m")
    assert job.job_start == decided
    with pytest.raises(ConfigurationError, match="decide_start and job_start"):
        CooperativeJob.create(**options, job_start=lambda: decided, decide_start=lambda: decided)  # type: ignore[arg-type]
