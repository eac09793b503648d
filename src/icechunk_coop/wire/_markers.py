"""The small JSON records of a job: done, done on a zarr target, and failed.

They are JSON, not pickles, so that a reader without the job's secret (the
``status`` command) can at least see that they exist, and never unpickles
anything to find out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Self

import attrs

from icechunk_coop.errors import PayloadFormatError
from icechunk_coop.wire._records import Content, Record, check_format, field, timeline_from_wire

__all__ = ["Committed", "Failure", "ZarrCommitted"]


def _timelines(wire: object, location: str) -> dict[int, dict[str, tuple[float, float]]]:
    if not isinstance(wire, Mapping) or not all(str(k).isdigit() for k in wire):
        raise PayloadFormatError(location=location, reason="timeline must map worker indexes")
    return {int(k): timeline_from_wire(v, location) for k, v in wire.items()}


def _iso(value: datetime | str | None) -> str | None:
    """A job start as ISO 8601 text (how the setup pins it too)."""
    return value.isoformat() if isinstance(value, datetime) else value


@attrs.frozen(kw_only=True)
class Committed(Record):
    """The job is done: what each target got. Kept after cleanup for late pods.

    ``job_start`` (the start the committing run pinned, ISO 8601) and ``pod``
    (the pod that committed) say which run committed: a job without a uid is
    known by its name alone, and a later Job of that name must tell its own
    retry from the marker of another run (see ``_start.check_same_run``).
    Both are optional keys of the same format, written only when known: a
    marker from an older version reads them as None, and an older reader
    ignores them.
    """

    FORMAT: ClassVar[str] = "icechunk-coop/committed/1"
    CONTENT: ClassVar[Content] = "json"

    snapshots: Mapping[str, str]
    at: float
    workers_total: int | None = None
    #: Worker index -> step -> (began, ended): where the job's time went.
    timeline: Mapping[int, Mapping[str, tuple[float, float]]] = attrs.field(factory=dict)
    job_start: str | None = attrs.field(default=None, converter=_iso)
    pod: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "format": self.FORMAT,
            "snapshots": dict(self.snapshots),
            "at": self.at,
            "workers_total": self.workers_total,
            "timeline": {
                str(i): {k: list(v) for k, v in steps.items()} for i, steps in self.timeline.items()
            },
        }
        for key in ("job_start", "pod"):
            value = getattr(self, key)
            if value is not None:
                wire[key] = value
        return wire

    @classmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        w = check_format(wire, cls.FORMAT, location)
        snapshots = field(w, "snapshots", dict, location)
        return cls(
            snapshots={str(k): str(v) for k, v in snapshots.items()},
            at=float(field(w, "at", (int, float), location)),
            workers_total=field(w, "workers_total", (int, type(None)), location),
            timeline=_timelines(w.get("timeline", {}), location),
            job_start=field(w, "job_start", (str, type(None)), location),
            pod=field(w, "pod", (str, type(None)), location),
        )


@attrs.frozen(kw_only=True)
class ZarrCommitted(Record):
    """A plain zarr target got its final ``zarr.json`` documents (these keys)."""

    FORMAT: ClassVar[str] = "icechunk-coop/zarr-committed/1"
    CONTENT: ClassVar[Content] = "json"

    target: str
    keys: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "target": self.target, "keys": list(self.keys)}

    @classmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        w = check_format(wire, cls.FORMAT, location)
        keys = field(w, "keys", list, location)
        return cls(target=field(w, "target", str, location), keys=tuple(map(str, keys)))


@attrs.frozen(kw_only=True)
class Failure(Record):
    """Whoever owed the blob ``name`` failed: waiters stop at once instead of timing out.

    ``attempt``, ``restart`` and ``pod`` say which run of the worker failed,
    where its orchestrator tells (see :class:`~icechunk_coop.WorkerIdentity`),
    so a marker left by an earlier try is told from the current one's. They
    are optional keys of the same format: written only when known, and a
    marker without them (from an older version) reads as None. An older
    reader ignores keys it does not know.
    """

    FORMAT: ClassVar[str] = "icechunk-coop/failure/1"
    CONTENT: ClassVar[Content] = "json"

    name: str
    summary: str
    at: float
    worker: int | None = None
    attempt: int | None = None
    restart: int | None = None
    pod: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "format": self.FORMAT,
            "name": self.name,
            "summary": self.summary,
            "at": self.at,
            "worker": self.worker,
        }
        for key in ("attempt", "restart", "pod"):
            value = getattr(self, key)
            if value is not None:
                wire[key] = value
        return wire

    @classmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        w = check_format(wire, cls.FORMAT, location)
        return cls(
            name=field(w, "name", str, location),
            summary=field(w, "summary", str, location),
            at=float(field(w, "at", (int, float), location)),
            worker=field(w, "worker", (int, type(None)), location),
            attempt=field(w, "attempt", (int, type(None)), location),
            restart=field(w, "restart", (int, type(None)), location),
            pod=field(w, "pod", (str, type(None)), location),
        )
