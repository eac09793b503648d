"""Write strategies end to end: N real worker processes against moto, counted by the proxy.

Each run gets a fresh bucket holding a repository with empty ``temp`` and
``time`` arrays (created directly on moto, so not counted); the workers then
append the same rows whatever the strategy. Afterwards the harness reads
``main`` back (again directly) to check every value, count the snapshots that
landed on it and list branches left behind.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import zarr
from _servers import S3, clean_environ
from write_worker import values

from icechunk_coop import icechunk_storage

WORKER = Path(__file__).with_name("write_worker.py")
STRATEGIES = ("coop", "uncoop", "serial")


@dataclass(frozen=True)
class WriteConfig:
    rows: int
    cols: int
    row_seconds: float
    max_interval: float
    timeout: float = 900.0
    release_at: float = 0.0
    #: End each worker with ``os._exit`` once it has reported (see ``write_worker.py``).
    quick_exit: bool = False


def _repo(s3: S3, url: str) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk_storage(url, s3.direct_env))


def _init_repo(s3: S3, url: str, cols: int) -> int:
    repo = icechunk.Repository.create(icechunk_storage(url, s3.direct_env))
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    root.create_array("time", shape=(0,), chunks=(1,), dtype="i8", fill_value=-1)
    root.create_array("temp", shape=(0, cols), chunks=(1, cols), dtype="f8", fill_value=np.nan)
    session.commit("init")
    return len(list(repo.ancestry(branch="main")))


def _verify(s3: S3, url: str, cfg: WriteConfig, before: int) -> dict[str, Any]:
    repo = _repo(s3, url)
    store = repo.readonly_session("main").store
    root = zarr.open_group(store, mode="r")
    temp = np.asarray(zarr.open_array(store, path="temp", mode="r")[:])
    tcoord = np.asarray(zarr.open_array(store, path="time", mode="r")[:])
    expected = np.stack([values(row, cfg.cols) for row in range(cfg.rows)])
    ok = (
        temp.shape == (cfg.rows, cfg.cols)
        and bool(np.array_equal(temp, expected))
        and bool(np.array_equal(tcoord, np.arange(cfg.rows)))
        and root.attrs.get("rows_written") == cfg.rows
    )
    return {
        "data_ok": ok,
        "snapshots_on_main": len(list(repo.ancestry(branch="main"))) - before,
        "branches_left": sorted(b for b in repo.list_branches() if b != "main"),
    }


def run_write(s3: S3, strategy: str, workers: int, cfg: WriteConfig) -> dict[str, Any]:
    """Run one strategy with ``workers`` processes; what it cost and whether it is right."""
    total = 1 if strategy == "serial" else workers
    bucket = f"w-{strategy}-{workers}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    repo_url = f"s3://{bucket}/repo"
    before = _init_repo(s3, repo_url, cfg.cols)
    job_name, job_uid, secret = (
        f"bench-{strategy}-{workers}",
        uuid.uuid4().hex[:12],
        secrets.token_hex(32),
    )
    argv = [
        sys.executable,
        str(WORKER),
        "--strategy",
        strategy,
        "--repo",
        repo_url,
        "--rendezvous",
        f"s3://{bucket}/rendezvous",
        "--rows",
        str(cfg.rows),
        "--cols",
        str(cfg.cols),
        "--row-seconds",
        str(cfg.row_seconds),
        "--max-interval",
        str(cfg.max_interval),
        "--timeout",
        str(cfg.timeout),
        "--release-at",
        str(cfg.release_at),
        *(["--quick-exit"] if cfg.quick_exit else []),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-") as logs:
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        started = time.monotonic()
        for index in range(total):
            env = clean_environ(
                {
                    **s3.worker_env(index),  # its requests signed "w<index>": told apart
                    "JOB_COMPLETION_INDEX": str(index),
                    "WORKERS_TOTAL": str(total),
                    "JOB_NAME": job_name,
                    "JOB_UID": job_uid,
                    "ICECHUNK_COOP_SECRET": secret,
                }
            )
            log = Path(logs) / f"worker-{index}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            procs.append((proc, log))
        codes = []
        for proc, _ in procs:
            try:
                codes.append(proc.wait(timeout=cfg.timeout + 60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        wall = time.monotonic() - started
        outcomes: list[dict[str, Any]] = []
        failures: list[str] = []
        for (_, log), code in zip(procs, codes, strict=True):
            text = log.read_text(errors="replace")
            lines = [ln for ln in text.splitlines() if ln.startswith("BENCH ")]
            if code != 0 or not lines:
                failures.append(f"{log.name} exit {code}: {text[-1500:]}")
            else:
                outcomes.append(json.loads(lines[-1][len("BENCH ") :]))
    time.sleep(0.3)  # the proxy records a request when its answer is back
    counts = s3.counts(bucket)
    check = _verify(s3, repo_url, cfg, before) if not failures else {}
    commit_phase = [o["seconds"].get("commit", 0.0) for o in outcomes]
    return {
        "strategy": strategy,
        "workers": workers,
        "processes": total,
        "wall_seconds": wall,
        "requests": counts,
        "requests_total": sum(counts.values()),
        "commits": sum(o["calls"]["commit"] for o in outcomes),
        "rebases": sum(o["calls"]["rebase"] for o in outcomes)
        + sum(o["rebase_attempts"] for o in outcomes),
        "reset_branch": sum(o["calls"]["reset_branch"] for o in outcomes),
        "commit_seconds_max": max(commit_phase, default=0.0),
        "slowest_worker_after_imports": max((o["process_seconds"] for o in outcomes), default=None),
        "worker_seconds": [o["seconds"] for o in outcomes],
        "outcomes": outcomes,
        "bucket": bucket,
        "job_id": f"{job_name}-{job_uid}",
        "secret": secret,
        **check,
        "failures": failures,
    }
