"""What the operator sees of a running job, as data; and the plain view for logs.

A :class:`Snapshot` joins what the rendezvous says (each worker's step,
region jobs done) with what ``run-local`` knows of its processes (pid,
attempt, exit) and the clock (elapsed, time left before ``--timeout``).
:func:`rows` and :func:`headline` turn it into words once, for both views:
the live one in a terminal (``_live``, with rich) and :class:`LineView`,
which writes a log line only when something changed, for output that is
a file or a pipe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Literal, Protocol

import attrs

if TYPE_CHECKING:
    from icechunk_coop.inspect import JobProgress

from icechunk_coop.cli._words import describe_exit, plural

__all__ = [
    "LineView",
    "ProcessView",
    "RegionCount",
    "Row",
    "Snapshot",
    "View",
    "clock",
    "headline",
    "region_jobs_from_line",
    "rows",
    "summary",
]

ProcessState = Literal["starting", "running", "restarting", "succeeded", "failed", "stopped"]

# run_region_jobs logs "worker 1/4: 3 of 10 region jobs" and "worker 1/4: 2/3 done, ...":
# the only live count of region jobs there is, read from the worker's own output.
_SHARE = re.compile(r"worker (\d+)/\d+: (\d+) of (\d+) region jobs?\b")
_DONE = re.compile(r"worker (\d+)/\d+: (\d+)/(\d+) done\b")


# How a count of workers in each step reads: "3 working, 1 waiting for results".
_DOING = {
    "waiting for setup": "waiting for the setup",
    "setup": "setting up",
    "work": "working",
    "wait": "waiting for results",
    "commit": "committing",
}


@attrs.frozen(kw_only=True)
class RegionCount:
    """One worker's region jobs: done of its share, and of the whole list where said."""

    worker: int
    done: int
    share: int
    total: int | None = None


def region_jobs_from_line(text: str) -> RegionCount | None:
    """What a ``run_region_jobs`` progress line says, else None."""
    if (found := _DONE.search(text)) is not None:
        return RegionCount(worker=int(found[1]), done=int(found[2]), share=int(found[3]))
    if (found := _SHARE.search(text)) is not None:
        return RegionCount(worker=int(found[1]), done=0, share=int(found[2]), total=int(found[3]))
    return None


@attrs.frozen(kw_only=True)
class ProcessView:
    """One index's process, as ``run-local`` runs it."""

    state: ProcessState
    attempt: int = 0
    pid: int | None = None
    code: int | None = None

    def words(self) -> str:
        again = f", attempt {self.attempt}" if self.attempt > 1 else ""
        if self.state == "running":
            return f"running (pid {self.pid}{again})"
        if self.state in ("failed", "restarting", "stopped") and self.code is not None:
            return f"{self.state}: {describe_exit(self.code)}"
        return self.state


@attrs.frozen(kw_only=True)
class Snapshot:
    """A job at one moment, from every source there is; any of them may be missing."""

    job_id: str
    progress: JobProgress | None = None
    processes: Mapping[int, ProcessView] = attrs.field(factory=dict)
    region_jobs: Mapping[int, RegionCount] = attrs.field(factory=dict)
    elapsed: float | None = None
    timeout: float | None = None
    note: str = ""

    @property
    def workers_total(self) -> int:
        known = self.progress.workers_total if self.progress else None
        return max(known or 0, len(self.processes), max(self.region_jobs, default=-1) + 1)


@attrs.frozen(kw_only=True)
class Row:
    """One worker's line in the view."""

    index: int
    step: str
    region_jobs: str
    process: str
    detail: str


