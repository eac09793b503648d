"""``icechunk-coop run-local``: a command as N local workers of an Indexed Job."""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from icechunk_coop import SECRET_ENV, ConfigurationError, WorkerIdentity
from icechunk_coop.cli._controller import JobResult, LocalJob
from icechunk_coop.cli._secrets import Secret, resolve_secret
from icechunk_coop.cli._words import describe_exit, isatty, listing, plural, workers

__all__ = [
    "DEFAULT_BACKOFF_LIMIT",
    "LOG_LEVEL_ENV",
    "JobResult",
    "cmd_run_local",
    "run_local",
    "split_job_id",
]

LOG_LEVEL_ENV = "ICECHUNK_COOP_LOG_LEVEL"
DEFAULT_BACKOFF_LIMIT = 1
DEFAULT_GRACE = 5.0
# Set by the orchestrator for each index: the caller's own values would win over them.
_OURS = ("JOB_COMPLETION_INDEX", "WORKERS_TOTAL", "JOB_NAME", "JOB_UID", SECRET_ENV)


def run_local(
    command: Sequence[str],
    *,
    workers: int,
    job_name: str | None = None,
    job_uid: str | None = None,
    secret: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    backoff_limit_per_index: int = DEFAULT_BACKOFF_LIMIT,
    timeout: float | None = None,
    grace_period: float = DEFAULT_GRACE,
    log_level: str | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    quiet: bool = False,
    rendezvous: str | None = None,
    view: bool = False,
) -> JobResult:
    """Run ``command`` as ``workers`` processes with an Indexed Job's environment.

    Each process gets ``JOB_COMPLETION_INDEX``, ``WORKERS_TOTAL``,
    ``JOB_NAME``, ``JOB_UID`` and ``ICECHUNK_COOP_SECRET`` (the one given,
    else the environment's, else a fresh one), the variables the Kubernetes
    manifests in ``examples/k8s`` feed a pod, and ``ICECHUNK_COOP_LOG_LEVEL``
    when ``log_level`` is given. Output lines are prefixed with the index.
    A failed index is restarted up to ``backoff_limit_per_index`` times
    (exit code 2: never); one that fails for good stops the others; after
    ``timeout`` seconds every worker is stopped. See ``LocalJob``.

    ``view`` shows the job as it runs: a live table when ``err`` is a
    terminal (each worker's process, and with ``rendezvous`` its step and
    region jobs), else with ``rendezvous`` a line each time the job's state
    changes. Workers whose output is not a terminal get ``NO_COLOR=1``, so
    icechunk's own log lines carry no colour codes into files and pipes.
    """
    if workers < 1:
        raise ConfigurationError(f"--workers must be at least 1, got {workers}")
    if not command:
        raise ConfigurationError("give the worker command after '--'")
    name = job_name or f"local-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    uid = job_uid or uuid.uuid4().hex[:12]
    identity = WorkerIdentity(worker_index=0, workers_total=workers, job_name=name, job_uid=uid)
    env = {k: v for k, v in os.environ.items() if k != "WORKER_INDEX"}  # it would win
    env.update(extra_env or {})
    env.update(
        {
            "WORKERS_TOTAL": str(workers),
            "JOB_NAME": name,
            "JOB_UID": uid,
            SECRET_ENV: secret or os.environ.get(SECRET_ENV) or secrets.token_hex(32),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if log_level:
        env[LOG_LEVEL_ENV] = log_level
    out, err = out or sys.stdout, err or sys.stderr
    monitor = None
    if view:
        from icechunk_coop.cli._monitor import JobMonitor

        monitor = JobMonitor(
            job_id=identity.job_id,
            workers=workers,
            timeout=timeout,
            rendezvous=rendezvous,
            secret=env[SECRET_ENV],
            out=out,
            err=err,
        )
        out, err = monitor.out, monitor.err
    if not isatty(out):
        env.setdefault("NO_COLOR", "1")  # icechunk's Rust logs colour even a pipe otherwise
    job = LocalJob(
        command,
        job_id=identity.job_id,
        total=workers,
        env=env,
        backoff_limit_per_index=backoff_limit_per_index,
        timeout=timeout,
        grace_period=grace_period,
        out=out,
        err=err,
        quiet=quiet,
    )
    if monitor is None:
        return job.run()
    monitor.attach(job)
    try:
        return job.run()
    finally:
        monitor.close()


def split_job_id(job_id: str) -> tuple[str, str]:
    """``backfill-1-3f2a9c`` -> (``backfill-1``, ``3f2a9c``): the uid follows the last '-'."""
    name, sep, uid = job_id.rpartition("-")
    if not sep or not name or not uid:
        raise ConfigurationError(
            f"--resume {job_id!r}: give the job id run-local printed (NAME-UID, e.g. "
            "backfill-1-3f2a9c1d7e4b); for a uid with '-' in it pass --job-name and --job-uid"
        )
    return name, uid


def _resume_hint(args: argparse.Namespace, job_id: str, secret: Secret) -> str:
    prog = ["uv", "run", "icechunk-coop"] if "UV_RUN_RECURSION_DEPTH" in os.environ else []
    argv = [*(prog or ["icechunk-coop"]), "run-local", "--resume", job_id]
    if secret.file is not None:
        argv += ["--secret-file", str(secret.file)]
    argv += ["--workers", str(args.workers)]
    if args.rendezvous:
        argv += ["--rendezvous", args.rendezvous]
    if args.backoff_limit_per_index != DEFAULT_BACKOFF_LIMIT:
        argv += ["--backoff-limit-per-index", str(args.backoff_limit_per_index)]
    for item in args.env:
        argv += ["--env", item]
    hint = shlex.join([*argv, "--", *_command(args)])
    return hint if secret.file is not None else f"{hint}  (with {SECRET_ENV} set as now)"


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    return command[1:] if command[:1] == ["--"] else command


def _identity(args: argparse.Namespace) -> tuple[str, str]:
    if args.resume:
        if args.job_name or args.job_uid:
            raise ConfigurationError("--resume JOB_ID already names the job: drop --job-name/uid")
        return split_job_id(args.resume)
    name = args.job_name or f"local-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    return name, args.job_uid or uuid.uuid4().hex[:12]


def _summary(result: JobResult, timeout: float | None) -> str:
    job, codes = f"job {result.job_id}", result.codes
    if result.outcome == "succeeded":
        retried = [i for i, n in sorted(result.attempts.items()) if n > 1]
        done = "the worker succeeded" if len(codes) == 1 else f"all {len(codes)} workers succeeded"
        again = f" ({workers(retried)} after a restart)" if retried else ""
        return f"{job}: {done}{again}"
    if result.outcome == "failed":
        why = "; ".join(f"worker {i} {describe_exit(codes[i])}" for i in result.failed)
        text = f"{job} failed: {why}"
    elif result.outcome == "deadline":
        text = f"{job} passed its deadline (--timeout {timeout:g}s)"
    else:
        text = f"{job} interrupted by {_signal_name(result.signal)}"
    if result.stopped:
        still = " (still running)" if result.outcome == "deadline" else ""
        text += f"; stopped {workers(result.stopped)}{still}"
    if result.pending:
        text += f"; {workers(result.pending)} waited to restart"
    return text


def _signal_name(signum: int | None) -> str:
    return describe_exit(-(signum or 2)).removeprefix("killed by ")


def _env_items(items: Sequence[str]) -> dict[str, str]:
    env = dict(item.split("=", 1) for item in items)
    taken = sorted(set(env) & {*_OURS, LOG_LEVEL_ENV})
    if taken:
        raise ConfigurationError(
            f"--env {listing(taken)}: run-local sets {'it' if len(taken) == 1 else 'them'} "
            "itself (from --workers, --job-name, --job-uid or --resume; the secret from "
            f"{SECRET_ENV} in the environment or --secret-file; the log level from -v/-q)"
        )
    return env


def cmd_run_local(args: argparse.Namespace) -> int:
    command = _command(args)
    if not command:
        raise ConfigurationError("give the worker command after '--'")
    extra = _env_items(args.env)
    name, uid = _identity(args)
    job_id = WorkerIdentity(
        worker_index=0, workers_total=args.workers, job_name=name, job_uid=uid
    ).job_id
    secret_file = Path(args.secret_file).expanduser() if args.secret_file else None
    secret = resolve_secret(job_id=job_id, secret_file=secret_file, resume=bool(args.resume))
    quiet = args.log_level in {"WARNING", "ERROR"}
    new = " (new, mode 0600)" if secret.created else ""
    how = "resuming" if args.resume else "starting"
    if not quiet:
        print(
            f"icechunk-coop: {how} job {job_id} with {plural(args.workers, 'worker')}; "
            f"secret from {secret.source}{new}",
            file=sys.stderr,
        )
        print(f"icechunk-coop: to resume it: {_resume_hint(args, job_id, secret)}", file=sys.stderr)
    if secret.warning:
        print(f"icechunk-coop: warning: {secret.warning}", file=sys.stderr)
    result = run_local(
        command,
        workers=args.workers,
        job_name=name,
        job_uid=uid,
        secret=secret.value,
        extra_env=extra,
        backoff_limit_per_index=args.backoff_limit_per_index,
        timeout=args.timeout,
        grace_period=args.grace_period,
        log_level=args.log_level,
        quiet=quiet,
        rendezvous=args.rendezvous,
        view=not quiet,
    )
    summary = _summary(result, args.timeout)
    if result.exit_code != 0:  # one line, so a log search finds the way back with the failure
        summary += f"; resume with: {_resume_hint(args, job_id, secret)}"
    print(f"icechunk-coop: {summary}", file=sys.stderr)
    return result.exit_code
