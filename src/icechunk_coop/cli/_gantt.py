"""The timeline picture: one row per worker, one bar per step, the critical path outlined.

matplotlib is imported here only, when a picture is asked for (the ``view``
extra): a worker never imports it. The Agg backend draws to a file without
a display, so ``report`` works over ssh and in CI.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from icechunk_coop import ConfigurationError
from icechunk_coop.inspect import Timeline

__all__ = ["Bar", "Chart", "draw_timeline"]

# Colour-blind-safe (Okabe-Ito), one per step, in the order steps happen (the legend's).
_COLOURS = {"setup": "#E69F00", "work": "#0072B2", "wait": "#BBBBBB", "commit": "#009E73"}
_OTHER = "#CC79A7"
_MAX_LABELS = 60  # more rows than this: label every k-th, or the names overlap


@attrs.frozen(kw_only=True)
class Bar:
    """One drawn bar: its row, step, offset from the job's start and length (seconds)."""

    row: int
    step: str
    start: float
    seconds: float
    critical: bool


@attrs.frozen(kw_only=True)
class Chart:
    """What was drawn where: one row per worker, the labels on the axis, the bars, the file."""

    path: Path
    rows: tuple[str, ...]
    labels: tuple[str, ...]
    bars: tuple[Bar, ...]


def draw_timeline(timeline: Timeline, path: Path, *, title: str | None = None) -> Chart:
    """Write ``timeline`` as a PNG Gantt chart at ``path``; return what it shows."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ConfigurationError(
            "the timeline picture needs matplotlib: pip install 'icechunk-coop[view]'"
        ) from exc

    start, path_spans = timeline.start, set(timeline.critical_path().spans)
    rows = tuple(f"worker {i}" for i in range(timeline.workers_total))
    bars = tuple(
        Bar(
            row=s.worker,
            step=s.step,
            start=s.began - start,
            seconds=s.seconds,
            critical=s in path_spans,
        )
        for s in timeline.spans
    )
    height = min(0.28 * len(rows) + 1.6, 60.0)
    fig, ax = plt.subplots(figsize=(10, height))
    try:
        for bar in bars:
            ax.barh(
                bar.row,
                max(bar.seconds, 1e-3),
                left=bar.start,
                height=0.7,
                color=_COLOURS.get(bar.step, _OTHER),
                edgecolor="black" if bar.critical else "none",
                linewidth=1.2 if bar.critical else 0,
            )
        step = max(1, len(rows) // _MAX_LABELS + (len(rows) % _MAX_LABELS > 0))
        ax.set_yticks(range(0, len(rows), step), [rows[i] for i in range(0, len(rows), step)])
        ax.set_ylim(len(rows) - 0.5, -0.5)  # worker 0 on top
        ax.set_xlabel("seconds since the first step began")
        ax.set_title(title or f"job {timeline.job_id}: where the time went")
        used = [s for s in _COLOURS if any(b.step == s for b in bars)]
        used += sorted({b.step for b in bars} - set(_COLOURS))
        handles = [Patch(color=_COLOURS.get(s, _OTHER), label=s) for s in used]
        handles.append(Patch(facecolor="white", edgecolor="black", label="critical path"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
        labels = tuple(t.get_text() for t in ax.get_yticklabels())
    finally:
        plt.close(fig)
    return Chart(path=path, rows=rows, labels=labels, bars=bars)
