"""``icechunk-coop``: run a local indexed job, inspect and clean rendezvous, the demo.

Only the public API is used here; everything the CLI does, a script can do.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import icechunk
import zarr

from icechunk_coop._errors import (
    ConfigurationError,
    CoopError,
    PayloadAuthenticationError,
    PayloadError,
)
from icechunk_coop._payload import SECRET_ENV, Sealer
from icechunk_coop._rendezvous import FAILED_SUFFIX, JobListing, Rendezvous, list_jobs
from icechunk_coop._storage import icechunk_storage
from icechunk_coop.cooperative import COMMITTED, SETUP, job_of_branch

__all__ = ["main", "run_local"]

log = logging.getLogger("icechunk_coop.cli")

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# ---- run-local -------------------------------------------------------------------


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


def _cmd_run_local(args: argparse.Namespace) -> int:
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


# ---- status ------------------------------------------------------------------------


def _sealer(job_id: str) -> Sealer:
    secret = os.environ.get(SECRET_ENV)
    return Sealer(job_id=job_id, secret=secret.encode() if secret else None)


def _state(listing: JobListing) -> str:
    if COMMITTED in listing.names:
        return "committed"
    if any(n.endswith(FAILED_SUFFIX) for n in listing.names):
        return "failed"
    if SETUP in listing.names:
        return "running"
    return "waiting for setup"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    ago = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if ago >= size:
            return f"{ago / size:.0f}{unit} ago"
    return f"{ago:.0f}s ago"


def _table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _summary(rv: Rendezvous, name: str) -> str:
    try:
        marker = rv.read(name + FAILED_SUFFIX, content="json")  # never unpickles
    except PayloadAuthenticationError:
        return f"(sealed: set {SECRET_ENV} to read it)"
    except PayloadError as exc:
        return f"(refused: {exc.reason[:80]})"
    return str((marker or {}).get("summary", ""))[:100]


def status(url: str, job: str | None, workers: int | None, out: IO[str]) -> int:
    """Print the jobs under ``url``, or one job's workers, as a table."""
    jobs = list_jobs(url)
    if job is None:
        if not jobs:
            out.write(f"no jobs at {url}\n")
            return 0
        rows: list[tuple[str, ...]] = [("job", "state", "workers seen", "last activity")]
        for job_id, listing in sorted(jobs.items()):
            state, arrived = _state(listing), len(listing.indexes("result"))
            # A committed job's results are cleaned up: "0 seen" would mislead.
            shown = "-" if state == "committed" and not arrived else str(arrived)
            rows.append((job_id, state, shown, _age(listing.newest)))
        _table(rows, out)
        return 0
    if job not in jobs:
        out.write(f"job {job!r}: nothing at {url} (never started, or cleaned up)\n")
        return 1
    listing = jobs[job]
    rv = Rendezvous.for_job(url, job_id=job, sealer=_sealer(job))
    seen = listing.indexes("result")
    total = workers or (max(seen) + 1 if seen else 0)
    out.write(f"job {job}: {_state(listing)} (last activity {_age(listing.newest)})\n")
    out.write(f"setup: {'published' if SETUP in listing.names else 'not yet'}")
    out.write(f"{' (worker 0 failed)' if SETUP + FAILED_SUFFIX in listing.names else ''}\n")
    if total:
        table: list[tuple[str, ...]] = [("worker", "state", "detail")]
        for index in range(total):
            state = seen.get(index, "missing")
            detail = _summary(rv, f"result-{index}") if state == "failed" else ""
            table.append((str(index), state, detail))
        _table(table, out)
        if workers is None:
            out.write(f"(workers total inferred as {total}; pass --workers N to be sure)\n")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    return status(args.url, args.job, args.workers, sys.stdout)


# ---- clean -------------------------------------------------------------------------


