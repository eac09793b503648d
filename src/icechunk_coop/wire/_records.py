"""The blobs of a job: their names, and their content as typed, versioned records.

Every blob a job writes is one of five records (the three JSON markers are
in ``_markers``). Each has a format tag; a
blob is decoded in exactly one place (``from_wire``), and anything that is
not a record of the expected kind and version fails closed with the blob's
location in the error, the way filelock reads its markers. The wire form is
a plain dict: records never pickle their own classes, so renaming a class
cannot turn an old blob into an ``AttributeError`` half-way through loading.

Names live here too, so the protocol, the status read model, cleanup and
the CLI all spell them the same way::

    setup                 worker 0's setup (pickle: holds the forks)
    result-<i>            worker i's fork(s) and value (pickle)
    plan                  the results a finalizer pinned (pickle)
    committed             the job is done (JSON; outlives cleanup)
    committed-<target>    a plain zarr target holds the job (JSON)
    <name>.failed         whoever owed <name> failed (JSON)
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import attrs

from icechunk_coop.errors import PayloadFormatError
from icechunk_coop.wire._payload import PUBLIC, FrameHeader

if TYPE_CHECKING:
    import icechunk

__all__ = [
    "COMMITTED",
    "FAILED_SUFFIX",
    "PLAN",
    "SETUP",
    "IcechunkSetup",
    "Plan",
    "Record",
    "Result",
    "Setup",
    "SetupHeader",
    "TargetSetup",
    "Writes",
    "ZarrSetup",
    "check_format",
    "committed_name",
    "failure_name",
    "field",
    "index_of_result",
    "result_name",
    "timeline_from_wire",
]

SETUP = "setup"
PLAN = "plan"
COMMITTED = "committed"
FAILED_SUFFIX = ".failed"
_RESULT = "result-"
_RESULT_NAME = re.compile(r"^result-(\d{1,9})$")

Content = Literal["pickle", "json"]


def result_name(index: int) -> str:
    """The name of worker ``index``'s result."""
    return f"{_RESULT}{index}"


def index_of_result(name: str) -> int | None:
    """The worker index of a result (or its failure marker) name, else None."""
    match = _RESULT_NAME.match(name.removesuffix(FAILED_SUFFIX))
    return int(match.group(1)) if match else None


def committed_name(target: str) -> str:
    """Where a plain zarr target records that it holds the job."""
    return f"{COMMITTED}-{target}"


def failure_name(name: str) -> str:
    """The failure marker of ``name``: whoever owed it will not deliver."""
    return name + FAILED_SUFFIX


def _refuse(location: str, reason: str) -> PayloadFormatError:
    return PayloadFormatError(location=location, reason=reason)


def field(wire: Mapping[str, Any], key: str, kind: type | tuple[type, ...], location: str) -> Any:
    value = wire.get(key)
    if not isinstance(value, kind):
        raise _refuse(location, f"field {key!r} is {type(value).__name__}, not a valid value")
    return value


def check_format(wire: object, expected: str, location: str) -> Mapping[str, Any]:
    if not isinstance(wire, Mapping):
        raise _refuse(location, f"it holds {type(wire).__name__}, not a {expected} record")
    tag = wire.get("format")
    if tag != expected:
        raise _refuse(
            location,
            f"its format is {tag!r}, not {expected!r}: every worker of a job must run the "
            "same icechunk-coop version",
        )
    return wire


class Record(abc.ABC):
    """What every record shares: its format tag and how it travels."""

    FORMAT: ClassVar[str]
    CONTENT: ClassVar[Content]

    @abc.abstractmethod
    def to_wire(self) -> dict[str, Any]:
        """The plain dict this record travels as (with its format tag)."""

    @classmethod
    @abc.abstractmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        """The record a wire dict holds; anything else is refused, naming ``location``."""


@attrs.frozen(kw_only=True)
class IcechunkSetup:
    """An Icechunk target's share of the setup.

    ``base`` is the snapshot the job forked from (S0); ``prepared`` holds
    worker 0's structural changes; ``fork`` is what every worker forks to
    write into (its base is an anonymous snapshot holding ``prepared``).
    """

    base: str
    prepared: icechunk.ForkSession = attrs.field(repr=False)
    fork: icechunk.ForkSession = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class ZarrSetup:
    """A plain zarr target's share: the ``zarr.json`` documents staged at setup."""

    metadata: Mapping[str, bytes] = attrs.field(repr=False)

    @property
    def base(self) -> None:
        """A plain store has no snapshots: nothing to scan down to."""
        return None


