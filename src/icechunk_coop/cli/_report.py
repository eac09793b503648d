"""``icechunk-coop report JOB``: where a job's time went, as text and as a picture.

The text is the critical path (what the job's end waited for, step by step)
and the overhead: the job's time minus the slowest worker's own work, which
is what coordination cost on top of work no amount of parallelism removes.
The picture is every worker's steps on one time axis (``_gantt``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO

from icechunk_coop import SECRET_ENV
from icechunk_coop.cli._status import storage_errors
from icechunk_coop.cli._words import plural, workers
from icechunk_coop.inspect import ProgressReader, Timeline

__all__ = ["cmd_report", "describe", "report"]


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.2f}s"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}min"


def describe(timeline: Timeline, out: IO[str]) -> None:
    """Print the critical path and the overhead of ``timeline``."""
    path, start = timeline.critical_path(), timeline.start
    out.write(
        f"job {timeline.job_id}: {_seconds(path.job_seconds)} from the first step to the last "
        f"({plural(timeline.workers_total, 'worker')})\n"
    )
    out.write("critical path (what the end of the job waited for):\n")
    rows = [("worker", "step", "began", "took")]
    rows += [
        (str(s.worker), s.step, f"+{_seconds(s.began - start)}", _seconds(s.seconds))
        for s in path.spans
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        out.write("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    if path.slowest_worker is not None:
        share = path.overhead / path.job_seconds if path.job_seconds > 0 else 0.0
        out.write(
            f"slowest worker's own work: worker {path.slowest_worker}, "
            f"{_seconds(path.slowest_work)}; overhead {_seconds(path.overhead)} "
            f"({share:.0%} of the job)\n"
        )
    if missing := timeline.missing():
        out.write(f"no steps recorded yet for {workers(missing)}\n")


def default_output(job_id: str) -> Path:
    return Path(f"{job_id}-timeline.png")


def report(
    url: str,
    job: str,
    *,
    output: Path | None,
    out: IO[str],
    workers_total: int | None = None,
) -> int:
    """Print ``job``'s critical path and write its timeline picture; returns the exit code.

    ``job`` is a job id or a name, as for ``status``. The steps come from the
    committed marker, or for a job still running from its results (which
    needs ``ICECHUNK_COOP_SECRET``). ``output`` defaults to
    ``<job id>-timeline.png`` in the current directory.
    """
    from icechunk_coop.cli._gantt import draw_timeline  # matplotlib, only when drawing

    reader = ProgressReader(
        url, job, secret=os.environ.get(SECRET_ENV) or None, workers_total=workers_total
    )
    progress = reader.read()
    if progress is None:
        out.write(f"job {job!r}: nothing at {url} (never started, or cleaned up)\n")
        return 1
    timeline = reader.timeline(progress)
    if progress.state != "committed":
        out.write(f"job {progress.job_id} is {progress.state}: the steps so far\n")
    describe(timeline, out)
    chart = draw_timeline(timeline, output or default_output(progress.job_id))
    out.write(f"timeline written to {chart.path}\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    output = Path(args.output).expanduser() if args.output else None
    return storage_errors(
        "report",
        lambda: report(args.url, args.job, output=output, out=sys.stdout, workers_total=None),
    )
