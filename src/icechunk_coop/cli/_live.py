"""The live view in a terminal: a table of workers redrawn in place, with rich.

rich is imported here only, by ``run-local`` and ``status --watch`` when
their output is a terminal (the ``view`` extra): a worker never imports it.
Lines printed while the table shows (the workers' output, the controller's
messages) go through the same console, so they scroll above the table
instead of tearing it.
"""

from __future__ import annotations

import threading
from typing import IO, Any

from icechunk_coop import ConfigurationError
from icechunk_coop.cli._view import Snapshot, headline, rows
from icechunk_coop.cli._words import plural

__all__ = ["ConsoleLines", "LiveView", "live_view_available"]

_FOOTER = 4  # lines the headline, the table's head and a "more" line take
_COLUMNS = ("worker", "step", "region_jobs", "process", "detail")
_STYLES = {
    "failed": "bold red",
    "restarting": "yellow",
    "done": "green",
    "published": "green",
    "succeeded": "green",
    "commit": "cyan",
}


def live_view_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class ConsoleLines:
    """A text stream whose whole lines are printed through a rich console (colours kept)."""

    def __init__(self, console: Any) -> None:
        self._console, self._partial = console, ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        from rich.text import Text

        with self._lock:
            *whole, self._partial = (self._partial + text).split("\n")
            for line in whole:
                self._console.print(Text.from_ansi(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        """Whole lines are printed as they come; a partial one waits for its end."""

    def isatty(self) -> bool:
        return bool(self._console.is_terminal)


class LiveView:
    """A table of workers, redrawn on every :meth:`update`, left on screen by :meth:`close`."""

    def __init__(self, stream: IO[str]) -> None:
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError as exc:  # pragma: no cover - the CLI checks first
            raise ConfigurationError(
                "the live view needs rich: pip install 'icechunk-coop[view]'"
            ) from exc
        self.console = Console(file=stream, highlight=False)
        self._lines = ConsoleLines(self.console)
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._live.start()

    @property
    def out(self) -> IO[str]:
        return self._lines  # type: ignore[return-value]

    def _render(self, snap: Snapshot) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        found = rows(snap)
        room = max(3, self.console.size.height - _FOOTER)
        if len(found) > room:  # the workers still busy first; the rest as a count
            busy = [r for r in found if r.step not in ("published", "done")]
            shown = (busy + [r for r in found if r not in busy])[: room - 1]
            hidden = len(found) - len(shown)
            found = sorted(shown, key=lambda r: r.index)
        else:
            hidden = 0
        # A column nothing fills is left out: no steps without --rendezvous, say.
        columns = [c for c in _COLUMNS if c == "worker" or any(getattr(r, c) for r in found)]
        table = Table(box=None, pad_edge=False, header_style="bold")
        for name in columns:
            table.add_column(name.replace("_", " "), overflow="ellipsis", no_wrap=True)
        for row in found:
            cells = {
                "worker": Text(str(row.index)),
                "step": Text(row.step, style=_STYLES.get(row.step, "")),
                "region_jobs": Text(row.region_jobs),
                "process": Text(row.process, style=_STYLES.get(row.process.split(":")[0], "")),
                "detail": Text(row.detail),
            }
            table.add_row(*(cells[c] for c in columns))
        parts: list[Any] = [Text(headline(snap), style="bold"), table]
        if hidden:
            parts.append(Text(f"... and {plural(hidden, 'more worker')}", style="dim"))
        return Group(*parts)

    def update(self, snap: Snapshot) -> None:
        self._live.update(self._render(snap), refresh=True)

    def close(self) -> None:
        self._live.stop()
