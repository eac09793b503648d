"""Randomised schedules of real worker processes against moto behind the fault proxy.

A fixed, derandomised set runs here (``HYPOTHESIS_PROFILE=long`` or
``benchmarks/schedules.py`` for hundreds); every schedule must end with the
job committed exactly once, or (only under injected faults) stopped clearly
with nothing half-visible. ``tests/schedules.py`` says what is drawn and
checked.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import attrs
import icechunk
import pytest
import s3fs
import zarr
from hypothesis import HealthCheck, Phase, given, settings

from icechunk_coop import icechunk_storage
from icechunk_coop.inspect import job_branch_prefix
from icechunk_coop.testing import CRASH_EXIT_CODE, FaultProxy, LocalS3, fault_proxy
from schedules import (
    DEADLINE,
    ROWS_PER_JOB,
    Pod,
    Reader,
    Schedule,
    _Ended,
    _excused,
    _judge,
    _may_stop,
    crash_matrix,
    run_schedule,
    schedules,
    seed_repository,
)

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


# Each schedule ends within its own deadline (a hang is a violation, judged); the default
# per-test timeout would cut a run of several schedules short on a loaded machine.
@pytest.mark.timeout(EXAMPLES * DEADLINE + 60)
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


def test_the_judge_sees_every_kind_of_broken_run(s3_env: LocalS3) -> None:
    """The checker can fail: a doubled commit, wrong data, a lost rival commit, a torn read,
    leftovers, a bad exit."""
    bucket = f"judge-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(bucket)
    url = f"s3://{bucket}/repo"
    before = seed_repository(url, s3_env.env)
    repo = icechunk.Repository.open(icechunk_storage(url, s3_env.env))
    job_id = "j-u"
    for n in range(2):  # the same job committing twice, and not what a serial run writes
        session = repo.writable_session("main")
        root = zarr.open_group(session.store, mode="a")
        root["temp"].resize((2 * ROWS_PER_JOB, 8))
        root.attrs["rows_written"] = ROWS_PER_JOB + n
        session.commit("twice", metadata={"icechunk_coop": {"job": job_id}})
    repo.create_branch(job_branch_prefix(job_id) + "0123abcd", before)  # nobody's: not excused
    s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_env.endpoint_url).pipe(
        f"{bucket}/rendezvous/{job_id}/result-1", b"left behind"
    )
    schedule = Schedule(
        workers=2, fresh=False, replica=False, interloper=None, faults=0.0, seed=0,
        pods=(Pod(index=0), Pod(index=1)),
    )  # fmt: skip
    reader = Reader(url, s3_env.env)
    reader.seen = [(before, ROWS_PER_JOB, True), ("torn", 2 * ROWS_PER_JOB, False)]
    ended = [_Ended(pod=Pod(index=1), code=1, output="RuntimeError: boom\n", killed=False)]
    rival = ["1CECHUNK0RIVA1C0MM1T"]  # a rival commit that is not in main's history
    broken = _judge(schedule, ended, False, job_id, bucket, s3_env, reader, {before}, rival)
    text = "\n".join(broken)
    for needle in (
        "hang",
        "worker 1 (pod) exited 1 (RuntimeError)",
        "the job committed 2 times",
        "temp differs",
        "final metadata wrong",
        "the other writer's commit was lost",
        "a reader saw a partial state",
        "rendezvous left ['result-1']",
        "repo: branches left ['icechunk-coop/j-u/0123abcd']",
    ):
        assert needle in text, (needle, broken)
    # Stopping is right only under injected faults or a rival really overlapping the job.
    assert not _may_stop(schedule, ended)


def test_a_leftover_branch_is_excused_only_if_its_maker_died_and_nobody_came_after() -> None:
    branch = job_branch_prefix("j-u") + "0123abcd"
    made = f"INFO icechunk_coop.targets._icechunk: job 'j-u': merging primary on {branch}\n"
    ok = 'OUTCOME {"status": "committed", "snapshots": {}}\n'
    died = _Ended(pod=Pod(index=1, twin=True), code=CRASH_EXIT_CODE, output=made, killed=False,
                  started=2.0, ended=5.0)  # fmt: skip
    earlier = _Ended(pod=Pod(index=1), code=0, output=ok, killed=False, started=0.0, ended=6.0)
    assert _excused(branch, "j-u", [earlier, died])  # its sibling cleaned up before it merged
    later = _Ended(pod=Pod(index=0), code=0, output=ok.replace("committed", "already-committed"),
                   killed=False, started=5.5, ended=7.0)  # fmt: skip
    assert not _excused(branch, "j-u", [earlier, died, later])  # that one should have cleaned
    lived = attrs.evolve(died, code=0, output=made + ok)
    assert not _excused(branch, "j-u", [earlier, lived])  # it lived: its own cleanup's job
    assert not _excused(branch, "j-u", [earlier])  # nobody says it made it
    assert not _excused(job_branch_prefix("other") + "0123abcd", "j-u", [died])  # not the job's
