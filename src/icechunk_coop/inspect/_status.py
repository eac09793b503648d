"""A job's state read from its blobs: the read model behind ``icechunk-coop status`` and ``clean``.

Listing costs one recursive LIST and opens nothing. Reading one job opens
only JSON records (failure markers, the committed marker) unless the
job's secret is given, and then the setup's authenticated header too (the
worker total, the job's deadline, the icechunk version): a reader never
unpickles anything of the user's. Only a setup sealed before setups had a
header is unpickled (with the secret, after it authenticates), and when that
fails the reason is reported, never read as "no setup".

What the blobs prove beyond their names (the setup's claims, a job
stopped or failed) is ``_evidence``'s to read; this adds the listing, the
worker total and the workers never seen.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import attrs

from icechunk_coop.errors import (
    CoopError,
    MissingLocationError,
    PayloadError,
    StorageUnreachableError,
)
from icechunk_coop.inspect._evidence import (
    JobState,
    SetupRead,
    marker,
    read_setup,
    unreadable,
    verdict_of,
)
from icechunk_coop.rendezvous._blobs import BlobStore
from icechunk_coop.rendezvous._locations import (
    TMP_MARK,
    check_name,
    filesystem,
    normalise_url,
    protocol_of,
)
from icechunk_coop.rendezvous._rendezvous import Rendezvous
from icechunk_coop.wire._markers import Committed, Failure
from icechunk_coop.wire._payload import Sealer
from icechunk_coop.wire._records import (
    COMMITTED,
    FAILED_SUFFIX,
    SETUP,
    failure_name,
    index_of_result,
    result_name,
)

__all__ = [
    "JobListing",
    "JobState",
    "JobStatus",
    "WorkerState",
    "check_reachable",
    "find_jobs",
    "list_jobs",
    "read_job",
]

TotalSource = Literal["setup", "committed", "given", "inferred", "unknown"]


def _modified(info: Mapping[str, Any]) -> float | None:
    """Last-modified time of an fsspec ``info`` entry, whichever backend wrote it."""
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


@attrs.frozen(kw_only=True)
class JobListing:
    """What a rendezvous holds for one job, from one listing (nothing is opened)."""

    job_id: str
    names: frozenset[str]
    newest: float | None
    #: The oldest blob's time: about when the job began (its first worker published).
    oldest: float | None = None

    @property
    def state(self) -> JobState:
        if COMMITTED in self.names:
            return "committed"
        if any(n.endswith(FAILED_SUFFIX) for n in self.names):
            return "failed"
        if SETUP in self.names:
            return "running"
        return "waiting for setup"

    @property
    def setup_published(self) -> bool:
        """Worker 0 published the setup (and the namespace still holds it)."""
        return SETUP in self.names

    @property
    def setup_failed(self) -> bool:
        """Worker 0 left a failure marker instead of the setup."""
        return failure_name(SETUP) in self.names

    def workers(self) -> dict[int, Literal["arrived", "failed"]]:
        """Worker indexes with a result or a failure marker (a marker wins).

        A worker withdraws its own failure marker when it starts again, so a
        marker beside a result says the worker failed after publishing it:
        the last worker, whose merge or commit failed (an overlap, say).
        """
        found: dict[int, Literal["arrived", "failed"]] = {}
        for name in self.names:
            index = index_of_result(name)
            if index is None:
                continue
            if name.endswith(FAILED_SUFFIX):
                found[index] = "failed"
            else:
                found.setdefault(index, "arrived")
        return found


def check_reachable(root_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse a rendezvous whose bucket does not exist or whose endpoint does not answer.

    Without this a typo in the bucket reads as "no jobs". The probe retries
    less than a worker would: someone is waiting for the answer.
    """
    url = normalise_url(root_url)
    probe = dict(storage_options or {})
    if protocol_of(url) in {"s3", "s3a"} and "config_kwargs" not in probe:
        probe["config_kwargs"] = {"retries": {"total_max_attempts": 2, "mode": "standard"}}
    try:
        BlobStore(url=url, storage_options=probe).check_reachable()
    except CoopError:
        raise
    except Exception as exc:  # botocore's connection errors are not OSErrors
        raise StorageUnreachableError(url=url, detail=str(exc)[:300]) from exc


def list_jobs(
    root_url: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, JobListing]:
    """Every job namespace under ``root_url``, from one recursive listing.

    Raises ``MissingLocationError`` if the bucket does not exist (or access
    is denied), ``StorageUnreachableError`` if the storage does not answer.
    """
    check_reachable(root_url, storage_options)
    url = normalise_url(root_url)
    fs, root = filesystem(url, storage_options)
    fs.invalidate_cache(root)
    try:
        entries = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    except PermissionError as exc:
        raise MissingLocationError(
            url=url, role="the rendezvous", detail=f"access denied ({exc})"
        ) from exc
    except OSError as exc:
        raise StorageUnreachableError(url=url, detail=str(exc)[:300]) from exc
    grouped: dict[str, list[tuple[str, float | None]]] = {}
    for path, info in entries.items():
        rel = str(path).rstrip("/")[len(root) :].strip("/")
        if "/" not in rel:
            continue
        job_id, name = rel.split("/", 1)
        if TMP_MARK in name or "/" in name:
            continue
        grouped.setdefault(job_id, []).append((name, _modified(info)))
    return {
        job_id: JobListing(
            job_id=job_id,
            names=frozenset(n for n, _ in items),
            newest=max((m for _, m in items if m is not None), default=None),
            oldest=min((m for _, m in items if m is not None), default=None),
        )
        for job_id, items in grouped.items()
    }


