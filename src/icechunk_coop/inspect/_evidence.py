"""What a job's blobs prove, beyond their names: the setup's claims, failure markers, a verdict.

The read model (``_status``) lists names; this reads the few blobs whose
content changes the answer, without unpickling anything of the user's: the
setup's authenticated header (the worker total, when its waits end, the
icechunk version), and the JSON failure markers (a worker that gave up
waiting is not a worker that failed). Whatever cannot be read is said with
its cause (another secret, another icechunk version, a truncated blob),
never read as absent.

A job's state is what the blobs can prove: ``committed`` (the marker),
``failed`` (a worker's failure marker), ``stopped`` (nobody is left to act:
the Job's deadline has passed, or every failure marker is a worker that
gave up waiting for indexes that never came), else ``running`` (or
``waiting for setup``). Workers do not report that they are alive, so
"running" means "nothing shows it ended".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

import attrs

from icechunk_coop.errors import (
    IcechunkVersionError,
    PayloadAuthenticationError,
    PayloadError,
)
from icechunk_coop.rendezvous._rendezvous import Rendezvous
from icechunk_coop.rendezvous._waiting import deadline_margin
from icechunk_coop.wire._markers import Failure
from icechunk_coop.wire._payload import SECRET_ENV
from icechunk_coop.wire._records import SETUP, Setup, SetupHeader, failure_name, index_of_result

__all__ = ["JobState", "SetupRead", "marker", "read_setup", "unreadable", "verdict_of"]

JobState = Literal["committed", "failed", "stopped", "running", "waiting for setup"]


@attrs.frozen(kw_only=True)
class SetupRead:
    """What a reader learnt of the setup: its public claims, or why it has none.

    ``header`` is None when there is no setup, no secret, or ``error`` says
    why it could not be read (another secret, a truncated blob, a body that
    does not unpickle here).
    """

    header: SetupHeader | None = None
    error: str | None = None


def unreadable(exc: PayloadError, rv: Rendezvous, width: int = 80) -> str:
    if isinstance(exc, PayloadAuthenticationError):
        if rv.sealer.authenticated:  # a secret was given, and it is not the one that sealed it
            return (
                f"(sealed with another secret than the {SECRET_ENV} given, or truncated or "
                "tampered with: its tag does not verify)"
            )
        return f"(sealed: set {SECRET_ENV} to the job's secret to read it)"
    if isinstance(exc, IcechunkVersionError):
        return f"(another icechunk version: {exc.reason[: width * 2]})"
    return f"(refused: {exc.reason[:width]})"


def marker(rv: Rendezvous, name: str) -> Failure | str | None:
    """The failure marker of ``name`` (JSON: never unpickles), or why it cannot be read."""
    try:
        wire = rv.read(failure_name(name))
        return None if wire is None else Failure.from_wire(wire, rv.location(name))
    except PayloadError as exc:
        return unreadable(exc, rv)


def _old_setup(rv: Rendezvous, data: bytes) -> SetupRead:
    """A setup sealed before setups had a header: its total only from its (authentic) body."""
    location = rv.location(SETUP)
    try:
        wire = rv.sealer.open(data, name=SETUP, location=location, expect="pickle")
        record = Setup.from_wire(wire, location)
    except PayloadError as exc:
        return SetupRead(error=unreadable(exc, rv, width=200))
    except Exception as exc:  # unpickling worker 0's decision: any class's own error
        return SetupRead(
            error=f"(sealed before setups had a header, and its body does not unpickle here: "
            f"{type(exc).__name__}: {str(exc)[:120]}; worker 0's decision may hold a class "
            "only the workers import: pass --workers N)"
        )
    claims = SetupHeader(
        workers_total=record.workers_total,
        icechunk=None,
        job_start=record.job_start,
        deadline=record.deadline,
    )
    return SetupRead(header=claims)


def read_setup(rv: Rendezvous) -> SetupRead:
    """The setup's public claims from its authenticated header, or why they cannot be read.

    Nothing is unpickled, except the body of a setup sealed before setups
    had a header (after it authenticates): an error there is reported, not
    swallowed.
    """
    data = rv.blobs.get(SETUP)
    if data is None:
        return SetupRead()
    location = rv.location(SETUP)
    try:
        header = rv.sealer.open_header(data, name=SETUP, location=location)
        claims = SetupHeader.from_frame(header, location)
    except PayloadError as exc:
        return SetupRead(error=unreadable(exc, rv, width=200))
    return SetupRead(header=claims) if claims is not None else _old_setup(rv, data)


#: A setup's deadline is when its waits end: a margin before the orchestrator stops
#: every pod, never more than the largest margin (``deadline_margin``'s cap).
_KILLED_WITHIN = deadline_margin(math.inf)

_TIMEOUT = "WaitTimeoutError:"
_CASCADE = "WorkerFailedError:"


def _gave_up(markers: Mapping[str, Failure | str | None]) -> bool:
    """Every failure marker is a worker that gave up waiting (or one failing after such).

    The markers say so in their summary, which starts with the error's
    class (``summary`` in ``_context``). A marker that cannot be read counts
    as a failure: fail closed.
    """
    summaries = [m.summary if isinstance(m, Failure) else "" for m in markers.values()]
    return any(_TIMEOUT in t.split(" ", 1)[0] for t in summaries) and all(
        t.split(" ", 1)[0].endswith((_TIMEOUT, _CASCADE)) for t in summaries
    )


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def verdict_of(
    names_state: JobState,
    markers: Mapping[str, Failure | str | None],
    setup: SetupRead,
    now: float,
) -> tuple[JobState, str | None]:
    """What the blobs prove about the job, and why; ``names_state`` is what its names say."""
    if names_state == "committed":
        return "committed", None
    if names_state == "failed":
        if _gave_up(markers):
            who = sorted({index_of_result(name) or 0 for name in markers})  # setup: worker 0's
            one = len(who) == 1
            return "stopped", (
                f"{'worker' if one else 'workers'} {', '.join(map(str, who))} gave up waiting: "
                f"what {'it' if one else 'they'} waited for never came"
            )
        return "failed", None
    deadline = setup.header.deadline if setup.header else None
    if deadline is not None and now >= deadline + _KILLED_WITHIN:
        return "stopped", (
            f"its waits ended at {_when(deadline)} and its Job's deadline has passed since: "
            "every pod has been stopped"
        )
    return names_state, None
