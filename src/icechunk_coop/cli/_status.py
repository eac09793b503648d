"""``icechunk-coop status`` and ``clean``: a rendezvous read (and tidied) through the read model."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import icechunk

from icechunk_coop import SECRET_ENV, ConfigurationError, icechunk_storage
from icechunk_coop.cli._parser import STATUS_EXIT
from icechunk_coop.cli._words import ranges
from icechunk_coop.errors import MissingLocationError, StorageUnreachableError
from icechunk_coop.inspect import (
    JobListing,
    JobStatus,
    delete_temporary_branches,
    find_jobs,
    list_jobs,
    read_job,
    remove_job,
    temporary_branches,
)

__all__ = ["clean", "cmd_clean", "cmd_status", "parse_age", "status", "storage_errors"]

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    ago = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if ago >= size:
            return f"{ago / size:.0f}{unit} ago"
    return f"{ago:.0f}s ago"


def _table(rows: Sequence[Sequence[str]], out: IO[str], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        out.write(f"{indent}{cells}".rstrip() + "\n")
        if n == 0:
            out.write(indent + "  ".join("-" * w for w in widths) + "\n")


def _jobs_table(jobs: Mapping[str, JobListing], out: IO[str]) -> None:
    rows: list[tuple[str, ...]] = [("job", "state", "workers seen", "last activity")]
    for job_id, listing in sorted(jobs.items()):
        state, arrived = listing.state, len(listing.workers())
        # A committed job's results are cleaned up, and it committed only once
        # every worker's result was in: "all" is what the blobs prove.
        shown = "all" if state == "committed" else str(arrived)
        rows.append((job_id, state, shown, _age(listing.newest)))
    _table(rows, out)


def _what_was_committed(job: JobStatus, out: IO[str]) -> None:
    marker = job.committed
    if marker is None:
        out.write(f"committed: {job.committed_error or '(the marker is unreadable)'}\n")
        return
    by = f" by {marker.workers_total} workers" if marker.workers_total else ""
    out.write(f"committed {_age(marker.at)}{by}\n")
    if not marker.snapshots:
        out.write("  (no target was changed)\n")
        return
    rows = [("target", "snapshot"), *sorted(marker.snapshots.items())]
    _table(rows, out, indent="  ")


def _total_note(job: JobStatus, secret: bool) -> str | None:
    total = job.workers_total
    if job.total_source == "setup":
        return f"(workers total {total}, from the setup)"
    if job.total_source == "inferred":
        how = "pass --workers N" if secret else f"pass --workers N or set {SECRET_ENV}"
        return f"(workers total inferred as {total} from the highest index seen; {how} to be sure)"
    if job.total_source == "unknown" and job.state != "committed":
        done = "worker 0 published the setup, but " if job.listing.setup_published else ""
        how = "pass --workers N" if secret else f"set {SECRET_ENV} or pass --workers N"
        return f"({done}no worker has published a result or a failure marker yet; {how})"
    return None  # given, or the committed marker's (said above)


def _setup_line(job: JobStatus, secret: bool) -> str:
    listing = job.listing
    if not listing.setup_published:
        return f"setup: not yet{' (worker 0 failed)' if listing.setup_failed else ''}"
    header, error = job.setup.header, job.setup.error
    if error is not None:
        return f"setup: published, its header unreadable {error}"
    if header is None:
        return "setup: published" + ("" if secret else f" (set {SECRET_ENV} to read its header)")
    ours = version("icechunk")
    sealed = header.icechunk or "unknown"
    differs = f" (this tool runs {ours})" if header.icechunk and header.icechunk != ours else ""
    deadline = "unknown"
    if header.deadline is not None:
        deadline = datetime.fromtimestamp(header.deadline, UTC).isoformat(timespec="seconds")
    return (
        f"setup: published for {header.workers_total} workers, by icechunk {sealed}{differs}; "
        f"deadline {deadline}"
    )


def _never_seen(job: JobStatus, out: IO[str]) -> None:
    """What a Job controller cannot say: indexes with nothing in the rendezvous at all."""
    never, total = job.never_seen, job.workers_total
    if not never or total is None:
        return
    out.write(f"never seen: {ranges(never)} of 0..{total - 1} (no result, no failure marker)")
    if job.committer_missing:
        out.write(f"; among them the committer, index {total - 1}: nothing commits until it runs")
    out.write("\n")
    if job.stops_short:
        last = max(w.index for w in job.workers if w.seen)
        out.write(
            f"hint: the indexes seen stop at {last}, short of the last ({total - 1}): the Job's "
            f"completions may disagree with WORKERS_TOTAL ({total}); a Job of {last + 1} pods "
            "never commits\n"
        )


def _show_job(url: str, listing: JobListing, workers: int | None, out: IO[str]) -> JobStatus:
    secret = os.environ.get(SECRET_ENV) or None
    job = read_job(url, listing, secret=secret, workers_total=workers)
    out.write(f"job {job.job_id}: {job.state} (last activity {_age(listing.newest)})\n")
    if job.why:
        out.write(f"{job.state}: {job.why}\n")
    if job.state == "committed":
        _what_was_committed(job, out)
    else:
        out.write(_setup_line(job, secret is not None) + "\n")
    if job.workers:
        table: list[tuple[str, ...]] = [("worker", "state", "detail")]
        table += [(str(w.index), w.state, w.detail) for w in job.workers]
        _table(table, out)
    if job.state != "committed":
        _never_seen(job, out)
    note = _total_note(job, secret is not None)
    if note:
        out.write(note + "\n")
    return job


def status(url: str, job: str | None, workers: int | None, out: IO[str]) -> int:
    """Print the jobs under ``url``, or one job's workers, as a table; returns the exit code.

    ``job`` is a job id (``name-uid``) or a job's name, which finds the
    ids ``<name>-...``; when it finds several they are listed instead (exit
    code 2: say which). The worker total is ``workers`` if given, else the
    committed marker's, else the setup's header (with ``ICECHUNK_COOP_SECRET``
    set), else inferred. One job's exit code is its state's
    (:data:`~icechunk_coop.cli._parser.STATUS_EXIT`): 0 only when it
    committed. A job that is not there: 1. A bucket that does not exist
    raises ``MissingLocationError``, storage that does not answer
    ``StorageUnreachableError``.
    """
    jobs = list_jobs(url)
    if job is None:
        if not jobs:
            out.write(f"no jobs at {url}\n")
        else:
            _jobs_table(jobs, out)
        return 0
    matches = find_jobs(jobs, job)
    if not matches:
        out.write(f"job {job!r}: nothing at {url} (never started, or cleaned up)\n")
        return 1
    if len(matches) > 1:
        out.write(f"job {job!r} matches {len(matches)} jobs at {url}; pass one to --job:\n")
        _jobs_table({m: jobs[m] for m in matches}, out)
        return 2
    return STATUS_EXIT[_show_job(url, jobs[matches[0]], workers, out).state]


def storage_errors(command: str, run: Callable[[], int]) -> int:
    """``run``, with a missing bucket (2) or silent storage (1) said in one line naming the URL."""
    try:
        return run()
    except MissingLocationError as exc:
        detail = f" ({exc.detail})" if exc.detail else ""
        print(
            f"icechunk-coop {command}: {exc.role} at {exc.url} does not exist or cannot be "
            f"read{detail}; check the URL",
            file=sys.stderr,
        )
        return 2
    except StorageUnreachableError as exc:
        print(
            f"icechunk-coop {command}: cannot reach the storage at {exc.url}: {exc.detail}; "
            "check the endpoint (AWS_ENDPOINT_URL), the network and the credentials",
            file=sys.stderr,
        )
        return 1


def watch_status(url: str, job: str, workers: int | None, out: IO[str], *, interval: float) -> int:
    """Follow ``job`` until it commits (0) or fails (1), then print its status as ``status``.

    In a terminal the workers are shown live; otherwise a line is written
    each time the job's state changes. A job not there yet is waited for.
    """
    from icechunk_coop.cli._watch import watch  # the live view's imports, only when watching

    code, job_id = watch(url, job, workers=workers, interval=interval, out=out)
    status(url, job_id or job, workers, out)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        if args.job is None:
            raise ConfigurationError("--watch follows one job: give it with --job NAME")
        return storage_errors(
            "status",
            lambda: watch_status(
                args.url, args.job, args.workers, sys.stdout, interval=args.interval
            ),
        )
    return storage_errors("status", lambda: status(args.url, args.job, args.workers, sys.stdout))


def parse_age(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``2d`` -> seconds."""
    match = _AGE.match(text.strip())
    if not match:
        raise ConfigurationError(f"--older-than {text!r}: write a number and s, m, h or d (6h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _open_repos(repos: Sequence[str]) -> dict[str, icechunk.Repository]:
    import icechunk

    opened = {}
    for url in repos:
        try:
            opened[url] = icechunk.Repository.open(icechunk_storage(url))
        except icechunk.IcechunkError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigurationError(f"--repo {url}: cannot open the repository: {first}") from exc
    return opened


def _clean(
    url: str, *, job: str | None, older_than: float | None, repos: Sequence[str], out: IO[str]
) -> tuple[list[str], list[str]]:
    if (job is None) == (older_than is None):
        raise ConfigurationError("give exactly one of --job NAME or --older-than AGE")
    jobs = list_jobs(url)
    opened = _open_repos(repos)
    branches = {r: set(temporary_branches(repo)) for r, repo in opened.items()}
    if job is not None:
        matches = find_jobs(set(jobs).union(*branches.values()), job)
        if len(matches) > 1:
            raise ConfigurationError(
                f"--job {job!r} matches {len(matches)} jobs: {', '.join(matches)}; "
                "give the id of the one to remove"
            )
        chosen = [m for m in matches if m in jobs]
        if not chosen:
            out.write(f"job {job!r}: nothing at {url}\n")
        doomed = {r: set(matches) for r in repos}
    else:
        assert older_than is not None
        cutoff = time.time() - older_than
        chosen = sorted(j for j, listing in jobs.items() if (listing.newest or 0) < cutoff)
        if not chosen:
            out.write(f"no job at {url} has been idle that long\n")
        live = set(jobs) - set(chosen)
        doomed = {r: found - live for r, found in branches.items()}
    for job_id in chosen:
        out.write(f"removed {remove_job(url, job_id)}\n")
    deleted = []
    for repo_url, repo in opened.items():
        for branch in delete_temporary_branches(repo, doomed[repo_url]):
            out.write(f"deleted branch {branch} in {repo_url}\n")
            deleted.append(branch)
    return chosen, deleted


def clean(
    url: str,
    *,
    job: str | None,
    older_than: float | None,
    repos: Sequence[str],
    out: IO[str],
) -> list[str]:
    """Remove rendezvous namespaces (and their temporary branches in ``repos``).

    ``job`` (an id, or a name matching one id ``<name>-...`` in the
    rendezvous or among the repos' temporary branches) removes that job;
    ``older_than`` every job idle that long, and in ``repos`` the temporary
    branches of every job not left in the rendezvous. Returns the job ids
    whose namespace was removed. Raises like ``status``.
    """
    return _clean(url, job=job, older_than=older_than, repos=repos, out=out)[0]


def cmd_clean(args: argparse.Namespace) -> int:
    """Exit codes as ``status``: 0 done, 1 no such job (or no answer), 2 a missing bucket."""
    older = parse_age(args.older_than) if args.older_than else None

    def run() -> int:
        removed, deleted = _clean(
            args.url, job=args.job, older_than=older, repos=args.repo, out=sys.stdout
        )
        return 1 if args.job is not None and not removed and not deleted else 0

    return storage_errors("clean", run)
