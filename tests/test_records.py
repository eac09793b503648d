"""The records' codec fails closed: a wrong field is refused by name, never coerced."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import attrs
import pytest

from icechunk_coop.errors import PayloadFormatError
from icechunk_coop.wire._markers import Committed, Failure
from icechunk_coop.wire._payload import FrameHeader
from icechunk_coop.wire._records import (
    Plan,
    Record,
    Result,
    Setup,
    SetupHeader,
    Writes,
    ZarrSetup,
)

SETUP = Setup(token="t", job="j-u", workers_total=2, targets={"z": ZarrSetup(metadata={})})
RESULT = Result(token="t", index=1, workers_total=2, forks={}, timeline={"work": (1.0, 2.0)},
                writes={"z": Writes(keys={"a/c/1": "d"})})  # fmt: skip


def refused(kind: type[Record], wire: Any, *words: str) -> None:
    with pytest.raises(PayloadFormatError) as info:
        kind.from_wire(wire, "bucket/rv/j-u/blob")
    message = str(info.value)
    assert "bucket/rv/j-u/blob" in message
    for word in words:
        assert word in message, message


def test_every_record_reads_back_what_it_wrote() -> None:
    committed = Committed(snapshots={"primary": "S"}, at=1.5, workers_total=2,
                          timeline={0: {"work": (1.0, 2.0)}}, job_start="2026-01-01")  # fmt: skip
    failure = Failure(name="result-1", summary="OSError", at=2.0, worker=1, attempt=0)
    for record in (SETUP, RESULT, Plan(token="t", results=(RESULT,)), committed, failure):
        assert type(record).from_wire(record.to_wire(), "x") == record


def test_a_scalar_of_the_wrong_type_is_refused_by_field_not_coerced() -> None:
    refused(Committed, {**Committed(snapshots={}, at=1.0).to_wire(), "at": "yesterday"}, "at")
    refused(Failure, {**Failure(name="n", summary="s", at=1.0).to_wire(), "worker": "1"}, "worker")
    refused(Setup, {**SETUP.to_wire(), "workers_total": True}, "workers_total")
    refused(Setup, {**SETUP.to_wire(), "token": 7}, "token")


def test_a_json_number_is_a_float_where_a_float_is_wanted() -> None:
    wire = {**Committed(snapshots={}, at=1.0).to_wire(), "at": 3}
    assert Committed.from_wire(wire, "x").at == 3.0


def test_a_missing_field_is_refused_by_name() -> None:
    wire = SETUP.to_wire()
    del wire["job"]
    refused(Setup, wire, "job", "missing")


def test_a_result_whose_forks_are_not_sessions_is_refused() -> None:
    refused(Result, {**RESULT.to_wire(), "forks": {"primary": "not a session"}}, "forks")


def test_a_target_of_an_unknown_kind_is_refused() -> None:
    wire = {**SETUP.to_wire(), "targets": {"z": {"kind": "hdf5", "metadata": {}}}}
    refused(Setup, wire, "targets", "hdf5")


def test_a_nested_record_of_another_format_is_refused() -> None:
    wire = Plan(token="t", results=(RESULT,)).to_wire()
    wire["results"][0]["format"] = "icechunk-coop/result/9"
    refused(Plan, wire, "icechunk-coop/result/9")


def test_a_timeline_that_is_not_began_ended_is_refused() -> None:
    refused(Result, {**RESULT.to_wire(), "timeline": {"work": [1.0]}}, "timeline")
    wire = Committed(snapshots={}, at=1.0).to_wire()
    refused(Committed, {**wire, "timeline": {"zero": {}}}, "timeline")


def test_a_record_of_another_kind_or_version_is_refused_before_its_fields() -> None:
    refused(Setup, RESULT.to_wire(), "icechunk-coop/result/1", "same icechunk-coop version")
    refused(Setup, ["a", "list"], "list")


def test_setup_claims_of_no_workers_are_refused() -> None:
    claims = {**SetupHeader.claims_of(SETUP), "workers_total": 0}
    header = FrameHeader(job="j-u", name="setup", content="pickle", icechunk="2.3.0",
                         public=claims)  # fmt: skip
    with pytest.raises(PayloadFormatError, match="workers_total"):
        SetupHeader.from_frame(header, "x")
    good = FrameHeader(job="j-u", name="setup", content="pickle", icechunk="2.3.0",
                       public=SetupHeader.claims_of(SETUP))  # fmt: skip
    assert SetupHeader.from_frame(good, "x") == SetupHeader(workers_total=2, icechunk="2.3.0")


@attrs.frozen
class _Theirs:
    """A user's own attrs class: a decision or a value holds it as it is."""

    name: str


def test_the_users_own_objects_travel_whole() -> None:
    setup = attrs.evolve(SETUP, decision=[_Theirs(name="job-1")])
    result = attrs.evolve(RESULT, value={"jobs": (_Theirs(name="job-1"),)})
    assert setup.to_wire()["decision"] == [_Theirs(name="job-1")]
    assert result.to_wire()["value"] == {"jobs": (_Theirs(name="job-1"),)}
    assert Setup.from_wire(setup.to_wire(), "x") == setup
    assert Result.from_wire(result.to_wire(), "x") == result


PREPARED = textwrap.dedent(
    """
    import json, sys
    from icechunk_coop.wire import _codec
    from icechunk_coop.wire._markers import Committed, Failure
    from icechunk_coop.wire._records import Plan, Result, Setup, Writes, ZarrSetup
    if sys.argv[1] == "ahead":  # what a job does while it is built
        _codec.prepare(Committed, Setup, Plan, Result, Failure)
    setup = Setup(token="t", job="j-u", workers_total=2, targets={"z": ZarrSetup(metadata={})})
    result = Result(token="t", index=1, workers_total=2, forks={}, timeline={"work": (1.0, 2.0)},
                    writes={"z": Writes(keys={"a/c/1": "d"})})
    plan = Plan(token="t", results=(result,))
    same = Plan.from_wire(plan.to_wire(), "x") == plan
    print(json.dumps([setup.to_wire(), plan.to_wire(), same]))
    """
)


def test_a_codec_prepared_ahead_writes_what_one_prepared_at_first_use_writes() -> None:
    """Each in a fresh interpreter, so the hooks really are built by ``prepare`` or by first use."""
    argv = [sys.executable, "-c", PREPARED]
    runs = [
        subprocess.run([*argv, mode], capture_output=True, text=True, check=True).stdout
        for mode in ("ahead", "first-use")
    ]
    assert runs[0] == runs[1]
    setup, plan, same = json.loads(runs[0])
    assert setup["format"] and plan["results"][0]["format"] and same
