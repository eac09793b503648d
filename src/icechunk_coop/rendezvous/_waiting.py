"""How long and how often to poll: a value object and a tenacity loop.

Waiting is where cost hides. 1,000 workers probing once a second for an
hour is 3.6 M requests, and S3 answers a burst with 503 SlowDown. So polls
start fast (a blob that is already there costs one probe), back off
geometrically with jitter up to ``max_interval``, and every wait has a
deadline. tenacity's ``stop_before_delay`` keeps the deadline honest (it does
not overshoot by one more sleep), and each probe gets only what is left of it:
one probe inside the storage client's own retries (botocore, s3fs) can last
minutes against a failing store.

A worker's waits also end before its orchestrator kills it: with
``ICECHUNK_COOP_DEADLINE_SECONDS`` set to the Job's ``activeDeadlineSeconds``
(:func:`policy_for_environment`), no wait runs past the job's deadline minus
a margin (:func:`deadline_margin`), so a missing worker is reported by name
instead of by a killed pod.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import tenacity

from icechunk_coop.errors import ConfigurationError

__all__ = [
    "DEADLINE_ENV",
    "WaitPolicy",
    "deadline_margin",
    "policy_for_environment",
    "poll_until",
    "read_deadline",
]

T = TypeVar("T")

#: The job's deadline in seconds, the same value as a Kubernetes Job's
#: ``activeDeadlineSeconds``: the one setting both the Job and its workers' waits follow.
DEADLINE_ENV: Final = "ICECHUNK_COOP_DEADLINE_SECONDS"

#: The shortest deadline accepted: two minutes leaves at least one minute of waiting
#: after the smallest margin.
MIN_DEADLINE: Final = 120

#: How many workers waiting for one blob may poll at the first pace (see ``for_crowd``).
CROWD: Final = 16

#: A wait that starts at or after the deadline still looks once, for this long:
#: a blob that is already there is not a timeout.
_LAST_LOOK: Final = 2.0


def _number(name: str, value: object, expected: str) -> float:
    """``value`` as a finite real number, or a ConfigurationError naming ``name``.

    bool is refused although it is an int: ``timeout=True`` is a mistake, not one
    second. NaN and infinity are refused too: every wait needs a real deadline.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(
            f"WaitPolicy {name} must be {expected}, got {value!r} ({type(value).__name__})"
        )
    return value


