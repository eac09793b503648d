"""``icechunk-coop demo``: backfill, then update, the example dataset with local workers."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from icechunk_coop import ConfigurationError, CoopError
from icechunk_coop.cli._run_local import run_local
from icechunk_coop.cli._words import describe_exit, plural
from icechunk_coop.inspect import METADATA_KEY

__all__ = ["cmd_demo", "demo"]


def _example_script() -> Path:
    """The example's worker script: inside an installed wheel, else in the clone."""
    here = Path(__file__).resolve()
    packaged = here.parents[1] / "examples" / "synthetic_forecast.py"
    if packaged.exists():
        return packaged
    for parent in here.parents:
        candidate = parent / "examples" / "synthetic_forecast.py"
        if candidate.exists():
            return candidate
    raise ConfigurationError(
        "the demo runs examples/synthetic_forecast.py, which the wheel ships and a clone of "
        "the repository holds; it was not found above " + str(here)
    )


def _require_xarray() -> None:
    """The example writes its region jobs with xarray: say so before any worker starts."""
    if importlib.util.find_spec("xarray") is None:
        raise ConfigurationError(
            "the demo's example dataset needs xarray, which is not installed: "
            "pip install 'icechunk-coop[demo]' (or uv add 'icechunk-coop[demo]')"
        )


def _demo_phase(
    title: str,
    argv: list[str],
    *,
    workers: int,
    job_name: str,
    env: Mapping[str, str],
    log_level: str | None,
    rendezvous: Path,
) -> float:
    print(f"\n=== {title}: {plural(workers, 'worker')}, job {job_name} ===", flush=True)
    started = time.monotonic()
    result = run_local(
        argv,
        workers=workers,
        job_name=job_name,
        extra_env=env,
        log_level=log_level,
        quiet=log_level in {"WARNING", "ERROR"},
        rendezvous=str(rendezvous),
        view=log_level not in {"WARNING", "ERROR"},
    )
    seconds = time.monotonic() - started
    if result.outcome == "interrupted":
        raise KeyboardInterrupt
    if result.exit_code != 0:
        failed = "; ".join(f"worker {i} {describe_exit(result.codes[i])}" for i in result.failed)
        raise CoopError(f"demo: {title} failed: {failed or result.outcome}; see the output above")
    print(f"=== {title} done in {seconds:.1f}s ===", flush=True)
    return seconds


def demo(directory: Path, workers: int, *, log_level: str | None = None) -> int:
    import icechunk

    """Backfill, then update, the example dataset with local workers; report."""
    icechunk.set_logs_filter("error")  # local files warn about concurrency we do not do
    script = _example_script()
    _require_xarray()
    directory.mkdir(parents=True, exist_ok=True)
    repo, replica = directory / "forecast.icechunk", directory / "replica.icechunk"
    rendezvous = directory / "rendezvous"
    for path in (repo, replica, rendezvous):
        shutil.rmtree(path, ignore_errors=True)
    env = {"ICECHUNK_LOG": os.environ.get("ICECHUNK_LOG", "error")}
    common = ["--repo", str(repo), "--replica", str(replica), "--rendezvous", str(rendezvous)]
    py = [sys.executable, str(script)]
    _demo_phase(
        "backfill to 2025-01-04T00Z",
        [*py, "backfill", "--end", "2025-01-04T00:00Z", *common, "--source-latency", "0.2"],
        workers=workers,
        job_name="demo-backfill",
        env=env,
        log_level=log_level,
        rendezvous=rendezvous,
    )
    # A CronJob-style name: the scheduled time (minutes since the epoch) is the job start.
    start = datetime(2025, 1, 5, 1, 20, tzinfo=UTC)
    cron_job = f"demo-update-{int(start.timestamp() // 60)}"
    _demo_phase(
        f"update at {start:%Y-%m-%dT%H:%MZ} (from the CronJob-style name)",
        [*py, "update", *common, "--source-latency", "0.2"],
        workers=workers,
        job_name=cron_job,
        env={**env, "CRONJOB_NAME": "demo-update"},
        log_level=log_level,
        rendezvous=rendezvous,
    )
    _print_history(repo)
    _check_no_empty_steps(repo)
    print(f"\nData: primary {repo}\n      replica {replica}\n      rendezvous {rendezvous}")
    print(
        'Open it: uv run python -c "import icechunk, xarray as xr; '
        f"r = icechunk.Repository.open(icechunk.local_filesystem_storage('{repo}')); "
        "print(xr.open_zarr(r.readonly_session('main').store, consolidated=False))\""
    )
    return 0


def _check_no_empty_steps(repo_url: Path) -> None:
    import icechunk
    import numpy as np
    import zarr

    from icechunk_coop import icechunk_storage

    """Every init time the primary shows has data: the update resumed where the backfill ended."""
    repo = icechunk.Repository.open(icechunk_storage(str(repo_url)))
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    values = root["temperature_2m"]
    assert isinstance(values, zarr.Array)
    empty = [i for i in range(values.shape[0]) if bool(np.isnan(values[i]).all())]
    if empty:
        raise CoopError(f"demo: init time(s) {empty} of {repo_url} hold no data")
    print(f"\nEvery one of the {values.shape[0]} init times holds data.")


def _print_history(repo_url: Path) -> None:
    import icechunk
    import zarr

    from icechunk_coop import icechunk_storage

    repo = icechunk.Repository.open(icechunk_storage(str(repo_url)))
    print("\nCommits on main (newest first):")
    for info in repo.ancestry(branch="main"):
        meta = (info.metadata or {}).get(METADATA_KEY) or {}
        written = meta.get("written", {})
        chunks = sum(written.get("chunks", {}).values())
        extra = f"; {plural(meta['workers'], 'worker')}, {plural(chunks, 'chunk')}" if meta else ""
        print(f"  {info.id}  {info.written_at:%H:%M:%S}  {info.message}{extra}")
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    print("\nArrays on main:")
    for name, array in sorted(root.arrays()):
        print(f"  {name:<24} shape {array.shape}")
    print(f"Last update: {root.attrs.get('last_update')}")


def cmd_demo(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else Path(tempfile.gettempdir()) / "icechunk-coop-demo"
    return demo(directory, args.workers, log_level=args.log_level)
