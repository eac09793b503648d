"""How long and how often to poll: a value object and a tenacity loop.

Waiting is where cost hides. 1,000 workers probing once a second for an
hour is 3.6 M requests, and S3 answers a burst with 503 SlowDown. So polls
start fast (a blob that is already there costs one probe), back off
geometrically with jitter up to ``max_interval``, and every wait has a
deadline. tenacity's ``stop_before_delay`` keeps the deadline honest (it does
not overshoot by one more sleep), and each probe gets only what is left of it:
one probe inside the storage client's own retries (botocore, s3fs) can last
minutes against a failing store.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import attrs
import tenacity

from icechunk_coop._errors import ConfigurationError

__all__ = ["WaitPolicy", "poll_until"]

T = TypeVar("T")


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

    ``timeout`` has a default because a hang is never what anyone wants;
    set it from your pods' ``activeDeadlineSeconds`` minus the time the work
    needs. ``max_interval`` trades latency for requests: a long wait polls
    every 0.5-1 x ``max_interval`` (0.75 on average), so at 10 s a waiting
    worker makes about 8 polls a minute (``benchmarks/`` measures it).

    Bad values are refused here, with a ConfigurationError naming the field,
    rather than deep inside tenacity on the first wait (which may be an hour
    into the job, when worker 0 finally waits for its peers).
    """

    timeout: float = attrs.field(default=3600.0, validator=_seconds)
    initial_interval: float = attrs.field(default=0.25, validator=_seconds)
    max_interval: float = attrs.field(default=10.0, validator=_seconds)
    multiplier: float = attrs.field(default=1.5)
    sleep: Callable[[float], None] = attrs.field(default=time.sleep, eq=False, repr=False)

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


def poll_until[T](
    probe: Callable[[], T | None], policy: WaitPolicy, on_timeout: Callable[[float], Exception]
) -> T:
    """Call ``probe`` until it returns something other than None.

    ``probe`` may raise to stop the wait early (a failure marker was seen).
    When the deadline passes, ``on_timeout(seconds_waited)`` builds the error,
    also when a probe is still running then (a store retrying a failing
    request inside its client).
    """
    started = time.monotonic()
    deadline = started + policy.timeout
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
        stop=tenacity.stop_before_delay(policy.timeout),
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
