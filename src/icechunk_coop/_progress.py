"""Which worker is in which step, read from the blobs a job already writes.

No worker reports its progress: the rendezvous says enough. Worker 0 is in
``setup`` until the setup is out, the others wait for it; then every worker
is in ``work`` until its result is out; the last worker then waits for the
others' results until it pins the plan, and commits. Failure markers and
the committed marker end it. With the job's secret the sealed setup and
results are opened too (once each): the setup for the worker count and the
whole job list, a result for its timeline and how many region jobs it did.

This is the read model behind ``status --watch``, the live view of
``run-local`` and ``report``; it imports no terminal or plotting library.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from icechunk_coop._errors import ConfigurationError, PayloadError
from icechunk_coop._markers import Committed
from icechunk_coop._payload import SECRET_ENV, Sealer
from icechunk_coop._records import PLAN, SETUP, Result, Setup, failure_name, result_name
from icechunk_coop._rendezvous import Rendezvous
from icechunk_coop._status import JobListing, JobState, find_jobs, list_jobs, read_job
from icechunk_coop._timeline import Timeline

__all__ = ["JobProgress", "ProgressReader", "WorkerProgress"]


# The steps a worker is seen in, in the order a job goes through them.
_ORDER = ("waiting for setup", "setup", "work", "published", "wait", "commit", "done", "failed")


@attrs.frozen(kw_only=True)
class WorkerProgress:
    """One worker's step as the blobs show it; ``region_jobs`` once its result is read."""

    index: int
    step: str
    region_jobs: int | None = None
    detail: str = ""