def clock(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def rows(snap: Snapshot) -> list[Row]:
    """One row per worker, each cell from whichever source knows it (or left empty)."""
    workers = {w.index: w for w in snap.progress.workers} if snap.progress else {}
    found = []
    for index in range(snap.workers_total):
        worker = workers.get(index)
        process = snap.processes.get(index)
        live = snap.region_jobs.get(index)
        if live is not None:
            jobs = f"{live.done}/{live.share}"
        elif worker is not None and worker.region_jobs is not None:
            jobs = str(worker.region_jobs)
        else:
            jobs = ""
        found.append(
            Row(
                index=index,
                step=worker.step if worker else "",
                region_jobs=jobs,
                process=process.words() if process else "",
                detail=worker.detail if worker else "",
            )
        )
    return found


def _region_jobs(snap: Snapshot) -> str | None:
    """``region jobs 7/12 done``: the workers' own counts, else their published results'."""
    workers = {w.index: w for w in snap.progress.workers} if snap.progress else {}
    done: list[int] = []
    for index in range(snap.workers_total):
        live, worker = snap.region_jobs.get(index), workers.get(index)
        if live is not None:
            done.append(live.done)
        elif worker is not None and worker.region_jobs is not None:
            done.append(worker.region_jobs)
    if not done:
        return None
    total = snap.progress.region_jobs_total if snap.progress else None
    total = total or next((c.total for c in snap.region_jobs.values() if c.total), None)
    return (
        f"region jobs {sum(done)}/{total} done"
        if total
        else f"{plural(sum(done), 'region job')} done"
    )


def summary(snap: Snapshot, *, counts: bool = True) -> str:
    """The job's state and how many workers are in each step, without the clock.

    ``counts=False`` leaves out the region jobs done: what the plain view
    compares, so that it writes a line per step, not per region job.
    """
    parts = [f"job {snap.job_id}"]
    progress = snap.progress
    if progress is None:
        parts.append("nothing in the rendezvous yet" if snap.processes == {} else "starting")
    else:
        parts.append(progress.state)
        doing = ", ".join(f"{n} {_DOING.get(s, s)}" for s, n in progress.counts().items())
        if doing and progress.state != "committed":
            parts.append(doing)
    if counts and (jobs := _region_jobs(snap)) is not None:
        parts.append(jobs)
    failed = [i for i, p in sorted(snap.processes.items()) if p.state in ("failed", "restarting")]
    if failed:
        parts.append("; ".join(f"worker {i} {snap.processes[i].words()}" for i in failed))
    if snap.note:
        parts.append(snap.note)
    return ": ".join(parts[:2]) + "".join(f"; {p}" for p in parts[2:])


def headline(snap: Snapshot) -> str:
    """:func:`summary` with the clock: elapsed, and time left before the deadline."""
    text = summary(snap)
    if snap.elapsed is not None and snap.progress is not None and snap.progress.finished:
        text += f" · took {clock(snap.elapsed)}"
    elif snap.elapsed is not None:
        text += f" · {clock(snap.elapsed)} elapsed"
        if snap.timeout is not None:
            left = max(0.0, snap.timeout - snap.elapsed)
            text += f", {clock(left)} left of {clock(snap.timeout)}"
    return text


class View(Protocol):
    """Where snapshots go; ``out`` takes other lines (workers' output) while it shows."""

    @property
    def out(self) -> IO[str]: ...

    def update(self, snap: Snapshot) -> None: ...

    def close(self) -> None: ...


class LineView:
    """For a file or a pipe: one line each time the job's summary changes, no colours."""

    def __init__(self, stream: IO[str], *, prefix: str = "", lines: IO[str] | None = None) -> None:
        self._stream, self._prefix, self._last = stream, prefix, ""
        self._lines = lines or stream

    @property
    def out(self) -> IO[str]:
        return self._lines

    def update(self, snap: Snapshot) -> None:
        key = summary(snap, counts=False)
        if key != self._last:
            self._last, text = key, summary(snap)
            finished = snap.progress is not None and snap.progress.finished
            when = ""
            if snap.elapsed is not None:
                how = "took {}" if finished else "{} elapsed"
                when = f" ({how.format(clock(snap.elapsed))})"
            self._stream.write(f"{self._prefix}{text}{when}\n")
            self._stream.flush()

    def close(self) -> None:
        """Nothing to tear down: every line is out already."""
