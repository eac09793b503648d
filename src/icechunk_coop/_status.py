"""A job's state read from its blobs: the read model behind ``icechunk-coop status`` and ``clean``.

Listing costs one recursive LIST and opens nothing. Reading one job opens
only JSON records (failure markers, the committed marker) unless the
job's secret is given, and then the setup too (for the worker count): a
reader without the secret never unpickles anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import attrs

from icechunk_coop._blobs import BlobStore
from icechunk_coop._errors import (
    CoopError,
    MissingLocationError,
    PayloadAuthenticationError,
    PayloadError,
    StorageUnreachableError,
)
from icechunk_coop._locations import TMP_MARK, check_name, filesystem, normalise_url, protocol_of
from icechunk_coop._markers import Committed, Failure
from icechunk_coop._payload import SECRET_ENV, Sealer
from icechunk_coop._records import (
    COMMITTED,
    FAILED_SUFFIX,
    SETUP,
    Setup,
    failure_name,
    index_of_result,
    result_name,
)
from icechunk_coop._rendezvous import Rendezvous

__all__ = [
    "JobListing",
    "JobStatus",
    "WorkerState",
    "check_reachable",
    "find_jobs",
    "list_jobs",
    "read_job",
]

JobState = Literal["committed", "failed", "running", "waiting for setup"]
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
        """Worker indexes with a result or a failure marker (a result wins)."""
        found: dict[int, Literal["arrived", "failed"]] = {}
        for name in self.names:
            index = index_of_result(name)
            if index is None:
                continue
            if not name.endswith(FAILED_SUFFIX):
                found[index] = "arrived"
            else:
                found.setdefault(index, "failed")
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
    """One worker as its blobs show it."""

    index: int
    state: Literal["arrived", "failed", "missing"]
    detail: str = ""


@attrs.frozen(kw_only=True)
class JobStatus:
    """One job as its blobs show it.

    ``workers_total`` comes from the committed marker or the setup (read
    only with the job's secret), else is the one given, else is inferred
    from the highest worker seen; ``total_source`` says which. A committed
    job lists only the workers whose blobs are still there (the commit
    cleans them up); ``committed`` is what it committed, when readable,
    and ``committed_error`` says why not.
    """

    listing: JobListing
    workers_total: int | None
    total_source: TotalSource
    workers: tuple[WorkerState, ...]
    committed: Committed | None = None
    committed_error: str | None = None

    @property
    def job_id(self) -> str:
        return self.listing.job_id

    @property
    def state(self) -> JobState:
        return self.listing.state


def _unreadable(exc: PayloadError, rv: Rendezvous) -> str:
    if isinstance(exc, PayloadAuthenticationError):
        if rv.sealer.authenticated:  # a secret was given, and it is not the one that sealed it
            return f"(sealed with another secret than the {SECRET_ENV} given: not this job's)"
        return f"(sealed: set {SECRET_ENV} to the job's secret to read it)"
    return f"(refused: {exc.reason[:80]})"


def _failure(rv: Rendezvous, name: str) -> str:
    try:
        wire = rv.read(failure_name(name))  # JSON: never unpickles
        marker = None if wire is None else Failure.from_wire(wire, rv.location(name))
    except PayloadError as exc:
        return _unreadable(exc, rv)
    return "" if marker is None else marker.summary[:100]


def _committed(rv: Rendezvous, listing: JobListing) -> tuple[Committed | None, str | None]:
    if COMMITTED not in listing.names:
        return None, None
    try:
        wire = rv.read(COMMITTED)  # JSON: never unpickles
        if wire is None:
            return None, "(removed while reading it)"
        return Committed.from_wire(wire, rv.location(COMMITTED)), None
    except PayloadError as exc:
        return None, _unreadable(exc, rv)


def _setup_total(rv: Rendezvous, listing: JobListing) -> int | None:
    if SETUP not in listing.names:
        return None
    try:
        wire = rv.read(SETUP, content="pickle")  # authenticated before unpickling
        return None if wire is None else Setup.from_wire(wire, rv.location(SETUP)).workers_total
    except PayloadError:
        return None
    except Exception:  # worker 0's decision holds a class only the workers import (__main__)
        return None


def read_job(
    root_url: str,
    listing: JobListing,
    *,
    secret: str | None,
    workers_total: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> JobStatus:
    """The state of the job ``listing`` describes; its workers from the setup when possible.

    Without ``secret`` only JSON records are opened (and, sealed, refused):
    nothing is ever unpickled. With it the setup is opened for the worker
    count, after its frame authenticates.
    """
    check_name(listing.job_id)
    sealer = Sealer(job_id=listing.job_id, secret=secret.encode() if secret else None)
    rv = Rendezvous.for_job(
        root_url, job_id=listing.job_id, sealer=sealer, storage_options=storage_options
    )
    committed, committed_error = _committed(rv, listing)
    seen = listing.workers()
    total: int | None = workers_total
    source: TotalSource = "given"
    if total is None and committed is not None and committed.workers_total is not None:
        total, source = committed.workers_total, "committed"
    if total is None and secret:
        total, source = _setup_total(rv, listing), "setup"
    if total is None:
        total, source = (max(seen) + 1, "inferred") if seen else (None, "unknown")
    workers = []
    for index in range(total or 0):
        state: Literal["arrived", "failed", "missing"] = seen.get(index, "missing")
        if listing.state == "committed" and state == "missing":
            continue  # results are cleaned up after the commit
        detail = _failure(rv, result_name(index)) if state == "failed" else ""
        workers.append(WorkerState(index=index, state=state, detail=detail))
    return JobStatus(
        listing=listing,
        workers_total=total,
        total_source=source,
        workers=tuple(workers),
        committed=committed,
        committed_error=committed_error,
    )
