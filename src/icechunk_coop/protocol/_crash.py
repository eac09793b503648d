"""Crash points: named places in the protocol where a test can kill the worker.

A testing switch, off unless set. With ``ICECHUNK_COOP_CRASH_AT`` set to a
comma-separated list of point names, a worker that reaches one of them
exits at once with :data:`CRASH_EXIT_CODE` (``os._exit``: no cleanup, no
failure marker, like a pod that is OOM-killed). In one process,
:func:`icechunk_coop.testing.at_crash_point` runs a callable there instead.
Nothing else in the package reads this variable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Final

from icechunk_coop.errors import ConfigurationError

__all__ = ["CRASH_ENV", "CRASH_EXIT_CODE", "POINTS", "installed", "reach"]

log = logging.getLogger("icechunk_coop.crash")

CRASH_ENV: Final = "ICECHUNK_COOP_CRASH_AT"
CRASH_EXIT_CODE: Final = 86

#: Every crash point, in the order a job reaches them.
POINTS: Final = (
    "started",  # any worker, found the job not committed yet, nothing done
    "before-prepare",  # worker 0, base opened, user's prepare not run
    "after-prepare",  # worker 0, structural changes made, nothing published
    "after-publish-setup",  # worker 0, the setup is out
    "mid-work",  # any worker, inside its work (reached through testing.crash_point)
    "before-publish-result",  # a worker's work is done, its result not out
    "after-publish-result",
    "after-load-results",  # the last worker holds every result, nothing pinned
    "after-pin-plan",  # the plan is pinned, no target touched
    "mid-merge",  # the last worker has merged every fork of one target
    "before-commits",  # every target checked and rebased, none moved yet
    "between-commits",  # one target committed, the next not yet
    "after-commit",  # every target committed, no marker, no cleanup
    "before-cleanup",  # the committed marker is out, cleanup not done
)

_handlers: list[Callable[[str], None]] = []


def _wanted() -> set[str]:
    raw = os.environ.get(CRASH_ENV, "")
    wanted = {p.strip() for p in raw.split(",") if p.strip()}
    unknown = wanted - set(POINTS)
    if unknown:
        raise ConfigurationError(
            f"{CRASH_ENV}={raw!r} names unknown crash point(s) {sorted(unknown)}; "
            f"known: {', '.join(POINTS)}"
        )
    return wanted


def reach(point: str) -> None:
    """Mark that this worker reached ``point``; crash here if asked to."""
    assert point in POINTS, point
    for handler in list(_handlers):
        handler(point)
    if point in _wanted():
        log.warning("crash point %s reached: exiting with %d (%s)", point, CRASH_EXIT_CODE,
                    CRASH_ENV)  # fmt: skip
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)


@contextlib.contextmanager
def installed(handler: Callable[[str], None]) -> Iterator[None]:
    """Call ``handler(point)`` at every crash point reached inside the block."""
    _handlers.append(handler)
    try:
        yield
    finally:
        _handlers.remove(handler)
