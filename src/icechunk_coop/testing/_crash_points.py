"""Killing a worker at a named step of the protocol: in this process, or a worker process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from icechunk_coop.protocol import _crash
from icechunk_coop.protocol._crash import POINTS as CRASH_POINTS


class Killed(BaseException):
    """A worker died at a crash point: not an ``Exception``, so no failure marker is left."""


def _die(point: str) -> None:
    raise Killed(point)


@contextlib.contextmanager
def at_crash_point(
    point: str, action: Callable[[str], None] = _die, *, times: int = 1
) -> Iterator[list[str]]:
    """Run ``action(point)`` the first ``times`` times a worker in this process reaches ``point``.

    Yields the list of points reached so far (for assertions). The default
    action raises :class:`Killed`.
    """
    if point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}; known: {', '.join(CRASH_POINTS)}")
    reached: list[str] = []

    def handler(name: str) -> None:
        reached.append(name)
        if name == point and reached.count(point) <= times:
            action(name)

    with _crash.installed(handler):
        yield reached


def crash_point(point: str = "mid-work") -> None:
    """Call inside your ``work`` so that tests can kill a worker in the middle of it."""
    _crash.reach(point)