def _seconds(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    expected = "a finite number of seconds > 0"
    if not _number(attribute.name, value, expected) > 0:
        raise ConfigurationError(f"WaitPolicy {attribute.name} must be {expected}, got {value!r}")


@attrs.frozen(kw_only=True)
class WaitPolicy:
    """Deadline and polling rhythm of a wait.

    ``timeout`` bounds each wait and has a default because a hang is never
    what anyone wants. ``ends_at`` (Unix time, None for none) bounds every
    wait together: no wait goes on past it, whatever ``timeout`` says. Under
    an orchestrator's deadline set ``ICECHUNK_COOP_DEADLINE_SECONDS`` to it
    (a job created from that environment follows it, whatever policy it was
    given) or build the policy with :meth:`for_deadline`: waits then end a
    little before the pod is killed.
    ``max_interval`` trades latency for requests: a long wait polls
    every 0.5-1 x ``max_interval`` (0.75 on average), so at 10 s a waiting
    worker makes about 8 polls a minute (``benchmarks/`` measures it).
    The first pauses are short (25-50 ms, then doubling): a blob that lands
    while a worker waits (the setup, the last result) is usually seen within
    tens of milliseconds, which is what the job's critical path waits on.
    Doubling reaches the cap after nine polls, about 4 s, so the settled rate
    is the same as with slower first polls and a wait costs about two polls
    more in all.

    Bad values are refused here, with a ConfigurationError naming the field,
    rather than deep inside tenacity on the first wait (which may be an hour
    into the job, when worker 0 finally waits for its peers).
    """

    timeout: float = attrs.field(default=3600.0, validator=_seconds)
    initial_interval: float = attrs.field(default=0.025, validator=_seconds)
    max_interval: float = attrs.field(default=10.0, validator=_seconds)
    multiplier: float = attrs.field(default=2.0)
    ends_at: float | None = attrs.field(default=None)
    sleep: Callable[[float], None] = attrs.field(default=time.sleep, eq=False, repr=False)

    @classmethod
    def for_deadline(
        cls, seconds: float, *, since: float | None = None, **rhythm: Any
    ) -> WaitPolicy:
        """A policy whose waits all end :func:`deadline_margin` before ``seconds`` have passed.

        ``seconds`` is the job's deadline (a Kubernetes Job's
        ``activeDeadlineSeconds``), counted from ``since`` (Unix time; default:
        now, which is about when this worker started). Each wait may then last
        as long as what is left (``timeout`` is the whole budget), so a
        worker that waits for a slow peer waits as long as the Job lets it,
        and no longer. ``rhythm`` sets the other fields (``max_interval``,
        ``sleep``, ...).
        """
        budget = _check_deadline("seconds", seconds) - deadline_margin(seconds)
        start = time.time() if since is None else since
        return cls(timeout=budget, ends_at=start + budget, **rhythm)

    def for_crowd(self, waiters: int) -> WaitPolicy:
        """This policy for a wait that ``waiters`` workers make at once, for one blob.

        The setup is awaited by every worker but worker 0. Up to :data:`CROWD`
        of them poll at the first pace; more stretch their first pause in
        proportion, so that together they poll no faster than ``CROWD`` would
        (a thousand workers probing every 25 ms would be 120,000 requests a
        second, far over S3's 5,500 reads a second per prefix, and a busy
        node's CPU). The settled pace (``max_interval``) is unchanged.
        """
        factor = math.ceil(waiters / CROWD) if waiters > CROWD else 1
        if factor == 1:
            return self
        first = min(self.initial_interval * factor, self.max_interval)
        return attrs.evolve(self, initial_interval=first)

    def remaining(self, now: float | None = None) -> float:
        """How long a wait that starts ``now`` (Unix time) may last: ``timeout``, or less."""
        if self.ends_at is None:
            return self.timeout
        left = self.ends_at - (time.time() if now is None else now)
        return min(self.timeout, max(left, _LAST_LOOK))

    @ends_at.validator
    def _check_ends_at(self, attribute: attrs.Attribute[float | None], value: object) -> None:
        if value is not None and not _number(attribute.name, value, "a Unix time") > 0:
            raise ConfigurationError(f"WaitPolicy ends_at must be a Unix time > 0, got {value!r}")

    @max_interval.validator
    def _check_intervals(self, attribute: attrs.Attribute[float], value: float) -> None:
        # Validators run once every field is set, and initial_interval's own check
        # ran first, so both are positive numbers here.
        if self.initial_interval > value:
            raise ConfigurationError(
                f"WaitPolicy initial_interval={self.initial_interval!r} is longer than "
                f"max_interval={value!r}, the cap on every pause. Lower initial_interval "
                "or raise max_interval."
            )

    @multiplier.validator
    def _check_multiplier(self, attribute: attrs.Attribute[float], value: object) -> None:
        expected = "a finite number >= 1 (no shrinking waits)"
        if not _number(attribute.name, value, expected) >= 1:
            raise ConfigurationError(f"WaitPolicy multiplier must be {expected}, got {value!r}")

    @sleep.validator
    def _check_sleep(self, attribute: attrs.Attribute[object], value: object) -> None:
        if not callable(value):
            raise ConfigurationError(
                f"WaitPolicy sleep must be a callable taking seconds (like time.sleep), "
                f"got {value!r}"
            )


def deadline_margin(seconds: float) -> float:
    """How long before a job's deadline of ``seconds`` every wait ends: 5 %, within 1-10 min.

    Kubernetes counts ``activeDeadlineSeconds`` from the Job's start, and at
    the deadline it stops every pod at once (SIGTERM, then SIGKILL after the
    grace period). A worker counts from its own start, later than the Job's
    by however long its pod was Pending (scheduling, a node scale-up, an
    image pull). So the margin must cover, first, reporting: a probe still in
    flight, writing the failure marker that stops the other workers, logging
    the error that names the missing indexes, exiting: well under a minute,
    hence the floor of 60 s. Then the lag of this pod's start behind the
    Job's, which grows with the size of the job: 5 % of the deadline (6 min of
    a 2 h Job, 10 min of 4 h), capped at 10 min so a long job does not give
    much of its life away. A pod that starts later still (a retry late in the
    Job's life) may be killed first; the Job then fails as
    ``DeadlineExceeded``, which is still true, only less precise.
    """
    return min(max(60.0, 0.05 * seconds), 600.0)


def _check_deadline(name: str, value: object) -> float:
    seconds = _number(name, value, f"a number of seconds >= {MIN_DEADLINE}")
    if seconds < MIN_DEADLINE:
        raise ConfigurationError(
            f"a job deadline of {value!r} s is too short: expected at least {MIN_DEADLINE} s, "
            f"since waits end {deadline_margin(seconds):.0f} s before the deadline so the "
            "error is reported before the pod is killed"
        )
    return seconds


def read_deadline(environ: Mapping[str, str]) -> int | None:
    """``ICECHUNK_COOP_DEADLINE_SECONDS`` as whole seconds, or None when unset or empty.

    Read once, as the job is created, so a typo stops every worker at once
    rather than the first time one waits (maybe hours into the job).
    """
    raw = environ.get(DEADLINE_ENV, "")
    text = raw.strip()
    if not raw:
        return None
    fix = (
        f"expected whole seconds >= {MIN_DEADLINE}, the same value as the Job's "
        f"activeDeadlineSeconds (e.g. 14400 for 4 h); unset {DEADLINE_ENV} to keep the "
        "WaitPolicy's own timeout"
    )
    if not text.isascii() or not text.isdigit():
        raise ConfigurationError(f"{DEADLINE_ENV}={raw!r} is not a number of seconds: {fix}")
    seconds = int(text)
    if seconds < MIN_DEADLINE:
        raise ConfigurationError(f"{DEADLINE_ENV}={raw!r} is too short: {fix}")
    return seconds


def policy_for_environment(
    policy: WaitPolicy | None, environ: Mapping[str, str], *, since: float | None = None
) -> WaitPolicy | None:
    """The wait policy a job built from ``environ`` uses.

    Without ``ICECHUNK_COOP_DEADLINE_SECONDS``, ``policy`` as given. With it,
    the deadline decides how long waits last, as :meth:`WaitPolicy.for_deadline`
    says: a policy passed in keeps its rhythm (intervals, ``sleep``) and takes
    the deadline's ``timeout`` and ``ends_at``, so one setting governs the Job
    and its waits alike. A policy with an ``ends_at`` of its own is used as
    is: a deadline chosen in code (an example's ``--deadline``) wins over the
    environment's.
    """
    seconds = read_deadline(environ)
    if seconds is None or (policy is not None and policy.ends_at is not None):
        return policy
    deadline = WaitPolicy.for_deadline(seconds, since=since)
    if policy is None:
        return deadline
    return attrs.evolve(policy, timeout=deadline.timeout, ends_at=deadline.ends_at)


class _OverranError(Exception):
    """A probe still ran when the deadline passed."""


def _within[T](probe: Callable[[], T], seconds: float) -> T:
    """``probe()``, or :class:`_OverranError` once ``seconds`` pass.

    The probe runs on a daemon thread, left to finish on its own when it
    overruns: a blocking read cannot be cancelled, and the wait's caller is
    about to stop with an error anyway.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(probe())
        except BaseException as exc:  # handed to the waiting thread as is
            failure.append(exc)

    thread = threading.Thread(target=run, name="icechunk-coop-probe", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    if thread.is_alive():
        raise _OverranError
    if failure:
        raise failure[0]
    return outcome[0]


def _after_one_miss[T](probe: Callable[[], T | None]) -> Callable[[], T | None]:
    """``probe``, but its first call answers None (a miss) without probing."""
    first = True

    def probe_later() -> T | None:
        nonlocal first
        if first:
            first = False
            return None
        return probe()

    return probe_later


def poll_until[T](
    probe: Callable[[], T | None],
    policy: WaitPolicy,
    on_timeout: Callable[[float], Exception],
    *,
    pause_first: bool = False,
) -> T:
    """Call ``probe`` until it returns something other than None.

    ``probe`` may raise to stop the wait early (a failure marker was seen).
    When the deadline passes, ``on_timeout(seconds_waited)`` builds the error,
    also when a probe is still running then (a store retrying a failing
    request inside its client). ``pause_first``: the caller has just looked,
    so the first probe comes after the policy's first pause, not at once.
    """
    if pause_first:
        probe = _after_one_miss(probe)
    started = time.monotonic()
    timeout = policy.remaining()
    deadline = started + timeout
    # "Equal jitter": half of each pause grows geometrically, the other half is
    # random on top. Workers that started together drift apart, yet a long
    # wait still polls about every 0.75 * max_interval, not every 0.5 * (as
    # full jitter would: twice the requests for the same worst-case latency).
    half = policy.max_interval / 2
    wait: tenacity.wait.wait_base = tenacity.wait_exponential(
        multiplier=policy.initial_interval, exp_base=policy.multiplier, max=half
    ) + tenacity.wait_random_exponential(
        multiplier=policy.initial_interval, exp_base=policy.multiplier, max=half
    )
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda value: value is None),
        stop=tenacity.stop_before_delay(timeout),
        wait=wait,
        sleep=policy.sleep,
        reraise=True,
    )
    try:
        result = retrying(lambda: _within(probe, deadline - time.monotonic()))
    except (tenacity.RetryError, _OverranError):
        raise on_timeout(time.monotonic() - started) from None
    assert result is not None
    return result