TargetSetup = IcechunkSetup | ZarrSetup


def _target_to_wire(state: TargetSetup) -> dict[str, Any]:
    if isinstance(state, IcechunkSetup):
        return {"kind": "icechunk", "base": state.base, "prepared": state.prepared,
                "fork": state.fork}  # fmt: skip
    return {"kind": "zarr", "metadata": dict(state.metadata)}


def _target_from_wire(wire: object, location: str) -> TargetSetup:
    if not isinstance(wire, Mapping):
        raise _refuse(location, "a target's setup is not a mapping")
    if wire.get("kind") == "icechunk":
        import icechunk  # the records module itself must not need it to name blobs

        return IcechunkSetup(
            base=field(wire, "base", str, location),
            prepared=field(wire, "prepared", icechunk.ForkSession, location),
            fork=field(wire, "fork", icechunk.ForkSession, location),
        )
    if wire.get("kind") == "zarr":
        metadata = field(wire, "metadata", dict, location)
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in metadata.items()):
            raise _refuse(location, "staged zarr metadata must map keys to bytes")
        return ZarrSetup(metadata=metadata)
    raise _refuse(location, f"unknown target kind {wire.get('kind')!r}")


def timeline_from_wire(wire: object, location: str) -> dict[str, tuple[float, float]]:
    """Step name -> (began, ended) in Unix seconds."""
    if not isinstance(wire, Mapping):
        raise _refuse(location, "a timeline must map step names to [began, ended]")
    spans: dict[str, tuple[float, float]] = {}
    for name, span in wire.items():
        if not (isinstance(span, list | tuple) and len(span) == 2
                and all(isinstance(t, int | float) for t in span)):  # fmt: skip
            raise _refuse(location, f"timeline step {name!r} is not [began, ended]")
        spans[str(name)] = (float(span[0]), float(span[1]))
    return spans


@attrs.frozen(kw_only=True)
class Setup(Record):
    """What worker 0 publishes once: the forks to write into, per target.

    ``token`` tells setups of one job apart (a namespace cleaned and set up
    again); results and the plan carry it so nothing of another setup is
    merged. ``job_start`` is the start every worker of the job uses, and
    ``decision`` what worker 0's ``prepare`` returned (any picklable value).
    ``deadline`` is when, in Unix seconds, the job's waits end by worker 0's
    wait policy (``WaitPolicy.ends_at``; None when it has none).

    The worker total, the deadline and the job start also travel as the
    frame's public claims (:class:`SetupHeader`): ``status`` and ``report``
    read them without unpickling the decision, which may hold a class only
    the workers import.
    """

    FORMAT: ClassVar[str] = "icechunk-coop/setup/1"
    CONTENT: ClassVar[Content] = "pickle"

    token: str
    job: str
    workers_total: int
    targets: Mapping[str, TargetSetup]
    job_start: str | None = None
    decision: Any = None
    deadline: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "token": self.token,
            "job": self.job,
            "workers_total": self.workers_total,
            "job_start": self.job_start,
            "deadline": self.deadline,
            "decision": self.decision,
            "targets": {name: _target_to_wire(s) for name, s in self.targets.items()},
            PUBLIC: SetupHeader.claims_of(self),
        }

    @classmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        w = check_format(wire, cls.FORMAT, location)
        targets = field(w, "targets", dict, location)
        return cls(
            token=field(w, "token", str, location),
            job=field(w, "job", str, location),
            workers_total=field(w, "workers_total", int, location),
            job_start=field(w, "job_start", (str, type(None)), location),
            targets={str(k): _target_from_wire(v, location) for k, v in targets.items()},
            decision=w.get("decision"),
            deadline=_deadline(w.get("deadline"), location),
        )


