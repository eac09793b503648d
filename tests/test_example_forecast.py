"""The example's simulated download is the worker's, not the job's: a resumed run is fast.

The job list is pinned in the setup for every worker and every later run of the
job; a latency carried inside the region jobs would make a resumed run as slow as
the first, whatever it was started with (the local-S3 tour resumes an update
"without the slow download" and must mean it).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "synthetic_forecast.py"


@pytest.fixture
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("example_forecast_latency", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pickle finds the job class by its module's name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_a_pinned_job_list_carries_no_latency(example: ModuleType) -> None:
    example.SOURCE.latency = 30.0  # the run that built and pinned the list was slow
    dataset = example.SyntheticForecast(repo_url="memory://unused")
    jobs = example.ForecastRegionJob.get_jobs(dataset, end=example.init_time(4))
    assert "latency" not in " ".join(f.name for f in attrs.fields(type(jobs[0])))
    pinned = pickle.dumps(list(jobs))

    example.SOURCE.latency = 0.0  # the resumed run's workers are not
    job = pickle.loads(pinned)[0]
    # Not yet published at ``now``: process only "downloads", then finds nothing.
    early = attrs.evolve(job, now=example.init_time(job.index))
    started = time.monotonic()
    assert early.process(None, []) == {"index": job.index, "found": False}
    assert time.monotonic() - started < 5


def _run_local(
    tmp_path: Path, *options: str, command: list[str], timeout: float, secret: str
) -> int:
    return subprocess.run(
        [sys.executable, "-m", "icechunk_coop.cli", "run-local", "-q", *options, "--", *command],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("JOB_")},
            "ICECHUNK_COOP_SECRET": secret,
            "JOB_START": "2025-01-02T17:00Z",
            "ICECHUNK_LOG": "error",
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tmp_path,
    ).returncode


@pytest.mark.slow
def test_a_resumed_update_skips_the_first_runs_slow_download(tmp_path: Path, secret: str) -> None:
    where = ["--repo", str(tmp_path / "repo"), "--rendezvous", str(tmp_path / "rendezvous")]
    script = [sys.executable, str(EXAMPLE)]
    backfill = [*script, "backfill", "--end", "2025-01-02T00:00Z", *where]
    assert _run_local(tmp_path, "--workers", "2", "--job-name", "fill", command=backfill,
                      timeout=120, secret=secret) == 0  # fmt: skip

    # The first run downloads for 60 s per init time and is stopped at its deadline:
    # the setup (and its job list) is pinned by then.
    slow = [*script, "update", "--source-latency", "60", *where]
    first = _run_local(tmp_path, "--workers", "2", "--job-name", "update", "--job-uid", "try1",
                       "--timeout", "12", command=slow, timeout=120, secret=secret)  # fmt: skip
    assert first == 1
    assert any((tmp_path / "rendezvous").rglob("setup*")), "the first run pinned no setup"

    # Resumed without the latency: done well inside a deadline shorter than one slow download.
    fast = [*script, "update", *where]
    started = time.monotonic()
    resumed = _run_local(tmp_path, "--resume", "update-try1", "--workers", "2",
                         "--timeout", "45", command=fast, timeout=120, secret=secret)  # fmt: skip
    assert resumed == 0
    assert time.monotonic() - started < 45
