"""The polling rhythm: what ``WaitPolicy`` promises, checked with an injected sleep."""

from __future__ import annotations

import re
import threading
import time

import pytest

from icechunk_coop import ConfigurationError, WaitPolicy, WorkerIdentity
from icechunk_coop.protocol._context import meeting_for
from icechunk_coop.rendezvous._waiting import (
    DEADLINE_ENV,
    deadline_margin,
    policy_for_environment,
    poll_until,
    read_deadline,
)


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


# ---- the job's deadline ------------------------------------------------------------


def test_each_wait_gets_what_is_left_of_the_jobs_deadline() -> None:
    policy = WaitPolicy(timeout=100, ends_at=1000.0)
    assert policy.remaining(now=0.0) == 100  # the per-wait timeout, while it is shorter
    assert policy.remaining(now=950.0) == 50
    # At or past the end a wait still looks once, briefly: a blob already there is no timeout.
    assert policy.remaining(now=999.9) == policy.remaining(now=5000.0) == 2.0
    assert WaitPolicy(timeout=0.5, ends_at=1000.0).remaining(now=5000.0) == 0.5
    assert WaitPolicy(timeout=100).remaining(now=5000.0) == 100


def test_a_wait_past_the_deadline_finds_a_blob_already_there() -> None:
    policy = WaitPolicy(timeout=60, ends_at=time.time() - 10)
    assert poll_until(lambda: "here", policy, lambda waited: TimeoutError(waited)) == "here"


def test_a_wait_past_the_deadline_ends_at_once_however_long_the_timeout() -> None:
    policy = WaitPolicy(
        timeout=3600, ends_at=time.time() - 10, initial_interval=0.1, max_interval=0.2
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        poll_until(lambda: None, policy, lambda waited: TimeoutError(waited))
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("deadline", "margin"), [(120, 60), (1200, 60), (7200, 360), (14400, 600), (86400, 600)]
)
def test_the_margin_is_five_percent_within_one_to_ten_minutes(deadline: int, margin: int) -> None:
    assert deadline_margin(deadline) == margin


def test_a_policy_for_a_deadline_ends_the_margin_before_it() -> None:
    policy = WaitPolicy.for_deadline(14400, since=1_000_000.0, max_interval=5.0)
    assert policy.ends_at == 1_000_000.0 + 14400 - 600
    assert policy.timeout == 14400 - 600
    assert policy.max_interval == 5.0


@pytest.mark.parametrize("seconds", [0, 60, 119, float("nan"), True])
def test_a_deadline_too_short_to_wait_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(seconds))):
        WaitPolicy.for_deadline(seconds)


@pytest.mark.parametrize("ends_at", [0, -1.0, float("inf"), "soon"])
def test_a_bad_end_is_refused_by_name(ends_at: object) -> None:
    with pytest.raises(ConfigurationError, match="ends_at"):
        WaitPolicy(ends_at=ends_at)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, None), ("", None), ("7200", 7200), (" 14400 ", 14400)]
)
def test_the_deadline_variable_is_read_as_whole_seconds(raw: str | None, expected: int) -> None:
    environ = {} if raw is None else {DEADLINE_ENV: raw}
    assert read_deadline(environ) == expected


@pytest.mark.parametrize("raw", ["2h", "1.5", "-7200", "60", " ", "\uff17\uff12\uff10\uff10"])
def test_a_bad_deadline_variable_is_refused_naming_it_and_its_value(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        read_deadline({DEADLINE_ENV: raw})
    message = str(info.value)
    assert f"{DEADLINE_ENV}={raw!r}" in message
    assert "activeDeadlineSeconds" in message  # what to set it to


def test_the_package_policy_follows_the_deadline_variable() -> None:
    env = {DEADLINE_ENV: "7200"}
    assert policy_for_environment(None, {}) is None  # WaitPolicy's own 1 h then
    built = policy_for_environment(None, env, since=0.0)
    assert built == WaitPolicy.for_deadline(7200, since=0.0)
    # A policy passed in keeps its rhythm; the deadline decides how long waits last.
    mine = WaitPolicy(max_interval=2.0, timeout=600)
    followed = policy_for_environment(mine, env, since=0.0)
    assert followed is not None
    assert (followed.max_interval, followed.timeout, followed.ends_at) == (2.0, 6840, 6840.0)
    # A deadline chosen in code wins over the environment's.
    own = WaitPolicy.for_deadline(3600, since=0.0)
    assert policy_for_environment(own, env) is own


def test_a_bad_deadline_variable_stops_the_job_as_it_is_created() -> None:
    """Even a one-worker job, which never waits: the same Job spec would fail at N > 1."""
    identity = WorkerIdentity(worker_index=0, workers_total=1, job_name="j")
    with pytest.raises(ConfigurationError, match=re.escape(f"{DEADLINE_ENV}='4h'")):
        meeting_for(
            identity,
            rendezvous_url="memory://r",
            targets=(),
            storage_options=None,
            policy=None,
            environ={DEADLINE_ENV: "4h"},
        )


def test_a_crowd_of_waiters_spreads_its_first_polls_and_keeps_the_settled_pace() -> None:
    policy = WaitPolicy()
    assert policy.for_crowd(1) is policy and policy.for_crowd(16) is policy
    crowd = policy.for_crowd(63)  # 64 workers: 63 wait for the setup
    assert crowd.initial_interval == 4 * policy.initial_interval
    assert crowd.max_interval == policy.max_interval and crowd.timeout == policy.timeout
    assert policy.for_crowd(100_000).initial_interval == policy.max_interval  # capped
    fast = pauses({}, polls=2)
    assert fast[0] <= 0.05  # alone or in a small job, the first pause is tens of ms
