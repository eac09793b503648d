"""The blobs of a job: their names, and their content as typed, versioned records.

Every blob a job writes is one of six records (the three JSON markers are
in ``_markers``). Each is a frozen attrs class with a format tag, encoded
and decoded by one codec (``_codec``): anything that is not a record of the
expected kind and version fails closed with the blob's location and the bad
fields in the error, the way filelock reads its markers.

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

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import attrs

from icechunk_coop.wire._codec import OPTIONAL, decode, encode, tagged_union
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
    "committed_name",
    "failure_name",
    "index_of_result",
    "result_name",
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


class Record:
    """What every record shares: its format tag and how it travels (see ``_codec``)."""

    FORMAT: ClassVar[str]
    CONTENT: ClassVar[Content]

    def to_wire(self) -> dict[str, Any]:
        """The plain dict this record travels as (with its format tag)."""
        return encode(self)  # type: ignore[arg-type]

    @classmethod
    def from_wire(cls, wire: object, location: str) -> Self:
        """The record a wire dict holds; anything else is refused, naming ``location``."""
        return decode(wire, cls, location)


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


tagged_union(TargetSetup, {IcechunkSetup: "icechunk", ZarrSetup: "zarr"})


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
        return {**super().to_wire(), PUBLIC: SetupHeader.claims_of(self)}


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

    workers_total: int = attrs.field(validator=attrs.validators.ge(1))
    icechunk: str | None = attrs.field(
        default=None, metadata=OPTIONAL
    )  # from the frame, not the claims
    job_start: str | None = None
    deadline: float | None = None

    @classmethod
    def claims_of(cls, setup: Setup) -> dict[str, Any]:
        """The public claims a setup's frame carries (the frame itself says its icechunk)."""
        claims = cls(workers_total=setup.workers_total, job_start=setup.job_start,
                     deadline=setup.deadline)  # fmt: skip
        return encode(claims)

    @classmethod
    def from_frame(cls, header: FrameHeader, location: str) -> Self | None:
        """The claims of an authenticated setup frame; None for one sealed before they existed."""
        if not header.public:
            return None
        claims = {**header.public, "icechunk": header.icechunk}
        return decode(claims, cls, location)


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


@attrs.frozen(kw_only=True)
class Plan(Record):
    """The results a finalizer merges, pinned before any target moves."""

    FORMAT: ClassVar[str] = "icechunk-coop/plan/1"
    CONTENT: ClassVar[Content] = "pickle"

    token: str
    results: tuple[Result, ...]
