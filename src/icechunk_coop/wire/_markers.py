"""The small JSON records of a job: done, done on a zarr target, and failed.

They are JSON, not pickles, so that a reader without the job's secret (the
``status`` command) can at least see that they exist, and never unpickles
anything to find out.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar

import attrs

from icechunk_coop.wire._codec import OPTIONAL, Timelines
from icechunk_coop.wire._records import Content, Record

__all__ = ["Committed", "Failure", "ZarrCommitted"]


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
    timeline: Timelines = attrs.field(factory=dict)
    job_start: str | None = attrs.field(default=None, converter=_iso, metadata=OPTIONAL)
    pod: str | None = attrs.field(default=None, metadata=OPTIONAL)


@attrs.frozen(kw_only=True)
class ZarrCommitted(Record):
    """A plain zarr target got its final ``zarr.json`` documents (these keys)."""

    FORMAT: ClassVar[str] = "icechunk-coop/zarr-committed/1"
    CONTENT: ClassVar[Content] = "json"

    target: str
    keys: tuple[str, ...]


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
    attempt: int | None = attrs.field(default=None, metadata=OPTIONAL)
    restart: int | None = attrs.field(default=None, metadata=OPTIONAL)
    pod: str | None = attrs.field(default=None, metadata=OPTIONAL)
