"""How long and how often to poll: a value object and a tenacity loop.

Waiting is where cost hides. 1,000 workers probing once a second for an
hour is 3.6 M requests, and S3 answers a burst with 503 SlowDown. So polls
start fast (a blob that is already there costs one probe), back off
geometrically with jitter up to ``max_interval``, and every wait has a
deadline. tenacity's ``stop_before_delay`` keeps the deadline honest (it does
not overshoot by one more sleep).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import attrs
import tenacity

__all__ = ["WaitPolicy", "poll_until"]

T = TypeVar("T")


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 seconds, got {value!r}")


@attrs.frozen(kw_only=True)
class WaitPolicy:
    """Deadline and polling rhythm of a wait.

    ``timeout`` has a default because a hang is never what anyone wants;
    set it from your pods' ``activeDeadlineSeconds`` minus the time the work
    needs. ``max_interval`` trades latency for requests: a long wait polls
    every 0.5-1 x ``max_interval`` (0.75 on average), so at 10 s a waiting
    worker makes about 8 polls a minute (``benchmarks/`` measures it).
    """

    timeout: float = attrs.field(default=3600.0, validator=_positive)
    initial_interval: float = attrs.field(default=0.25, validator=_positive)
    max_interval: float = attrs.field(default=10.0, validator=_positive)
    multiplier: float = attrs.field(default=1.5)
    sleep: Callable[[float], None] = attrs.field(default=time.sleep, eq=False, repr=False)

    @multiplier.validator
    def _check_multiplier(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < 1:
            raise ValueError(f"multiplier must be >= 1 (no shrinking waits), got {value!r}")


def poll_until[T](
    probe: Callable[[], T | None], policy: WaitPolicy, on_timeout: Callable[[float], Exception]
) -> T:
    """Call ``probe`` until it returns something other than None.

    ``probe`` may raise to stop the wait early (a failure marker was seen).
    When the deadline passes, ``on_timeout(seconds_waited)`` builds the error.
    """
    started = time.monotonic()
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
        result = retrying(probe)
    except tenacity.RetryError:
        raise on_timeout(time.monotonic() - started) from None
    assert result is not None
    return result
