"""Words that read right: plurals, lists of indexes, how a process ended."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import IO

__all__ = ["describe_exit", "isatty", "listing", "plural", "ranges", "workers"]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 worker``, ``2 workers`` (``many`` for irregular plurals)."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def listing(items: Iterable[object]) -> str:
    """``0``, ``0 and 2``, ``0, 2 and 3``."""
    words = [str(item) for item in items]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def workers(indexes: Iterable[int]) -> str:
    """``worker 1``, ``workers 0 and 2``."""
    found = sorted(indexes)
    return f"{'worker' if len(found) == 1 else 'workers'} {listing(found)}"


def ranges(indexes: Iterable[int]) -> str:
    """``4..7``, ``1, 4..7 and 9``: runs of consecutive indexes, so a thousand read as one."""
    runs: list[list[int]] = []
    for index in sorted(set(indexes)):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return listing(f"{a}..{b}" if b > a + 1 else f"{a}, {b}" if b > a else str(a)
                   for a, b in runs)  # fmt: skip


def describe_exit(code: int) -> str:
    """How a process ended, from ``Popen.returncode``: ``exited with 3``, ``killed by SIGKILL``."""
    if code >= 0:
        return f"exited with {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}"


def isatty(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (a closed stream is not)."""
    probe = getattr(stream, "isatty", None)
    try:
        return bool(callable(probe) and probe())
    except ValueError:  # a closed stream
        return False