@attrs.frozen(kw_only=True)
class JobProgress:
    """A job at one moment: its state, each worker's step, when it began and last moved.

    ``workers_total`` is None until something says it (the setup with the
    secret, the committed marker, or a result beyond the others);
    ``region_jobs_total`` is the pinned job list's length where one was pinned.
    """

    job_id: str
    state: JobState
    workers_total: int | None
    workers: tuple[WorkerProgress, ...]
    first_seen: float | None
    last_activity: float | None
    region_jobs_total: int | None = None
    committed: Committed | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("committed", "failed")

    @property
    def region_jobs_done(self) -> int | None:
        counts = [w.region_jobs for w in self.workers if w.region_jobs is not None]
        return sum(counts) if counts else None

    def counts(self) -> dict[str, int]:
        """How many workers are in each step, in the order steps happen."""
        found: dict[str, int] = {}
        for worker in self.workers:
            found[worker.step] = found.get(worker.step, 0) + 1
        return {step: found[step] for step in _ORDER if step in found}

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds the job has run: since its first blob, or how long it took once it ended.

        A committed job's blobs are cleaned up, so its time comes from the
        committed marker's timeline (None for a marker without one).
        """
        committed = self.committed
        if self.state == "committed":
            if committed is None or not committed.timeline:
                return None
            spans = [span for steps in committed.timeline.values() for span in steps.values()]
            return max(e for _, e in spans) - min(b for b, _ in spans)
        if self.first_seen is None:
            return None
        end = self.last_activity if self.finished else None
        return max(0.0, (end or (time.time() if now is None else now)) - self.first_seen)


def _count(value: Any) -> int | None:
    """Region jobs done, from a result: ``run_region_jobs`` returns one item per job."""
    return len(value) if isinstance(value, list | tuple) else None


@attrs.define
class ProgressReader:
    """Reads one job's progress again and again, opening each sealed blob once.

    ``job`` is a job id or a name matching exactly one id; a name matching
    several is refused with the ids, a job not there yet reads as None.
    """

    url: str
    job: str
    secret: str | None = attrs.field(repr=False, default=None)
    workers_total: int | None = None
    storage_options: Mapping[str, Any] | None = None
    _job_id: str | None = attrs.field(default=None, init=False)
    _setup: Setup | None = attrs.field(default=None, init=False, repr=False)
    _results: dict[int, Result] = attrs.field(factory=dict, init=False, repr=False)
    _first_seen: float | None = attrs.field(default=None, init=False)
    _unreadable: set[str] = attrs.field(factory=set, init=False, repr=False)

    @property
    def job_id(self) -> str | None:
        return self._job_id

    def _listing(self) -> JobListing | None:
        jobs = list_jobs(self.url, self.storage_options)
        if self._job_id is None:
            matches = find_jobs(jobs, self.job)
            if len(matches) > 1:
                raise ConfigurationError(
                    f"job {self.job!r} matches {len(matches)} jobs at {self.url}: "
                    f"{', '.join(matches)}; give the id of one"
                )
            if not matches:
                return None
            self._job_id = matches[0]
        return jobs.get(self._job_id)

    def _rendezvous(self, job_id: str) -> Rendezvous:
        sealer = Sealer(job_id=job_id, secret=self.secret.encode() if self.secret else None)
        return Rendezvous.for_job(
            self.url, job_id=job_id, sealer=sealer, storage_options=self.storage_options
        )

    def _load(self, rv: Rendezvous, name: str) -> Any | None:
        """A sealed blob's record wire, or None (absent, refused, or not ours to unpickle)."""
        if name in self._unreadable:
            return None
        try:
            return rv.read(name, content="pickle")  # authenticated before unpickling
        except PayloadError:
            return None  # a wrong secret, or a blob being replaced: the names still say a lot
        except Exception:  # a value of a class only the workers can import (their __main__)
            self._unreadable.add(name)
            return None

    def _open(self, listing: JobListing) -> None:
        """Open (once each) the setup and the results that arrived, if the secret allows."""
        if not self.secret:
            return
        rv = self._rendezvous(listing.job_id)
        try:
            if self._setup is None and SETUP in listing.names:
                wire = self._load(rv, SETUP)
                self._setup = None if wire is None else Setup.from_wire(wire, rv.location(SETUP))
            for index, state in listing.workers().items():
                if state == "arrived" and index not in self._results:
                    name = result_name(index)
                    wire = self._load(rv, name)
                    if wire is not None:
                        self._results[index] = Result.from_wire(wire, rv.location(name))
        except PayloadError:
            pass  # a record of another version: show what the names say

    def read(self) -> JobProgress | None:
        """The job now, or None if nothing of it is there (yet, or any more)."""
        listing = self._listing()
        if listing is None:
            return None
        self._open(listing)
        if self._first_seen is None or (listing.oldest or 0) < self._first_seen:
            self._first_seen = listing.oldest
        total = self.workers_total or (self._setup.workers_total if self._setup else None)
        status = read_job(
            self.url,
            listing,
            secret=self.secret,  # with the total given, only the JSON markers are opened
            workers_total=total,
            storage_options=self.storage_options,
        )
        total = status.workers_total  # given, else the committed marker's, else inferred
        details = {w.index: w.detail for w in status.workers}
        workers = tuple(
            WorkerProgress(
                index=i,
                step=_step(listing, i, total or 0),
                region_jobs=_count(self._results[i].value) if i in self._results else None,
                detail=details.get(i, ""),
            )
            for i in range(total or 0)
        )
        decision = self._setup.decision if self._setup else None
        return JobProgress(
            job_id=listing.job_id,
            state=listing.state,
            workers_total=total,
            workers=workers,
            first_seen=self._first_seen,
            last_activity=listing.newest,
            region_jobs_total=len(decision) if isinstance(decision, Sequence) else None,
            committed=status.committed,
        )

    def timeline(self, progress: JobProgress) -> Timeline:
        """Every worker's steps: the committed marker's, else the results read so far."""
        committed = progress.committed
        if committed is not None and committed.timeline:
            steps: Mapping[int, Mapping[str, tuple[float, float]]] = committed.timeline
        else:
            steps = {i: r.timeline for i, r in self._results.items() if r.timeline}
        if not steps:
            what = "committed marker" if progress.state == "committed" else "results"
            if committed is not None:
                why = "its committed marker keeps no timeline (an older version wrote it)"
            elif not self.secret:
                why = f"set {SECRET_ENV} to the job's secret to read its {what}"
            else:
                why = f"its {what} could not be read (a wrong secret, or none published yet)"
            raise ConfigurationError(f"job {progress.job_id}: no steps to show: {why}")
        return Timeline.from_steps(progress.job_id, steps, workers_total=progress.workers_total)


def _step(listing: JobListing, index: int, total: int) -> str:
    """Worker ``index``'s step, from the names alone (see the module's docstring)."""
    names = listing.names
    if listing.state == "committed":
        return "done"
    if result_name(index) in names:
        if index != total - 1:
            return "published"
        return "commit" if PLAN in names else "wait"
    if failure_name(result_name(index)) in names:
        return "failed"
    if SETUP not in names:
        return "setup" if index == 0 else "waiting for setup"
    return "work"
