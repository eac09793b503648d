"""Which worker is in which step, read from the blobs a job already writes.

No worker reports its progress: the rendezvous says enough. Worker 0 is in
``setup`` until the setup is out, the others wait for it; then every worker
is in ``work`` until its result is out; the last worker then waits for the
others' results until it pins the plan, and commits. Failure markers and
the committed marker end it. With the job's secret the sealed setup and
results are opened too (once each): the setup's header for the worker
count and the deadline, its body for the whole job list, a result for its
timeline and how many region jobs it did. A blob that cannot be opened
(another secret, another icechunk version, truncated, a class only the
workers import) is remembered with its reason, and said where it matters
(``timeline``), never read as "not published".

This is the read model behind ``status --watch``, the live view of
``run-local`` and ``report``; it imports no terminal or plotting library.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from icechunk_coop.errors import ConfigurationError, PayloadError
from icechunk_coop.inspect._evidence import JobState, SetupRead, read_setup
from icechunk_coop.inspect._status import JobListing, find_jobs, list_jobs, read_job
from icechunk_coop.inspect._timeline import Timeline
from icechunk_coop.rendezvous._rendezvous import Rendezvous
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._payload import SECRET_ENV, Sealer
from icechunk_coop.wire._records import PLAN, SETUP, Result, Setup, failure_name, result_name

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
    #: Why the job is ``stopped`` or ``failed``, when the blobs say.
    why: str | None = None

    @property
    def finished(self) -> bool:
        """Nothing more will happen by itself: committed, failed, or stopped."""
        return self.state in ("committed", "failed", "stopped")

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
    _header: SetupRead | None = attrs.field(default=None, init=False, repr=False)
    _results: dict[int, Result] = attrs.field(factory=dict, init=False, repr=False)
    _first_seen: float | None = attrs.field(default=None, init=False)
    #: Blob name -> why it could not be opened (read once; said by ``timeline``).
    _unreadable: dict[str, str] = attrs.field(factory=dict, init=False, repr=False)

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
        """A sealed blob's record wire, or None (absent, or refused: the reason is kept).

        A blob refused once is not read again: a wrong secret or another
        icechunk version does not fix itself between two polls.
        """
        if name in self._unreadable:
            return None
        try:
            return rv.read(name, content="pickle")  # authenticated before unpickling
        except PayloadError as exc:  # another secret, another icechunk version, truncated
            self._unreadable[name] = f"{name}: {exc.reason}"
        except Exception as exc:  # unpickling a user's value: any class's own error
            self._unreadable[name] = (
                f"{name}: does not unpickle here ({type(exc).__name__}: {str(exc)[:120]}); "
                "it may hold a class only the workers import"
            )
        return None

    def _record[R: (Setup, Result)](self, rv: Rendezvous, name: str, kind: type[R]) -> R | None:
        wire = self._load(rv, name)
        if wire is None:
            return None
        try:
            return kind.from_wire(wire, rv.location(name))
        except PayloadError as exc:  # a record of another icechunk-coop version
            self._unreadable[name] = f"{name}: {exc.reason}"
            return None

    def _open(self, listing: JobListing) -> None:
        """Open (once each) the setup and the results that arrived, if the secret allows."""
        if not self.secret:
            return
        rv = self._rendezvous(listing.job_id)
        if SETUP in listing.names:
            if self._header is None or self._header.header is None:
                self._header = read_setup(rv)
            if self._setup is None:
                self._setup = self._record(rv, SETUP, Setup)
        for index, state in listing.workers().items():
            if state == "arrived" and index not in self._results:
                result = self._record(rv, result_name(index), Result)
                if result is not None:
                    self._results[index] = result

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
            secret=self.secret,  # the setup's header was read above, once: only JSON here
            workers_total=total,
            storage_options=self.storage_options,
            setup=self._header or SetupRead(),
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
            state=status.state,
            workers_total=total,
            workers=workers,
            first_seen=self._first_seen,
            last_activity=listing.newest,
            region_jobs_total=len(decision) if isinstance(decision, Sequence) else None,
            committed=status.committed,
            why=status.why,
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
            refused = [why for _, why in sorted(self._unreadable.items())]
            if committed is not None:
                why = "its committed marker keeps no timeline (an older version wrote it)"
            elif not self.secret:
                why = f"set {SECRET_ENV} to the job's secret to read its {what}"
            elif refused:
                why = "what it published could not be opened: " + "; ".join(refused[:3])
            else:
                why = f"no worker has published its {what} yet"
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