def find_jobs(job_ids: Iterable[str], job: str) -> list[str]:
    """The job ids ``job`` stands for: itself if it is one, else every ``<job>-<uid>``.

    A Job is created by name; its rendezvous namespace adds the uid. So a
    name finds the runs of every Job created under it (several when it was
    re-created, or for a CronJob's prefix): the caller says which it means.
    """
    ids = set(job_ids)
    if job in ids:
        return [job]
    return sorted(j for j in ids if j.startswith(f"{job}-"))


@attrs.frozen(kw_only=True)
class WorkerState:
    """One worker as its blobs show it.

    ``missing``: no result and no failure marker (yet); ``seen`` tells
    whether anything of the index is there at all (worker 0's setup counts).
    """

    index: int
    state: Literal["arrived", "failed", "missing"]
    detail: str = ""
    seen: bool = True


@attrs.frozen(kw_only=True)
class JobStatus:
    """One job as its blobs show it.

    ``workers_total`` comes from the committed marker or the setup's
    header (read only with the job's secret), else is the one given, else is
    inferred from the highest worker seen; ``total_source`` says which. A
    committed job lists only the workers whose blobs are still there (the
    commit cleans them up); ``committed`` is what it committed, when
    readable, and ``committed_error`` says why not. ``state`` is what the
    blobs prove (see the module's docstring), ``why`` the reason for a
    ``stopped`` or ``failed`` one.
    """

    listing: JobListing
    workers_total: int | None
    total_source: TotalSource
    workers: tuple[WorkerState, ...]
    state: JobState
    why: str | None = None
    committed: Committed | None = None
    committed_error: str | None = None
    setup: SetupRead = attrs.field(factory=SetupRead)

    @property
    def job_id(self) -> str:
        return self.listing.job_id

    @property
    def never_seen(self) -> tuple[int, ...]:
        """Indexes below the total with nothing in the rendezvous (no result, no marker)."""
        return tuple(w.index for w in self.workers if not w.seen)

    @property
    def committer_missing(self) -> bool:
        """The committing index (the last) has never been seen: nothing can commit yet."""
        total = self.workers_total
        return total is not None and (total - 1) in self.never_seen

    @property
    def stops_short(self) -> bool:
        """The indexes seen end below the last one (a Job of fewer pods than WORKERS_TOTAL?)."""
        seen = [w.index for w in self.workers if w.seen]
        total = self.workers_total
        return bool(seen) and total is not None and max(seen) < total - 1


def _committed(rv: Rendezvous, listing: JobListing) -> tuple[Committed | None, str | None]:
    if COMMITTED not in listing.names:
        return None, None
    try:
        wire = rv.read(COMMITTED)  # JSON: never unpickles
        if wire is None:
            return None, "(removed while reading it)"
        return Committed.from_wire(wire, rv.location(COMMITTED)), None
    except PayloadError as exc:
        return None, unreadable(exc, rv)


def read_job(
    root_url: str,
    listing: JobListing,
    *,
    secret: str | None,
    workers_total: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    setup: SetupRead | None = None,
    now: float | None = None,
) -> JobStatus:
    """The state of the job ``listing`` describes; its workers from the setup when possible.

    Without ``secret`` only JSON records are opened (and, sealed, refused):
    nothing is ever unpickled. With it the setup's header is read, after its
    frame authenticates, for the worker total and the deadline (``setup``:
    what the caller read already). ``now`` (Unix seconds) is compared with
    the deadline.
    """
    check_name(listing.job_id)
    sealer = Sealer(job_id=listing.job_id, secret=secret.encode() if secret else None)
    rv = Rendezvous.for_job(
        root_url, job_id=listing.job_id, sealer=sealer, storage_options=storage_options
    )
    committed, committed_error = _committed(rv, listing)
    if setup is None:
        setup = read_setup(rv) if secret and SETUP in listing.names else SetupRead()
    seen = listing.workers()
    total: int | None = workers_total
    source: TotalSource = "given"
    if total is None and committed is not None and committed.workers_total is not None:
        total, source = committed.workers_total, "committed"
    if total is None and setup.header is not None:
        total, source = setup.header.workers_total, "setup"
    if total is None:
        total, source = (max(seen) + 1, "inferred") if seen else (None, "unknown")
    markers = {
        name: marker(rv, name.removesuffix(FAILED_SUFFIX))
        for name in sorted(listing.names)
        if name.endswith(FAILED_SUFFIX)
    }
    workers = []
    for index in range(total or 0):
        state: Literal["arrived", "failed", "missing"] = seen.get(index, "missing")
        if listing.state == "committed" and state == "missing":
            continue  # results are cleaned up after the commit
        detail = ""
        if state == "failed":
            found = markers.get(failure_name(result_name(index)))
            detail = found.summary[:100] if isinstance(found, Failure) else found or ""
        by_setup = index == 0 and (listing.setup_published or listing.setup_failed)
        if state == "missing" and by_setup:
            detail = "published the setup" if listing.setup_published else "setup failed"
        seen_here = state != "missing" or by_setup
        workers.append(WorkerState(index=index, state=state, detail=detail, seen=seen_here))
    verdict, why = verdict_of(listing.state, markers, setup, time.time() if now is None else now)
    return JobStatus(
        listing=listing,
        workers_total=total,
        total_source=source,
        workers=tuple(workers),
        state=verdict,
        why=why,
        committed=committed,
        committed_error=committed_error,
        setup=setup,
    )