def _deadline(value: object, location: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(location, f"the deadline is {value!r}, not Unix seconds")
    return float(value)


@attrs.frozen(kw_only=True)
class SetupHeader:
    """The setup's public claims, read from its authenticated frame header alone.

    What a reader of a job needs (``status``, ``report``) without the
    setup's body: unpickling that runs worker 0's decision, which may hold
    a class only the workers import, and fails under another icechunk
    version. ``icechunk`` is the version that sealed the setup (every
    worker's must match it). ``deadline`` is when the job's waits
    end (see :class:`Setup`), None when worker 0's policy had no end.
    """

    FORMAT: ClassVar[str] = "icechunk-coop/setup-header/1"

    workers_total: int
    icechunk: str | None
    job_start: str | None = None
    deadline: float | None = None

    @classmethod
    def claims_of(cls, setup: Setup) -> dict[str, Any]:
        """The public claims a setup's frame carries."""
        return {
            "format": cls.FORMAT,
            "workers_total": setup.workers_total,
            "job_start": setup.job_start,
            "deadline": setup.deadline,
        }

    @classmethod
    def from_frame(cls, header: FrameHeader, location: str) -> Self | None:
        """The claims of an authenticated setup frame; None for one sealed before they existed."""
        if not header.public:
            return None
        w = check_format(header.public, cls.FORMAT, location)
        total = field(w, "workers_total", int, location)
        if isinstance(total, bool) or total < 1:
            raise _refuse(location, f"its header claims {total!r} workers")
        return cls(
            workers_total=total,
            icechunk=header.icechunk,
            job_start=field(w, "job_start", (str, type(None)), location),
            deadline=_deadline(w.get("deadline"), location),
        )


@attrs.frozen(kw_only=True)
class Writes:
    """What one worker wrote to one target, as its result carries it.

    ``keys``: every store key it set or deleted, with a digest of the bytes
    (chunks and ``zarr.json`` alike). ``metadata``: for a plain zarr target,
    the ``zarr.json`` documents it changed (they live in the worker's staging
    store until the last worker publishes them, so they travel whole).
    """

    keys: Mapping[str, str] = attrs.field(factory=dict)
    metadata: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)

    def to_wire(self) -> dict[str, Any]:
        return {"keys": dict(self.keys), "metadata": dict(self.metadata)}

    @classmethod
    def from_wire(cls, wire: object) -> Writes | None:
        """The record, or None if ``wire`` is not one (the caller names the blob)."""
        if not isinstance(wire, Mapping):
            return None
        keys, metadata = wire.get("keys", {}), wire.get("metadata", {})
        if not (isinstance(keys, Mapping) and isinstance(metadata, Mapping)):
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
            return None
        if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in metadata.items()):
            return None
        return cls(keys=dict(keys), metadata=dict(metadata))


@attrs.frozen(kw_only=True)
class Result(Record):
    """One worker's output: a fork per Icechunk target and the value ``work`` returned."""

    FORMAT: ClassVar[str] = "icechunk-coop/result/1"
    CONTENT: ClassVar[Content] = "pickle"

    token: str
    index: int
    workers_total: int
    forks: Mapping[str, icechunk.ForkSession] = attrs.field(repr=False)
    value: Any = None
    timeline: Mapping[str, tuple[float, float]] = attrs.field(factory=dict)
    #: What the worker wrote to each target (for the overlap check); absent in
    #: results of releases before it, which then never count as "the same bytes".
    writes: Mapping[str, Writes] = attrs.field(factory=dict, repr=False)

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "token": self.token,
            "index": self.index,
            "workers_total": self.workers_total,
            "forks": dict(self.forks),
            "value": self.value,
            "timeline": {k: list(v) for k, v in self.timeline.items()},
            "writes": {name: w.to_wire() for name, w in self.writes.items()},
        }

    @classmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        import icechunk

        w = check_format(wire, cls.FORMAT, location)
        forks = field(w, "forks", dict, location)
        if not all(isinstance(f, icechunk.ForkSession) for f in forks.values()):
            raise _refuse(location, "a result's forks must be Icechunk fork sessions")
        writes = field(w, "writes", dict, location) if "writes" in w else {}
        decoded = {name: Writes.from_wire(wire) for name, wire in writes.items()}
        if not all(isinstance(name, str) and d is not None for name, d in decoded.items()):
            raise _refuse(location, "a result's writes must map targets to keys and digests")
        return cls(
            token=field(w, "token", str, location),
            index=field(w, "index", int, location),
            workers_total=field(w, "workers_total", int, location),
            forks=forks,
            value=w.get("value"),
            timeline=timeline_from_wire(w.get("timeline", {}), location),
            writes={name: d for name, d in decoded.items() if d is not None},
        )


@attrs.frozen(kw_only=True)
class Plan(Record):
    """The results a finalizer merges, pinned before any target moves."""

    FORMAT: ClassVar[str] = "icechunk-coop/plan/1"
    CONTENT: ClassVar[Content] = "pickle"

    token: str
    results: tuple[Result, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "token": self.token,
            "results": [r.to_wire() for r in self.results],
        }

    @classmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        w = check_format(wire, cls.FORMAT, location)
        results = field(w, "results", list, location)
        return cls(
            token=field(w, "token", str, location),
            results=tuple(Result.from_wire(r, location) for r in results),
        )
