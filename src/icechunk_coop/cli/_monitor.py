"""run-local's view of its job: its processes, the rendezvous, the workers' own lines.

The controller knows its processes (pid, attempt, how each ended); the
rendezvous, when ``--rendezvous`` names it, knows each worker's step; the
workers' output says how many of their region jobs are done. The monitor
joins the three into a :class:`Snapshot` a few times a second and hands it
to the view. Reading the rendezvous happens in a :class:`Follower` thread,
so slow storage never delays stopping or restarting a worker.
"""

from __future__ import annotations

import threading
import time
from typing import IO

import attrs

from icechunk_coop.cli._controller import LocalJob
from icechunk_coop.cli._view import (
    LineView,
    RegionCount,
    Snapshot,
    View,
    region_jobs_from_line,
)
from icechunk_coop.cli._watch import Follower, open_view
from icechunk_coop.cli._words import isatty

__all__ = ["JobMonitor"]

REDRAW_SECONDS = 0.25
READ_SECONDS = 1.0


class JobMonitor:
    """Feeds one view from one ``LocalJob``; ``out``/``err`` are where its lines go now."""

    def __init__(
        self,
        *,
        job_id: str,
        workers: int,
        timeout: float | None,
        rendezvous: str | None,
        secret: str | None,
        out: IO[str],
        err: IO[str],
    ) -> None:
        self.job_id, self.timeout = job_id, timeout
        self.view: View | None = open_view(err, prefix="icechunk-coop: ")
        if isinstance(self.view, LineView) and rendezvous is None:
            self.view = None  # plain output and nothing to read: the controller's lines say it
        self.live = self.view is not None and not isinstance(self.view, LineView)
        self.err = self.view.out if self.live and self.view is not None else err
        self.out = self.err if self.live and isatty(out) else out
        self._follower = (
            None
            if rendezvous is None
            else Follower(rendezvous, job_id, secret=secret, workers=workers, interval=READ_SECONDS)
        )
        self._region_jobs: dict[int, RegionCount] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._drawn = 0.0
        self._job: LocalJob | None = None

    def attach(self, job: LocalJob) -> None:
        """Start following, and take ``job``'s ticks and lines."""
        self._job = job
        job.on_tick, job.on_line = self.tick, self.on_line
        if self._follower is not None:
            self._follower.start()

    def on_line(self, index: int, text: str) -> None:
        found = region_jobs_from_line(text)
        if found is not None and found.worker == index:
            with self._lock:
                before = self._region_jobs.get(index)
                if found.total is None and before is not None:  # only the share line says it
                    found = attrs.evolve(found, total=before.total)
                self._region_jobs[index] = found

    def snapshot(self) -> Snapshot:
        follower = self._follower
        with self._lock:
            region_jobs = dict(self._region_jobs)
        return Snapshot(
            job_id=self.job_id,
            progress=None if follower is None else follower.latest,
            processes={} if self._job is None else self._job.processes(),
            region_jobs=region_jobs,
            elapsed=time.monotonic() - self._started,
            timeout=self.timeout,
            note="" if follower is None else follower.error,
        )

    def tick(self) -> None:
        now = time.monotonic()
        if self.view is not None and now - self._drawn >= REDRAW_SECONDS:
            self._drawn = now
            self.view.update(self.snapshot())

    def close(self) -> None:
        """Read the rendezvous once more, show the end, and leave the last frame on screen."""
        if self._follower is not None:
            self._follower.stop()
            self._follower.read_now()
        if self.view is not None:
            self.view.update(self.snapshot())
            self.view.close()
