"""``icechunk-coop run-local``: a command as N local workers of an Indexed Job."""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO

from icechunk_coop import SECRET_ENV, ConfigurationError

__all__ = ["cmd_run_local", "run_local"]


def _pump(index: int, stream: IO[str], out: IO[str], lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"[{index}] {line}")
            out.flush()


def run_local(
    command: Sequence[str],
    *,
    workers: int,
    job_name: str | None = None,
    job_uid: str | None = None,
    secret: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    out: IO[str] | None = None,
) -> dict[int, int]:
    """Run ``command`` as ``workers`` processes with an Indexed Job's environment.

    Each process gets ``JOB_COMPLETION_INDEX``, ``WORKERS_TOTAL``,
    ``JOB_NAME``, ``JOB_UID`` and ``ICECHUNK_COOP_SECRET`` (fresh unless
    given), exactly the variables the Kubernetes manifests in ``examples/k8s``
    feed a pod. Output lines are prefixed with the index. Returns each
    index's exit code.
    """
    if workers < 1:
        raise ConfigurationError(f"--workers must be at least 1, got {workers}")
    if not command:
        raise ConfigurationError("give the worker command after '--'")
    out = out or sys.stdout
    name = job_name or f"local-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    uid = job_uid or uuid.uuid4().hex[:12]
    shared = secret or os.environ.get(SECRET_ENV) or secrets.token_hex(32)
    lock = threading.Lock()
    procs: dict[int, subprocess.Popen[str]] = {}
    pumps = []
    for index in range(workers):
        env = {
            **os.environ,
            **(extra_env or {}),
            "JOB_COMPLETION_INDEX": str(index),
            "WORKERS_TOTAL": str(workers),
            "JOB_NAME": name,
            "JOB_UID": uid,
            SECRET_ENV: shared,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("WORKER_INDEX", None)  # explicit variables would win over the indexed job's
        proc = subprocess.Popen(
            list(command),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        procs[index] = proc
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(index, proc.stdout, out, lock), daemon=True)
        pump.start()
        pumps.append(pump)
    codes = {index: proc.wait() for index, proc in procs.items()}
    for pump in pumps:
        pump.join(5)
    return codes


def cmd_run_local(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    env = dict(item.split("=", 1) for item in args.env)
    codes = run_local(
        command,
        workers=args.workers,
        job_name=args.job_name,
        job_uid=args.job_uid,
        extra_env=env,
    )
    failed = sorted(i for i, code in codes.items() if code != 0)
    if failed:
        detail = ", ".join(f"{i} (exit {codes[i]})" for i in failed)
        print(f"icechunk-coop: worker(s) {detail} failed", file=sys.stderr)
        return 1
    print(f"icechunk-coop: all {len(codes)} workers succeeded", file=sys.stderr)
    return 0
