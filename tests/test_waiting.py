"""The polling rhythm: what ``WaitPolicy`` promises, checked with an injected sleep."""

from __future__ import annotations

import threading

import pytest

from icechunk_coop import WaitPolicy
from icechunk_coop._waiting import poll_until


def pauses(policy_kw: dict[str, float], polls: int) -> list[float]:
    slept: list[float] = []
    calls = [0]

    def probe() -> str | None:
        calls[0] += 1
        return "here" if calls[0] == polls else None

    policy = WaitPolicy(sleep=slept.append, **policy_kw)
    assert poll_until(probe, policy, lambda waited: TimeoutError(waited)) == "here"
    assert calls[0] == polls  # one probe per pause, nothing skipped
    return slept


def test_pauses_grow_then_stay_between_half_and_all_of_max_interval() -> None:
    slept = pauses({"initial_interval": 0.25, "max_interval": 10.0}, polls=400)
    assert len(slept) == 399
    assert slept[0] <= 0.5  # a blob that is nearly there is seen quickly
    assert all(0 < s <= 10.0 for s in slept)
    steady = slept[40:]
    assert all(s >= 5.0 for s in steady)
    # Jitter: workers that started together do not stay in lockstep.
    assert len({round(s, 3) for s in steady}) > len(steady) // 2
    mean = sum(steady) / len(steady)
    assert 6.5 < mean < 8.5  # about 0.75 * max_interval: ~8 polls a minute


def test_a_blob_already_there_costs_one_probe_and_no_pause() -> None:
    assert pauses({}, polls=1) == []


@pytest.mark.parametrize(
    ("field", "value"), [("timeout", 0), ("initial_interval", -1), ("max_interval", 0)]
)
def test_bad_policies_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        WaitPolicy(**{field: value})


def test_shrinking_waits_are_refused() -> None:
    with pytest.raises(ValueError, match="multiplier"):
        WaitPolicy(multiplier=0.5)


def test_a_probe_still_running_at_the_deadline_ends_the_wait_then() -> None:
    """A store retrying inside its client must not stretch a wait past its deadline."""
    release = threading.Event()
    probes: list[str] = []

    def stuck() -> None:
        probes.append("started")
        release.wait(60)  # a read inside botocore's retries
        probes.append("returned")

    with pytest.raises(TimeoutError, match="waited"):
        poll_until(
            stuck,
            WaitPolicy(timeout=0.5, initial_interval=0.1, max_interval=0.2),
            lambda waited: TimeoutError(f"waited {waited:.1f}s"),
        )
    assert probes == ["started"]  # the wait ended while the probe still ran
    release.set()


def test_what_a_probe_raises_reaches_the_waiter() -> None:
    def failing() -> None:
        raise LookupError("worker 2 failed")

    with pytest.raises(LookupError, match="worker 2"):
        poll_until(failing, WaitPolicy(timeout=5), lambda waited: TimeoutError())
