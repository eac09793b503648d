"""The error tree: its shape, its kinds, what each error says about retrying, and pickling."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest

import icechunk_coop
import icechunk_coop.errors
from icechunk_coop import ConfigurationError, CoopError, RetryableError, WaitPolicy, dynamical
from icechunk_coop.errors import (
    AlreadyCommittedError,
    BranchKeptMovingError,
    ChunkOverlapError,
    CommitConflictError,
    CommitOutcomeError,
    ForeignPayloadError,
    ForeignResultError,
    IcechunkVersionError,
    IdentityError,
    JobNameReusedError,
    MissingLocationError,
    MissingSecretError,
    OverlapError,
    PayloadAuthenticationError,
    PayloadError,
    PayloadFormatError,
    RegionOverlapError,
    ShrinkRefusedError,
    StorageUnreachableError,
    WaitTimeoutError,
    WorkerFailedError,
    WorkersTotalMismatchError,
)

# The tree, pinned: each class's direct bases (in MRO order), retryable, kind.
# A kind is a public name (logs, metrics, exit reports): changing one breaks
# whoever keys on it, so this table changes only on purpose.
TREE: dict[type[CoopError], tuple[tuple[type[BaseException], ...], bool, str]] = {
    CoopError: ((Exception,), False, "coop"),
    ConfigurationError: ((CoopError, ValueError), False, "configuration"),
    IdentityError: ((ConfigurationError,), False, "identity"),
    MissingSecretError: ((ConfigurationError,), False, "missing-secret"),
    MissingLocationError: ((ConfigurationError,), False, "missing-location"),
    WorkersTotalMismatchError: ((ConfigurationError,), False, "workers-total-mismatch"),
    JobNameReusedError: ((ConfigurationError,), False, "job-name-reused"),
    PayloadError: ((CoopError,), False, "payload"),
    PayloadFormatError: ((PayloadError,), False, "payload-format"),
    PayloadAuthenticationError: ((PayloadError,), False, "payload-authentication"),
    ForeignPayloadError: ((PayloadError,), False, "foreign-payload"),
    IcechunkVersionError: ((PayloadError,), False, "icechunk-version"),
    RetryableError: ((CoopError,), True, "retryable"),
    WaitTimeoutError: ((RetryableError, TimeoutError), True, "wait-timeout"),
    WorkerFailedError: ((RetryableError,), True, "worker-failed"),
    ForeignResultError: ((RetryableError,), True, "foreign-result"),
    StorageUnreachableError: ((RetryableError,), True, "storage-unreachable"),
    CommitOutcomeError: ((CoopError,), False, "commit-outcome"),
    CommitConflictError: ((CommitOutcomeError,), False, "commit-conflict"),
    AlreadyCommittedError: ((CommitOutcomeError,), False, "already-committed"),
    ShrinkRefusedError: ((CommitOutcomeError,), False, "shrink-refused"),
    OverlapError: ((CommitOutcomeError,), False, "overlap"),
    ChunkOverlapError: ((OverlapError,), False, "chunk-overlap"),
    RegionOverlapError: ((OverlapError,), False, "region-overlap"),
    BranchKeptMovingError: ((CommitOutcomeError, RetryableError), True, "branch-kept-moving"),
}

# Bases to catch, never raised as themselves by the library.
ABSTRACT = {CoopError, PayloadError, RetryableError, CommitOutcomeError, OverlapError}

# Every error, built as the library builds it.
CASES: list[CoopError] = [
    CoopError("demo: write failed in worker(s) 1; see the output above"),
    ConfigurationError("bad url"),
    IdentityError("WORKER_INDEX='x'"),
    MissingSecretError("no secret"),
    MissingLocationError(url="s3://nope/rv", role="rendezvous"),
    MissingLocationError(url="s3://b/ro", role="target 'primary'", detail="AccessDenied"),
    WorkersTotalMismatchError(job="j", worker_index=1, expected=3, got=5),
    JobNameReusedError(job="j", committed_at=1.7e9, committed_start=None, own_start=None),
    JobNameReusedError(
        job="j",
        committed_at=1.7e9,
        committed_start="2026-01-01T00:00:00+00:00",
        own_start="2026-01-02T00:00:00+00:00",
    ),
    PayloadFormatError(location="s3://b/j/setup", reason="truncated"),
    PayloadAuthenticationError(location="l", reason="bad tag"),
    ForeignPayloadError(location="l", reason="job b"),
    IcechunkVersionError(location="l", reason="2.2"),
    WaitTimeoutError(location="l", missing=["result-1"], expected=3, waited_seconds=2.0),
    WaitTimeoutError(location="l", missing=["setup"], expected=1, waited_seconds=9, job="j"),
    WorkerFailedError(location="l", failures={"result-1": "boom"}, job="j"),
    ForeignResultError(job="j", worker_index=2, reason="another setup"),
    StorageUnreachableError(url="s3://b/rv", detail="connection refused"),
    CommitConflictError(job="j", target="primary", conflicts=["x at /a"], committed=[]),
    AlreadyCommittedError(job="j", snapshot=None),
    AlreadyCommittedError(job="j", snapshot="ABC123"),
    ShrinkRefusedError(job="j", dimension="init_time", visible=8, final=7),
    BranchKeptMovingError(job="j", attempts=3, committed=["replica0"]),
    ChunkOverlapError(
        job="j",
        target="primary",
        array="/x",
        first="(1,)",
        count=2,
        workers=[0, 1],
        compared=True,
        plain=False,
        keys=["x/c/1", "x/c/2"],
    ),
    ChunkOverlapError(
        job="j",
        target="zarr0",
        array="/x",
        first="(1,)",
        count=1,
        workers=[2, 5],
        compared=False,
        plain=True,
        keys=["x/c/1"],
    ),
    RegionOverlapError(
        job="j",
        array="temp",
        dimension="time",
        size=10,
        block=1,
        jobs=["#1 (time 10:15)", "#2 (time 15:20)"],
        workers=[0, 1],
    ),
]


def _library_subclasses(cls: type[CoopError]) -> set[type[CoopError]]:
    # Only the library's own: the refused classes the tests below define are not.
    direct = {sub for sub in cls.__subclasses__() if sub.__module__ == "icechunk_coop.errors"}
    return direct.union(*(_library_subclasses(sub) for sub in direct))


def _case_id(error: object) -> str:
    return type(error).__name__


@pytest.mark.parametrize("cls", list(TREE), ids=lambda cls: cls.__name__)
def test_the_tree_is_pinned(cls: type[CoopError]) -> None:
    bases, retryable, kind = TREE[cls]
    assert cls.__bases__ == bases
    assert cls.retryable is retryable
    assert cls.kind == kind
    # Catching a branch is the handler's whole decision: "retry" is exactly RetryableError.
    assert cls.retryable is issubclass(cls, RetryableError)


def test_the_tree_names_every_error_class() -> None:
    # A class added to _errors.py (exported or not) must be placed in the tree here.
    assert _library_subclasses(CoopError) | {CoopError} == set(TREE)


def test_kinds_are_unique_and_stable() -> None:
    kinds = {cls: cls.kind for cls in TREE}
    assert len(set(kinds.values())) == len(kinds)
    assert {cls.__name__: kind for cls, kind in kinds.items()} == {
        "CoopError": "coop",
        "ConfigurationError": "configuration",
        "IdentityError": "identity",
        "MissingSecretError": "missing-secret",
        "MissingLocationError": "missing-location",
        "WorkersTotalMismatchError": "workers-total-mismatch",
        "JobNameReusedError": "job-name-reused",
        "PayloadError": "payload",
        "PayloadFormatError": "payload-format",
        "PayloadAuthenticationError": "payload-authentication",
        "ForeignPayloadError": "foreign-payload",
        "IcechunkVersionError": "icechunk-version",
        "RetryableError": "retryable",
        "WaitTimeoutError": "wait-timeout",
        "WorkerFailedError": "worker-failed",
        "ForeignResultError": "foreign-result",
        "StorageUnreachableError": "storage-unreachable",
        "CommitOutcomeError": "commit-outcome",
        "CommitConflictError": "commit-conflict",
        "AlreadyCommittedError": "already-committed",
        "ShrinkRefusedError": "shrink-refused",
        "OverlapError": "overlap",
        "ChunkOverlapError": "chunk-overlap",
        "RegionOverlapError": "region-overlap",
        "BranchKeptMovingError": "branch-kept-moving",
    }


def test_the_compatibility_relations_hold() -> None:
    # Callers that predate the tree catch the builtin bases; they must keep working.
    assert issubclass(WorkersTotalMismatchError, ValueError)
    assert issubclass(WaitTimeoutError, TimeoutError)
    assert issubclass(MissingLocationError, ValueError)
    assert issubclass(BranchKeptMovingError, CommitOutcomeError)
    assert dynamical.ShrinkRefusedError is ShrinkRefusedError
    assert "ShrinkRefusedError" in dynamical.__all__


@pytest.mark.parametrize("error", CASES, ids=_case_id)
def test_every_error_survives_pickling(error: CoopError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.args == error.args
    assert vars(back) == vars(error)
    assert back.message == str(error)


def test_notes_survive_pickling() -> None:
    error = WaitTimeoutError(location="l", missing=["result-1"], expected=3, waited_seconds=2.0)
    error.add_note("while waiting for the setup")
    back = pickle.loads(pickle.dumps(error))
    assert back.__notes__ == ["while waiting for the setup"]
    assert vars(back) == vars(error)


def test_every_public_error_is_covered() -> None:
    public = {
        obj
        for name in icechunk_coop.errors.__all__
        if isinstance(obj := getattr(icechunk_coop.errors, name), type)
        and issubclass(obj, CoopError)
    }
    assert public - ABSTRACT - {type(e) for e in CASES} == set()
    assert public == set(TREE)  # everything in the tree is exported


def test_facts_are_stored_once_as_plain_attributes() -> None:
    error = CommitConflictError(job="j", target="primary", conflicts=["x at /a"], committed=[])
    assert vars(error) == {
        "job": "j",
        "target": "primary",
        "conflicts": ["x at /a"],
        "committed": [],
        "message": str(error),
    }


def test_a_subclass_must_declare_its_own_kind() -> None:
    with pytest.raises(TypeError, match="own kebab-case kind"):

        class UnkindedError(RetryableError):  # inherits "retryable": ambiguous
            pass

    with pytest.raises(TypeError, match="kebab-case"):

        class BadlyKindedError(CoopError):
            kind = "Bad_Kind"


def test_a_subclass_pickling_cannot_rebuild_is_refused() -> None:
    with pytest.raises(TypeError, match="must name every parameter"):

        class StarredError(CoopError):
            kind = "starred"

            def __init__(self, *parts: str) -> None:
                super().__init__(" ".join(parts))


def test_messages_carry_the_facts() -> None:
    timeout = WaitTimeoutError(
        location="s3://b/rv/j", missing=["result-1", "result-4"], expected=8, waited_seconds=61
    )
    assert "result-1, result-4" in str(timeout) and "2 of 8" in str(timeout)
    conflict = CommitConflictError(
        job="j", target="primary", conflicts=["x at /a"], committed=["replica0"]
    )
    assert "replica0" in str(conflict) and "x at /a" in str(conflict)
    mismatch = WorkersTotalMismatchError(job="j", worker_index=1, expected=3, got=5)
    assert "WORKERS_TOTAL=5" in str(mismatch) and "set up for 3" in str(mismatch)


def test_missing_location_says_what_to_create() -> None:
    plain = MissingLocationError(url="s3://nope/rv", role="rendezvous")
    assert str(plain) == (
        "rendezvous at s3://nope/rv does not exist or cannot be written. Fix: create the "
        "bucket (or fix the URL), and run the job again; nothing was written."
    )
    repo = MissingLocationError(url="/r", role="the repository", fix="run a backfill first")
    assert "Fix: run a backfill first, and run the job again" in str(repo)
    detailed = MissingLocationError(url="s3://b", role="target 'primary'", detail="NoSuchBucket")
    assert str(detailed).startswith(
        "target 'primary' at s3://b does not exist or cannot be written: NoSuchBucket. "
    )
    assert not detailed.retryable and isinstance(detailed, ValueError)


def test_storage_unreachable_says_what_to_check() -> None:
    error = StorageUnreachableError(url="http://minio:9000/b", detail="connection refused")
    assert str(error) == (
        "cannot reach the storage at http://minio:9000/b: connection refused. Check the "
        "endpoint (AWS_ENDPOINT_URL), the network, the credentials and the store's error "
        "rate; the worker can be retried once it answers."
    )
    assert error.retryable


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("timeout", 0, "> 0"),
        ("timeout", -5.0, "> 0"),
        ("timeout", math.inf, "finite"),
        ("timeout", math.nan, "finite"),
        ("timeout", "60", "number of seconds"),
        ("timeout", None, "number of seconds"),
        ("timeout", True, "number of seconds"),
        ("initial_interval", -1, "> 0"),
        ("initial_interval", "0.1", "number of seconds"),
        ("max_interval", 0, "> 0"),
        ("max_interval", [10], "number of seconds"),
        ("multiplier", 0.5, ">= 1"),
        ("multiplier", "2", ">= 1"),
        ("multiplier", math.inf, "finite"),
        ("sleep", 3, "callable"),
    ],
)
def test_wait_policy_refuses_bad_values_by_name(field: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        WaitPolicy(**{field: value})
    message = str(caught.value)
    assert field in message and expected in message and repr(value) in message, message
    assert isinstance(caught.value, ValueError)  # callers catching ValueError still do


def test_wait_policy_refuses_a_first_pause_longer_than_the_cap() -> None:
    with pytest.raises(ConfigurationError, match="initial_interval=30 is longer than") as caught:
        WaitPolicy(initial_interval=30, max_interval=10)
    assert "Lower initial_interval or raise max_interval" in str(caught.value)
    # The default initial_interval (0.025 s) counts too.
    with pytest.raises(ConfigurationError, match=r"max_interval=0\.01"):
        WaitPolicy(max_interval=0.01)


def test_wait_policy_accepts_good_values() -> None:
    policy = WaitPolicy(timeout=5, initial_interval=1, max_interval=1, multiplier=1)
    assert policy.timeout == 5 and policy.initial_interval == policy.max_interval


def test_a_worker_failure_names_the_workers_in_index_order() -> None:
    """The index to look at, not only the blob it owed ("worker(s) result-1 failed" was not)."""
    failures = {"result-10": "OSError: x", "result-2": "ValueError: boom", "setup": "KeyError: k"}
    text = str(WorkerFailedError(location="s3://b/rv/j", failures=failures, job="j"))
    assert text.startswith(
        "job 'j': worker 0 failed (setup will not come): KeyError: k; "
        "worker 2 failed (result-2 will not come): ValueError: boom; "
        "worker 10 failed (result-10 will not come): OSError: x. "
    ), text
    assert "re-run those indexes" in text and "s3://b/rv/j" in text
