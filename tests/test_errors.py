"""The error tree: its shape, what each error says about retrying, and pickling."""

from __future__ import annotations

import pickle

import pytest

import icechunk_coop
from icechunk_coop import (
    AlreadyCommittedError,
    BranchKeptMovingError,
    CommitConflictError,
    ConfigurationError,
    CoopError,
    ForeignPayloadError,
    ForeignResultError,
    IcechunkVersionError,
    IdentityError,
    MissingSecretError,
    PayloadAuthenticationError,
    PayloadError,
    PayloadFormatError,
    WaitTimeoutError,
    WorkerFailedError,
    WorkersTotalMismatchError,
)
from icechunk_coop.dynamical import ShrinkRefusedError

# Every error, built as the library builds it: (error, its bases, retryable?).
CASES: list[tuple[CoopError, tuple[type[BaseException], ...], bool]] = [
    (ConfigurationError("bad url"), (CoopError, ValueError), False),
    (IdentityError("WORKER_INDEX='x'"), (ConfigurationError,), False),
    (MissingSecretError("no secret"), (ConfigurationError,), False),
    (PayloadFormatError(location="s3://b/j/setup", reason="truncated"), (PayloadError,), False),
    (PayloadAuthenticationError(location="l", reason="bad tag"), (PayloadError,), False),
    (ForeignPayloadError(location="l", reason="job b"), (PayloadError,), False),
    (IcechunkVersionError(location="l", reason="2.2"), (PayloadError,), False),
    (
        WaitTimeoutError(location="l", missing=["result-1"], expected=3, waited_seconds=2.0),
        (CoopError, TimeoutError),
        True,
    ),
    (WorkerFailedError(location="l", failures={"result-1": "boom"}, job="j"), (CoopError,), True),
    (
        WorkersTotalMismatchError(job="j", worker_index=1, expected=3, got=4),
        (CoopError, ValueError),
        False,
    ),
    (ForeignResultError(job="j", worker_index=2, reason="old setup"), (CoopError,), True),
    (
        CommitConflictError(job="j", target="primary", conflicts=["x at /a"], committed=[]),
        (CoopError,),
        False,
    ),
    (ShrinkRefusedError(job="j", dimension="init_time", visible=8, final=7), (CoopError,), False),
    (BranchKeptMovingError(job="j", attempts=3, committed=["replica0"]), (CoopError,), True),
    (AlreadyCommittedError(job="j", snapshot=None), (CoopError,), False),
]


@pytest.mark.parametrize(("error", "bases", "retryable"), CASES, ids=lambda v: type(v).__name__)
def test_tree_retryability_and_pickling(
    error: CoopError, bases: tuple[type[BaseException], ...], retryable: bool
) -> None:
    for base in bases:
        assert isinstance(error, base)
    assert error.retryable is retryable
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)


def test_every_public_error_is_covered() -> None:
    public = {
        obj
        for name in icechunk_coop.__all__
        if isinstance(obj := getattr(icechunk_coop, name), type) and issubclass(obj, CoopError)
    }
    abstract = {CoopError, PayloadError}  # bases: never raised as themselves
    assert public - abstract - {type(e) for e, _, _ in CASES} == set()


def test_messages_carry_the_facts() -> None:
    timeout = WaitTimeoutError(
        location="s3://b/rv/j", missing=["result-1", "result-4"], expected=8, waited_seconds=61
    )
    assert "result-1, result-4" in str(timeout) and "2 of 8" in str(timeout)
    conflict = CommitConflictError(
        job="j", target="primary", conflicts=["x at /a"], committed=["replica0"]
    )
    assert "replica0" in str(conflict) and "x at /a" in str(conflict)
