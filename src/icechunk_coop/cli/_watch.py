"""Following a job: ``status --watch``, and the reader behind ``run-local``'s view.

Both read the rendezvous every few seconds through :class:`ProgressReader`
(one listing per read; each sealed blob opened once) and hand a
:class:`Snapshot` to a view: live in a terminal, plain lines otherwise.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO

from icechunk_coop import SECRET_ENV
from icechunk_coop.cli._view import LineView, Snapshot, View
from icechunk_coop.inspect import JobProgress, ProgressReader

__all__ = ["DEFAULT_INTERVAL", "Follower", "open_view", "watch"]

DEFAULT_INTERVAL = 2.0


def _wants_live(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()) or os.environ.get("TERM") == "dumb":
        return False
    from icechunk_coop.cli._live import live_view_available

    return live_view_available()


def open_view(stream: IO[str], *, prefix: str = "", lines: IO[str] | None = None) -> View:
    """The live table if ``stream`` is a terminal (and rich is there), else plain lines."""
    if _wants_live(stream):
        from icechunk_coop.cli._live import LiveView

        return LiveView(stream)
    return LineView(stream, prefix=prefix, lines=lines)


def watch(
    url: str,
    job: str,
    *,
    workers: int | None,
    interval: float,
    out: IO[str],
    view: View | None = None,
) -> tuple[int, str | None]:
    """Follow ``job`` until it commits or fails; returns (exit code, the job id found).

    0 committed, 1 failed; a job that is not there yet is waited for (Ctrl-C
    ends the watch). Storage errors are raised, as by ``status``.
    """
    reader = ProgressReader(
        url, job, secret=os.environ.get(SECRET_ENV) or None, workers_total=workers
    )
    shown = view or open_view(out)
    progress: JobProgress | None = None
    try:
        while True:
            progress = reader.read()
            note = "" if progress is not None else f"waiting for it to appear at {url}"
            shown.update(
                Snapshot(
                    job_id=reader.job_id or job,
                    progress=progress,
                    elapsed=None if progress is None else progress.elapsed(),
                    note=note,
                )
            )
            if progress is not None and progress.finished:
                break
            time.sleep(interval)
    finally:
        shown.close()
    return (0 if progress.state == "committed" else 1), progress.job_id


class Follower:
    """Reads one job's progress in a thread, so a slow storage never stalls a controller.

    ``latest`` is the last progress read (None before the job's first blob);
    ``error`` the last storage error, shown rather than raised: the workers
    will meet the same storage and say so themselves.
    """

    def __init__(
        self, url: str, job_id: str, *, secret: str | None, workers: int, interval: float
    ) -> None:
        self._reader = ProgressReader(url, job_id, secret=secret, workers_total=workers)
        self._interval, self._stop = interval, threading.Event()
        self.latest: JobProgress | None = None
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="coop-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def read_now(self) -> None:
        try:
            self.latest, self.error = self._reader.read(), ""
        except Exception as exc:  # shown, never raised: this thread must outlive a bad read
            self.error = f"rendezvous: {str(exc).splitlines()[0][:120] if str(exc) else exc!r}"

    def _run(self) -> None:
        while not self._stop.is_set():
            self.read_now()
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
