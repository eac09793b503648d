"""Where the steps of a job meet: typed records in, typed records out.

The protocol's steps exchange :mod:`records <icechunk_coop.wire._records>`
through a :class:`MeetingPoint`. A job of N > 1 workers meets in storage
(:class:`StoredMeeting`, over a sealed :class:`Rendezvous`); a one-worker
job meets in its own memory (:class:`InProcessMeeting`): the same steps
run, nothing is pickled, sealed or written anywhere, and no secret is
needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from icechunk_coop.errors import (
    AlreadyCommittedError,
    WaitTimeoutError,
    WorkerFailedError,
)
from icechunk_coop.identity._worker import WorkerIdentity
from icechunk_coop.rendezvous._rendezvous import Rendezvous, WaitInterrupted
from icechunk_coop.wire._markers import Committed
from icechunk_coop.wire._records import COMMITTED, Record, failure_name

__all__ = ["InProcessMeeting", "MeetingPoint", "StoredMeeting"]

R = TypeVar("R", bound=Record)


class MeetingPoint(Protocol):
    """What the steps need of a meeting point. Every wait ends once the job commits."""

    @property
    def job_id(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def stored(self) -> bool:
        """Whether blobs leave this process (and so must be sealed)."""
        ...

    def location(self, name: str) -> str: ...

    def check_reachable(self) -> None: ...

    def connect(self) -> None:
        """Build storage clients now, ahead of the first request (best effort)."""
        ...

    def publish(self, name: str, record: Record) -> None: ...

    def publish_once(self, name: str, record: R) -> tuple[bool, R]: ...

    def read(self, name: str, kind: type[R]) -> R | None: ...

    def read_many(
        self, kinds: Mapping[str, type[Record]], *, failures: Iterable[str] = ()
    ) -> tuple[dict[str, Record], set[str]]:
        """In one round trip: the records present, and which of ``failures`` have a marker."""
        ...

    def wait_for(self, name: str, kind: type[R], *, just_read: bool = False) -> R:
        """The record of ``name`` once published.

        ``just_read``: the caller just found neither it nor ``committed``
        (see ``Rendezvous.wait_for``).
        """
        ...

    def wait_for_all(
        self,
        names: Sequence[str],
        kind: type[R],
        on_arrival: Callable[[str, R], None] | None = None,
    ) -> dict[str, R]:
        """Every record of ``names``; ``on_arrival(name, record)`` for each as it is read."""
        ...

    def arrived(self) -> set[str]: ...

    def remove(self, name: str) -> None: ...

    def remove_all(self, *, keep: Iterable[str] = ()) -> None: ...

    def mark_failed(self, name: str, summary: str) -> None: ...

    def clear_failure(self, name: str) -> None: ...


def _committed(job_id: str) -> AlreadyCommittedError:
    return AlreadyCommittedError(job=job_id, snapshot=None)


@attrs.frozen(kw_only=True)
class StoredMeeting:
    """Records sealed into a rendezvous in object storage (or local files).

    ``identity``, when given, is this worker's: its failure markers then say
    which try and which pod failed (:attr:`WorkerIdentity.attempt`, ``pod``).
    """

    rendezvous: Rendezvous
    identity: WorkerIdentity | None = None

    @property
    def job_id(self) -> str:
        return self.rendezvous.job_id

    @property
    def url(self) -> str:
        return self.rendezvous.url

    @property
    def stored(self) -> bool:
        return True

    def location(self, name: str) -> str:
        return self.rendezvous.location(name)

    def check_reachable(self) -> None:
        self.rendezvous.check_reachable()

    def connect(self) -> None:
        self.rendezvous.connect()

    def publish(self, name: str, record: Record) -> None:
        self.rendezvous.publish(name, record.to_wire(), content=record.CONTENT)

    def publish_once(self, name: str, record: R) -> tuple[bool, R]:
        won, wire = self.rendezvous.publish_once(name, record.to_wire(), content=record.CONTENT)
        return won, (record if won else type(record).from_wire(wire, self.location(name)))

    def read(self, name: str, kind: type[R]) -> R | None:
        wire = self.rendezvous.read(name, content=kind.CONTENT)
        return None if wire is None else kind.from_wire(wire, self.location(name))

    def read_many(
        self, kinds: Mapping[str, type[Record]], *, failures: Iterable[str] = ()
    ) -> tuple[dict[str, Record], set[str]]:
        markers = {failure_name(name): name for name in failures}
        wires, present = self.rendezvous.read_many(
            {name: kind.CONTENT for name, kind in kinds.items()}, probe=markers
        )
        records = {name: kinds[name].from_wire(w, self.location(name)) for name, w in wires.items()}
        return records, {markers[m] for m in present}

    def _verified_commit(self) -> AlreadyCommittedError:
        """The wait saw ``committed``: believe it only once it opens as this job's marker.

        Seeing the name is not enough: a blob planted there would otherwise stop
        every waiting worker with "already committed", and the job would end
        with no commit and no error. A marker that does not open is refused,
        naming it (:class:`PayloadError`).
        """
        self.read(COMMITTED, Committed)
        return _committed(self.job_id)

    def wait_for(self, name: str, kind: type[R], *, just_read: bool = False) -> R:
        # Every worker but one waits for the setup at once: spread their first polls.
        me = self.identity
        policy = None if me is None else self.rendezvous.policy.for_crowd(me.workers_total - 1)
        try:
            wire = self.rendezvous.wait_for(
                name, content=kind.CONTENT, unless=COMMITTED, policy=policy, just_read=just_read
            )
        except WaitInterrupted:
            raise self._verified_commit() from None
        return kind.from_wire(wire, self.location(name))

    def wait_for_all(
        self,
        names: Sequence[str],
        kind: type[R],
        on_arrival: Callable[[str, R], None] | None = None,
    ) -> dict[str, R]:
        records: dict[str, R] = {}

        def arrived(name: str, wire: Any) -> None:
            # Decoded once, as it arrives: the caller may fold it in while the wait goes on.
            records[name] = kind.from_wire(wire, self.location(name))
            if on_arrival is not None:
                on_arrival(name, records[name])

        try:
            self.rendezvous.wait_for_all(
                names, content=kind.CONTENT, unless=COMMITTED, on_arrival=arrived
            )
        except WaitInterrupted:
            raise self._verified_commit() from None
        return {name: records[name] for name in names}

    def arrived(self) -> set[str]:
        return self.rendezvous.arrived()

    def remove(self, name: str) -> None:
        self.rendezvous.remove(name)

    def remove_all(self, *, keep: Iterable[str] = ()) -> None:
        self.rendezvous.remove_all(keep=keep)

    def mark_failed(self, name: str, summary: str) -> None:
        me = self.identity
        if me is None:
            self.rendezvous.mark_failed(name, summary)
        else:
            self.rendezvous.mark_failed(
                name, summary, attempt=me.attempt, restart=me.restart, pod=me.pod
            )

    def clear_failure(self, name: str) -> None:
        self.rendezvous.clear_failure(name)


@attrs.define(kw_only=True)
class InProcessMeeting:
    """Records kept in this process: the meeting point of a one-worker job.

    A blob that is not there cannot arrive later (nobody else is in the
    job), so waits do not poll: they fail at once, naming what is missing.
    """

    job_id: str
    _blobs: dict[str, Record] = attrs.field(factory=dict)
    _failures: dict[str, str] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"in-process://{self.job_id}"

    @property
    def stored(self) -> bool:
        return False

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    def check_reachable(self) -> None:
        return None

    def connect(self) -> None:
        return None

    def publish(self, name: str, record: Record) -> None:
        with self._lock:
            self._blobs[name] = record

    def publish_once(self, name: str, record: R) -> tuple[bool, R]:
        with self._lock:
            existing = self._blobs.setdefault(name, record)
        if not isinstance(existing, type(record)):
            raise TypeError(f"{name} holds a {type(existing).__name__}")  # pragma: no cover
        return existing is record, existing

    def read(self, name: str, kind: type[R]) -> R | None:
        record = self._blobs.get(name)
        return record if isinstance(record, kind) else None

    def read_many(
        self, kinds: Mapping[str, type[Record]], *, failures: Iterable[str] = ()
    ) -> tuple[dict[str, Record], set[str]]:
        found = {name: self.read(name, kind) for name, kind in kinds.items()}
        records = {name: record for name, record in found.items() if record is not None}
        return records, {name for name in failures if name in self._failures}

    def wait_for(self, name: str, kind: type[R], *, just_read: bool = False) -> R:
        return self.wait_for_all([name], kind)[name]

    def wait_for_all(
        self,
        names: Sequence[str],
        kind: type[R],
        on_arrival: Callable[[str, R], None] | None = None,
    ) -> dict[str, R]:
        if COMMITTED in self._blobs:
            raise _committed(self.job_id)
        failed = {n: self._failures[n] for n in names if n in self._failures}
        if failed:
            raise WorkerFailedError(location=self.url, failures=failed, job=self.job_id)
        found = {n: r for n in names if (r := self.read(n, kind)) is not None}
        missing = [n for n in names if n not in found]
        if missing:
            raise WaitTimeoutError(
                location=self.url,
                missing=missing,
                expected=len(names),
                waited_seconds=0.0,
                job=self.job_id,
            )
        if on_arrival is not None:
            for name, record in found.items():
                on_arrival(name, record)
        return found

    def arrived(self) -> set[str]:
        return set(self._blobs) | {failure_name(n) for n in self._failures}

    def remove(self, name: str) -> None:
        self._blobs.pop(name, None)

    def remove_all(self, *, keep: Iterable[str] = ()) -> None:
        kept = set(keep)
        self._blobs = {n: r for n, r in self._blobs.items() if n in kept}
        self._failures.clear()

    def mark_failed(self, name: str, summary: str) -> None:
        self._failures[name] = summary

    def clear_failure(self, name: str) -> None:
        self._failures.pop(name, None)
