"""No colour codes in icechunk's own log lines when they go to a file or a pipe.

icechunk logs from Rust (``tracing``), set up once when ``icechunk`` is
first imported, and colours its lines whether or not stderr is a terminal:
piped into a log collector they arrive wrapped in escape codes. The one
switch it reads is ``NO_COLOR`` (https://no-color.org), at that import, so
this module must run before anything imports icechunk: ``icechunk_coop``
imports it first. A terminal keeps its colours; ``NO_COLOR`` already set
(to anything) is left alone, and so is a process that imported icechunk
before us (too late to change: icechunk's logging cannot be set up twice).

That last case is common: ruff and isort sort ``import icechunk`` before
``import icechunk_coop``. Such a worker gets plain lines only from its
environment, so ``run-local`` and ``testing.start_workers`` set
``NO_COLOR=1`` for the workers whose output they pipe, and the docs ("Container
images") say to set it in a container's env (``tests/test_plain_logs.py``).
"""

from __future__ import annotations

import os
import sys

__all__ = ["plain_logs_when_piped"]


def plain_logs_when_piped() -> bool:
    """Set ``NO_COLOR=1`` if stderr is not a terminal and icechunk is not loaded yet."""
    if "icechunk" in sys.modules or "NO_COLOR" in os.environ:
        return False
    try:
        terminal = sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        terminal = False
    if terminal:
        return False
    os.environ["NO_COLOR"] = "1"
    return True


plain_logs_when_piped()