def parse_age(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``2d`` -> seconds."""
    match = _AGE.match(text.strip())
    if not match:
        raise ConfigurationError(f"--older-than {text!r}: write a number and s, m, h or d (6h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def clean(
    url: str,
    *,
    job: str | None,
    older_than: float | None,
    repos: Sequence[str],
    out: IO[str],
) -> list[str]:
    """Remove rendezvous namespaces (and their temporary branches in ``repos``)."""
    if (job is None) == (older_than is None):
        raise ConfigurationError("give exactly one of --job NAME or --older-than AGE")
    jobs = list_jobs(url)
    if job is not None:
        chosen = [job] if job in jobs else []
        if not chosen:
            out.write(f"job {job!r}: nothing at {url}\n")
    else:
        assert older_than is not None
        cutoff = time.time() - older_than
        chosen = [j for j, listing in jobs.items() if (listing.newest or 0) < cutoff]
    for job_id in chosen:
        Rendezvous.for_job(url, job_id=job_id, sealer=_sealer(job_id)).remove_all()
        out.write(f"removed {url.rstrip('/')}/{job_id}\n")
    for repo_url in repos:
        repo = icechunk.Repository.open(icechunk_storage(repo_url))
        if job is None:  # by age: every temporary branch of a job no longer in the rendezvous
            live = {j for j in jobs if j not in chosen}
            doomed = {j for b in repo.list_branches() if (j := job_of_branch(b))} - live
        else:
            doomed = {job}
        for branch in sorted(b for b in repo.list_branches() if job_of_branch(b) in doomed):
            repo.delete_branch(branch)
            out.write(f"deleted branch {branch} in {repo_url}\n")
    return chosen


def _cmd_clean(args: argparse.Namespace) -> int:
    older = parse_age(args.older_than) if args.older_than else None
    clean(args.url, job=args.job, older_than=older, repos=args.repo, out=sys.stdout)
    return 0


# ---- demo --------------------------------------------------------------------------


def _example_script() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "synthetic_forecast.py"
        if candidate.exists():
            return candidate
    raise ConfigurationError(
        "the demo runs examples/synthetic_forecast.py from a clone of the repository; "
        "it was not found above " + str(here)
    )


def _demo_phase(
    title: str, argv: list[str], *, workers: int, job_name: str, env: Mapping[str, str]
) -> float:
    print(f"\n=== {title}: {workers} workers, job {job_name} ===", flush=True)
    started = time.monotonic()
    codes = run_local(argv, workers=workers, job_name=job_name, extra_env=env)
    seconds = time.monotonic() - started
    failed = [i for i, c in codes.items() if c != 0]
    if failed:
        raise CoopError(f"demo: {title} failed in worker(s) {failed}; see the output above")
    print(f"=== {title} done in {seconds:.1f}s ===", flush=True)
    return seconds


def demo(directory: Path, workers: int) -> int:
    """Backfill, then update, the example dataset with local workers; report."""
    icechunk.set_logs_filter("error")  # local files warn about concurrency we do not do
    script = _example_script()
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
    )
    _print_history(repo)
    print(f"\nData: primary {repo}\n      replica {replica}\n      rendezvous {rendezvous}")
    print(
        'Open it: python -c "import icechunk, xarray as xr; '
        f"r = icechunk.Repository.open(icechunk.local_filesystem_storage('{repo}')); "
        "print(xr.open_zarr(r.readonly_session('main').store, consolidated=False))\""
    )
    return 0


def _print_history(repo_url: Path) -> None:
    repo = icechunk.Repository.open(icechunk_storage(str(repo_url)))
    print("\nCommits on main (newest first):")
    for info in repo.ancestry(branch="main"):
        meta = (info.metadata or {}).get("icechunk_coop") or {}
        written = meta.get("written", {})
        chunks = sum(written.get("chunks", {}).values())
        extra = f"; {meta['workers']} workers, {chunks} chunks" if meta else ""
        print(f"  {info.id}  {info.written_at:%H:%M:%S}  {info.message}{extra}")
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    print("\nArrays on main:")
    for name, array in sorted(root.arrays()):
        print(f"  {name:<24} shape {array.shape}")
    print(f"Last update: {root.attrs.get('last_update')}")


def _cmd_demo(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else Path(tempfile.gettempdir()) / "icechunk-coop-demo"
    return demo(directory, args.workers)


# ---- entry point -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icechunk-coop",
        description="Many workers, one atomic Icechunk commit.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("run-local", help="run COMMAND as N local workers of an indexed job")
    p.add_argument("--workers", type=int, required=True, metavar="N")
    p.add_argument("--job-name", help="JOB_NAME for every worker (default: local-<time>)")
    p.add_argument("--job-uid", help="JOB_UID (default: fresh)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra variable")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    p.set_defaults(func=_cmd_run_local)

    p = sub.add_parser("status", help="which workers of a job arrived, failed or are missing")
    p.add_argument("url", help="rendezvous URL")
    p.add_argument("--job", help="job id (name, or name-uid); omit to list jobs")
    p.add_argument("--workers", type=int, help="the job's WORKERS_TOTAL")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("clean", help="remove leftovers of crashed or finished jobs")
    p.add_argument("url", help="rendezvous URL")
    p.add_argument("--job", help="job id to remove")
    p.add_argument("--older-than", metavar="AGE", help="remove jobs idle this long (6h, 2d)")
    p.add_argument("--repo", action="append", default=[], help="also delete temporary branches")
    p.set_defaults(func=_cmd_clean)

    p = sub.add_parser("demo", help="backfill and update the example dataset locally")
    p.add_argument("--dir", help="where to put the data (default: a temp folder)")
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; libraries (botocore's credential chatter) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("icechunk_coop").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        code: int = args.func(args)
    except CoopError as exc:
        print(f"icechunk-coop: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
