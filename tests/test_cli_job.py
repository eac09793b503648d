"""run-local restarting a worker killed half way through a real cooperative job (S3 via moto)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import icechunk
import pytest

from icechunk_coop import SECRET_ENV, icechunk_storage
from icechunk_coop.testing import job_commits

WORKER = str(Path(__file__).with_name("coop_worker.py"))


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_restarted_and_the_job_commits_once(
    base_env: dict[str, str], s3_bucket: str, tmp_path: Path, secret: str
) -> None:
    repo, rv = f"s3://{s3_bucket}/repo", f"s3://{s3_bucket}/rv"
    env = {
        **base_env,
        SECRET_ENV: secret,
        "COOP_TEST_SLEEP_IN_WORK": "1",
    }
    argv = ["run-local", "--workers", "2", "--job-name", "kill", "--job-uid", "u1", "--"]
    log = tmp_path / "run.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "icechunk_coop.cli", *argv, sys.executable, WORKER,
             "--repo", repo, "--rendezvous", rv],
            env=env, stdout=handle, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # a guard, not a measurement
        while not re.search(r"\[0\] .*worker 0/2: preparing", log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        started = re.search(r"worker 0 started, pid (\d+)", log.read_text())
        assert started
        os.kill(int(started[1]), signal.SIGKILL)  # in its setup or its work
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    text = log.read_text()
    assert "worker 0 killed by SIGKILL; restarting it in 1s (retry 1 of 1)" in text
    assert "job kill-u1: all 2 workers succeeded (worker 0 after a restart)" in text
    repository = icechunk.Repository.open(icechunk_storage(repo))
    assert len(job_commits(repository, "kill-u1")) == 1
