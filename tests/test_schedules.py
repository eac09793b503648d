"""Randomised schedules of real worker processes against moto behind the fault proxy.

A fixed, derandomised set runs here (``HYPOTHESIS_PROFILE=long`` or
``benchmarks/schedules.py`` for hundreds); every schedule must end with the
job committed exactly once, or (only under injected faults) stopped clearly
with nothing half-visible. ``tests/schedules.py`` says what is drawn and
checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from icechunk_coop.testing import FaultProxy, LocalS3, fault_proxy
from schedules import Schedule, crash_matrix, run_schedule, schedules

pytestmark = pytest.mark.slow
EXAMPLES = 200 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 6


@pytest.fixture(scope="module")
def proxy(moto_server: LocalS3) -> Iterator[FaultProxy]:
    """The module's fault proxy; each schedule sets its rates (credentials: ``s3_env``)."""
    with fault_proxy(moto_server.endpoint_url, seed=1) as running:
        yield running


def check(schedule: Schedule, proxy: FaultProxy, moto: LocalS3) -> None:
    verdict = run_schedule(schedule, proxy, moto)
    assert verdict.outcome != "violated", (
        f"{verdict.violations}\nreplay: uv run python benchmarks/schedules.py "
        f"--replay '{schedule.to_json()}'"
    )


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is seconds of processes
    suppress_health_check=list(HealthCheck),
)
@given(schedule=schedules())
def test_random_schedules_commit_once_or_fail_clearly(
    schedule: Schedule, proxy: FaultProxy, s3_env: LocalS3
) -> None:
    check(schedule, proxy, s3_env)


MATRIX = list(crash_matrix())
# A representative subset of crash point x role with real processes (all of them in-process
# in test_crash_points.py; benchmarks/schedules.py --matrix runs all with processes).
SUBSET = [
    s
    for s in MATRIX
    if {p.crash for p in s.pods} & {"after-publish-setup", "mid-work", "after-pin-plan",
                                    "mid-merge", "before-cleanup"}
]  # fmt: skip


@pytest.mark.parametrize(
    "schedule",
    SUBSET,
    ids=[
        f"{next(p.crash for p in s.pods if p.crash)}@{next(p.index for p in s.pods if p.crash)}"
        f"of{s.workers}"
        for s in SUBSET
    ],
)
def test_a_crash_then_a_restart_with_real_processes(
    schedule: Schedule, proxy: FaultProxy, s3_env: LocalS3
) -> None:
    check(schedule, proxy, s3_env)
