"""Worker identity from each orchestrator's environment, and every way it is refused."""

from __future__ import annotations

import pickle
import re
from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest

from icechunk_coop.errors import ConfigurationError, IdentityError
from icechunk_coop.identity._worker import WorkerIdentity

START = datetime(2025, 2, 19, 21, 20, tzinfo=UTC)


def m(*parts: str) -> str:
    """A regex requiring every part, in order, literally."""
    return ".*".join(re.escape(p) for p in parts)


# ---- the acceptance check -------------------------------------------------------


def test_acceptance_cronjob_indexed_job() -> None:
    ident = WorkerIdentity.from_env(
        {
            "JOB_COMPLETION_INDEX": "3",
            "WORKERS_TOTAL": "4",
            "JOB_NAME": "gfs-update-29000000",
            "CRONJOB_NAME": "gfs-update",
        }
    )
    assert ident.worker_index == 3
    assert ident.workers_total == 4
    assert ident.is_last
    assert not ident.is_first
    assert ident.job_start == START
    assert ident.orchestrator == "kubernetes"
    assert ident.job_id == "gfs-update-29000000"


# ---- each orchestrator ----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"WORKER_INDEX": "0", "WORKERS_TOTAL": "2", "JOB_NAME": "local"},
            {
                "worker_index": 0,
                "workers_total": 2,
                "job_name": "local",
                "orchestrator": "explicit",
            },
            id="explicit",
        ),
        pytest.param(
            {
                "JOB_COMPLETION_INDEX": "1",
                "WORKERS_TOTAL": "3",
                "JOB_NAME": "ingest",
                "JOB_UID": "0b6f-41c2",
            },
            {
                "worker_index": 1,
                "workers_total": 3,
                "job_name": "ingest",
                "job_uid": "0b6f-41c2",
                "orchestrator": "kubernetes",
            },
            id="kubernetes",
        ),
        pytest.param(
            {
                "AWS_BATCH_JOB_ARRAY_INDEX": "7",
                "AWS_BATCH_JOB_ARRAY_SIZE": "10",
                "AWS_BATCH_JOB_ID": "abc-123:7",
            },
            {
                "worker_index": 7,
                "workers_total": 10,
                "job_name": "abc-123",
                "orchestrator": "aws-batch",
            },
            id="aws-batch",
        ),
        pytest.param(
            {
                "AWS_BATCH_JOB_ARRAY_INDEX": "0",
                "AWS_BATCH_JOB_ARRAY_SIZE": "2",
                "AWS_BATCH_JOB_ID": "abc-123",
            },
            {
                "worker_index": 0,
                "workers_total": 2,
                "job_name": "abc-123",
                "orchestrator": "aws-batch",
            },
            id="aws-batch-id-without-suffix",
        ),
        pytest.param(
            {
                "AWS_BATCH_JOB_ARRAY_INDEX": "1",
                "WORKERS_TOTAL": "2",
                "AWS_BATCH_JOB_ID": "abc:1",
            },
            {"worker_index": 1, "workers_total": 2, "job_name": "abc", "orchestrator": "aws-batch"},
            id="aws-batch-total-from-WORKERS_TOTAL",
        ),
        pytest.param(
            {
                "CLOUD_RUN_TASK_INDEX": "2",
                "CLOUD_RUN_TASK_COUNT": "5",
                "CLOUD_RUN_JOB": "regrid",
                "CLOUD_RUN_EXECUTION": "regrid-x7k2p",
            },
            {
                "worker_index": 2,
                "workers_total": 5,
                "job_name": "regrid",
                "job_uid": "regrid-x7k2p",
                "orchestrator": "cloud-run",
            },
            id="cloud-run",
        ),
        pytest.param(
            {"BATCH_TASK_INDEX": "4", "BATCH_TASK_COUNT": "8", "BATCH_JOB_ID": "job-0a1b"},
            {
                "worker_index": 4,
                "workers_total": 8,
                "job_name": "job-0a1b",
                "orchestrator": "google-batch",
            },
            id="google-batch",
        ),
        pytest.param(
            {"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1", "JOB_NAME": "named"},
            {
                "worker_index": 0,
                "workers_total": 1,
                "job_name": "named",
                "orchestrator": "google-batch",
            },
            id="google-batch-without-job-id",
        ),
        pytest.param(
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "3",
                "SLURM_ARRAY_TASK_MAX": "6",
                "SLURM_ARRAY_JOB_ID": "991",
            },
            {
                "worker_index": 2,
                "workers_total": 4,
                "job_name": "slurm-991",
                "orchestrator": "slurm",
            },
            id="slurm",
        ),
    ],
)
def test_orchestrators(env: dict[str, str], expected: dict[str, object]) -> None:
    ident = WorkerIdentity.from_env(env)
    quiet = {"attempt": None, "restart": None, "pod": None}  # not in these environments
    expected = {"job_uid": None, "job_start": None, **quiet, **expected}
    assert attrs.asdict(ident) == expected


@pytest.mark.parametrize(
    ("env", "name_var"),
    [
        (
            {
                "AWS_BATCH_JOB_ARRAY_INDEX": "0",
                "AWS_BATCH_JOB_ARRAY_SIZE": "1",
                "AWS_BATCH_JOB_ID": "a:0",
            },
            "AWS_BATCH_JOB_ID",
        ),
        (
            {"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "1", "CLOUD_RUN_JOB": "crj"},
            "CLOUD_RUN_JOB",
        ),
        ({"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1", "BATCH_JOB_ID": "gb"}, "BATCH_JOB_ID"),
        (
            {
                "SLURM_ARRAY_TASK_ID": "0",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_MAX": "0",
                "SLURM_ARRAY_JOB_ID": "1",
            },
            "SLURM_ARRAY_JOB_ID",
        ),
    ],
)
def test_explicit_job_name_and_uid_win(env: dict[str, str], name_var: str) -> None:
    ident = WorkerIdentity.from_env({**env, "JOB_NAME": "mine", "JOB_UID": "u1"})
    assert (ident.job_name, ident.job_uid, ident.job_id) == ("mine", "u1", "mine-u1")


def test_cloud_run_uid_gives_job_id() -> None:
    ident = WorkerIdentity.from_env(
        {
            "CLOUD_RUN_TASK_INDEX": "0",
            "CLOUD_RUN_TASK_COUNT": "1",
            "CLOUD_RUN_JOB": "regrid",
            "CLOUD_RUN_EXECUTION": "regrid-x7k2p",
        }
    )
    assert ident.job_id == "regrid-regrid-x7k2p"


def test_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "JOB_COMPLETION_INDEX",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "CLOUD_RUN_TASK_INDEX",
        "BATCH_TASK_INDEX",
        "SLURM_ARRAY_TASK_ID",
        "JOB_UID",
        "JOB_START",
        "CRONJOB_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORKER_INDEX", "1")
    monkeypatch.setenv("WORKERS_TOTAL", "2")
    monkeypatch.setenv("JOB_NAME", "from-os")
    ident = WorkerIdentity.from_env()
    assert (ident.worker_index, ident.workers_total, ident.job_name) == (1, 2, "from-os")


# ---- precedence -----------------------------------------------------------------

EVERYTHING = {
    "JOB_COMPLETION_INDEX": "1",
    "AWS_BATCH_JOB_ARRAY_INDEX": "2",
    "AWS_BATCH_JOB_ARRAY_SIZE": "6",
    "CLOUD_RUN_TASK_INDEX": "3",
    "CLOUD_RUN_TASK_COUNT": "6",
    "BATCH_TASK_INDEX": "4",
    "BATCH_TASK_COUNT": "6",
    "SLURM_ARRAY_TASK_ID": "5",
    "SLURM_ARRAY_TASK_MIN": "0",
    "SLURM_ARRAY_TASK_MAX": "5",
    "SLURM_ARRAY_TASK_COUNT": "6",
    "WORKERS_TOTAL": "6",
    "JOB_NAME": "p",
}


@pytest.mark.parametrize(
    ("drop", "index", "orchestrator"),
    [
        ((), 0, "explicit"),
        (("WORKER_INDEX",), 1, "kubernetes"),
        (("WORKER_INDEX", "JOB_COMPLETION_INDEX"), 2, "aws-batch"),
        (("WORKER_INDEX", "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"), 3, "cloud-run"),
        (
            (
                "WORKER_INDEX",
                "JOB_COMPLETION_INDEX",
                "AWS_BATCH_JOB_ARRAY_INDEX",
                "CLOUD_RUN_TASK_INDEX",
            ),
            4,
            "google-batch",
        ),
        (
            (
                "WORKER_INDEX",
                "JOB_COMPLETION_INDEX",
                "AWS_BATCH_JOB_ARRAY_INDEX",
                "CLOUD_RUN_TASK_INDEX",
                "BATCH_TASK_INDEX",
            ),
            5,
            "slurm",
        ),
    ],
)
def test_precedence(drop: tuple[str, ...], index: int, orchestrator: str) -> None:
    env = {**EVERYTHING, "WORKER_INDEX": "0"}
    for name in drop:
        del env[name]
    ident = WorkerIdentity.from_env(env)
    assert (ident.worker_index, ident.orchestrator) == (index, orchestrator)


def test_empty_values_count_as_unset() -> None:
    ident = WorkerIdentity.from_env(
        {
            "WORKER_INDEX": "",
            "JOB_COMPLETION_INDEX": "0",
            "WORKERS_TOTAL": "1",
            "JOB_NAME": "k",
            "JOB_UID": "",
            "JOB_START": "",
            "CRONJOB_NAME": "",
        }
    )
    assert (ident.orchestrator, ident.job_uid, ident.job_start) == ("kubernetes", None, None)


# ---- Slurm normalisation --------------------------------------------------------


def slurm(task: int, **extra: str) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "42", **extra}


@pytest.mark.parametrize(
    ("env", "index", "total"),
    [
        pytest.param(
            slurm(
                8,
                SLURM_ARRAY_TASK_MIN="0",
                SLURM_ARRAY_TASK_MAX="12",
                SLURM_ARRAY_TASK_STEP="4",
                SLURM_ARRAY_TASK_COUNT="4",
            ),
            2,
            4,
            id="stepped-0-12:4",
        ),
        pytest.param(
            slurm(
                12, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="12", SLURM_ARRAY_TASK_STEP="4"
            ),
            3,
            4,
            id="stepped-count-from-range",
        ),
        pytest.param(
            slurm(
                1, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="9", SLURM_ARRAY_TASK_COUNT="9"
            ),
            0,
            9,
            id="starts-at-1",
        ),
        pytest.param(
            slurm(9, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="9"),
            8,
            9,
            id="last-no-count-no-step",
        ),
        pytest.param(
            slurm(3, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="5"),
            2,
            5,
            id="no-max",
        ),
        pytest.param(
            slurm(2, SLURM_ARRAY_TASK_MIN="0", WORKERS_TOTAL="3"),
            2,
            3,
            id="total-from-WORKERS_TOTAL",
        ),
    ],
)
def test_slurm_normalisation(env: dict[str, str], index: int, total: int) -> None:
    ident = WorkerIdentity.from_env(env)
    assert (ident.worker_index, ident.workers_total, ident.job_name) == (index, total, "slurm-42")
    assert ident.orchestrator == "slurm"


SPARSE = {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9"}


@pytest.mark.parametrize("task", [1, 5, 9])
def test_slurm_sparse_refused_for_every_task(task: int) -> None:
    with pytest.raises(IdentityError, match=m("sparse", "WORKER_INDEX", "WORKERS_TOTAL")) as info:
        WorkerIdentity.from_env(slurm(task, **SPARSE))
    assert f"SLURM_ARRAY_TASK_ID='{task}'" in str(info.value)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        pytest.param(
            slurm(
                2, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_STEP="4", SLURM_ARRAY_TASK_COUNT="4"
            ),
            "SLURM_ARRAY_TASK_ID='2' does not fit",
            id="off-step",
        ),
        pytest.param(
            slurm(8, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="3"),
            "SLURM_ARRAY_TASK_ID='8' does not fit",
            id="index-beyond-count",
        ),
        pytest.param(
            slurm(0, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="3"),
            "SLURM_ARRAY_TASK_ID='0' lies outside",
            id="below-min",
        ),
        pytest.param(
            slurm(10, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="9"),
            "SLURM_ARRAY_TASK_ID='10' lies outside",
            id="above-max",
        ),
    ],
)
def test_slurm_irregular(env: dict[str, str], needle: str) -> None:
    with pytest.raises(IdentityError, match=m(needle, "WORKER_INDEX", "WORKERS_TOTAL")):
        WorkerIdentity.from_env(env)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        pytest.param(slurm(0), "SLURM_ARRAY_TASK_MIN is not set", id="no-min"),
        pytest.param(
            slurm(0, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_STEP="0"),
            "SLURM_ARRAY_TASK_STEP='0'",
            id="step-zero",
        ),
        pytest.param(
            slurm(0, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_STEP="x"),
            "SLURM_ARRAY_TASK_STEP='x'",
            id="step-not-number",
        ),
        pytest.param(
            slurm(0, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="0"),
            "SLURM_ARRAY_TASK_COUNT='0'",
            id="count-zero",
        ),
        pytest.param(
            slurm(0, SLURM_ARRAY_TASK_MIN="-1"), "SLURM_ARRAY_TASK_MIN='-1'", id="min-negative"
        ),
        pytest.param(
            slurm(0, SLURM_ARRAY_TASK_MIN="0"),
            "neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX",
            id="no-count-no-max",
        ),
        pytest.param(
            slurm(0, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="3", WORKERS_TOTAL="3"),
            "WORKERS_TOTAL='3' contradicts",
            id="contradicting-WORKERS_TOTAL",
        ),
        pytest.param(
            {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "0"},
            "JOB_NAME is not set (nor SLURM_ARRAY_JOB_ID)",
            id="no-array-job-id",
        ),
    ],
)
def test_slurm_bad_values(env: dict[str, str], needle: str) -> None:
    with pytest.raises(IdentityError, match=re.escape(needle)):
        WorkerIdentity.from_env(env)


# ---- job_start ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-02-19T21:20:00Z", START),
        ("2025-02-19T21:20:00+00:00", START),
        ("2025-02-19T22:20:00+01:00", START),
        ("2025-02-19T16:20:00-05:00", START),
    ],
)
def test_job_start_explicit(raw: str, expected: datetime) -> None:
    ident = WorkerIdentity.from_env(
        {"WORKER_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": "j", "JOB_START": raw}
    )
    assert ident.job_start == expected
    assert ident.job_start is not None
    assert ident.job_start.tzinfo is UTC


def test_job_start_explicit_wins_over_cronjob_suffix() -> None:
    ident = WorkerIdentity.from_env(
        {
            "JOB_COMPLETION_INDEX": "0",
            "WORKERS_TOTAL": "1",
            "JOB_NAME": "gfs-update-1",
            "CRONJOB_NAME": "gfs-update",
            "JOB_START": "2025-02-19T21:20:00Z",
        }
    )
    assert ident.job_start == START


def test_job_start_from_cronjob_minutes() -> None:
    ident = WorkerIdentity.from_env(
        {"JOB_COMPLETION_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": "x-0", "CRONJOB_NAME": "x"}
    )
    assert ident.job_start == datetime(1970, 1, 1, tzinfo=UTC)


def test_cronjob_name_with_dashes_only_strips_the_digits() -> None:
    ident = WorkerIdentity.from_env(
        {
            "JOB_COMPLETION_INDEX": "0",
            "WORKERS_TOTAL": "1",
            "JOB_NAME": "a-b-29000001",
            "CRONJOB_NAME": "a-b",
        }
    )
    assert ident.job_start == START + timedelta(minutes=1)


def test_no_start_without_job_start_or_cronjob() -> None:
    ident = WorkerIdentity.from_env(
        {"WORKER_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": "gfs-update-29000000"}
    )
    assert ident.job_start is None


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        pytest.param({"JOB_START": "2025-02-19"}, "JOB_START='2025-02-19'", id="date-only"),
        pytest.param({"JOB_START": "yesterday"}, "JOB_START='yesterday'", id="garbage"),
        pytest.param(
            {"CRONJOB_NAME": "gfs-update", "JOB_NAME": "gfs-update-" + "9" * 30},
            "JOB_NAME='gfs-update-" + "9" * 30 + "'",
            id="cronjob-suffix-overflow",
        ),
    ],
)
def test_job_start_bad(extra: dict[str, str], needle: str) -> None:
    env = {"JOB_COMPLETION_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": "j", **extra}
    with pytest.raises(IdentityError, match=m(needle, "expected")) as info:
        WorkerIdentity.from_env(env)
    if extra.get("JOB_START", "").startswith("2025"):
        assert "time of day" in str(info.value)
    if "CRONJOB_NAME" in extra:
        assert "JOB_START" in str(info.value)


def test_a_naive_job_start_means_utc() -> None:
    ident = WorkerIdentity.from_env(
        {
            "WORKER_INDEX": "0",
            "WORKERS_TOTAL": "1",
            "JOB_NAME": "j",
            "JOB_START": "2025-02-19T21:20",
        }
    )
    assert ident.job_start == datetime(2025, 2, 19, 21, 20, tzinfo=UTC)
    naive = WorkerIdentity(
        worker_index=0, workers_total=1, job_name="j", job_start=datetime(2025, 1, 1)
    )
    assert naive.job_start == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("variable", ["CRONJOB_NAME", "CRON_JOB_NAME"])
@pytest.mark.parametrize("job_name", ["manual-run", "gfs-update-manual"])
def test_a_job_made_by_hand_from_a_cronjob_has_no_start(variable: str, job_name: str) -> None:
    # No pod may read a start off its own clock: worker 0 decides it for the job.
    env = {"JOB_COMPLETION_INDEX": "0", "WORKERS_TOTAL": "2", "JOB_NAME": job_name}
    assert WorkerIdentity.from_env({**env, variable: "gfs-update"}).job_start is None


def test_cron_job_name_reads_like_cronjob_name() -> None:
    env = {"JOB_COMPLETION_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": "x-29000000"}
    assert (
        WorkerIdentity.from_env({**env, "CRON_JOB_NAME": "x"}).job_start
        == WorkerIdentity.from_env({**env, "CRONJOB_NAME": "x"}).job_start
        is not None
    )


# ---- bad numbers and missing variables -----------------------------------------


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        pytest.param(
            {"WORKER_INDEX": "x", "WORKERS_TOTAL": "2"},
            ("WORKER_INDEX='x'", "non-negative integer"),
            id="index-nan",
        ),
        pytest.param(
            {"WORKER_INDEX": "-1", "WORKERS_TOTAL": "2"},
            ("WORKER_INDEX='-1'",),
            id="index-negative",
        ),
        pytest.param(
            {"WORKER_INDEX": "1.0", "WORKERS_TOTAL": "2"}, ("WORKER_INDEX='1.0'",), id="index-float"
        ),
        pytest.param(
            {"WORKER_INDEX": "2", "WORKERS_TOTAL": "2"},
            ("WORKER_INDEX='2' is out of range for WORKERS_TOTAL='2': expected 0..1",),
            id="index-too-big",
        ),
        pytest.param(
            {"WORKER_INDEX": "0", "WORKERS_TOTAL": "0"},
            ("WORKERS_TOTAL='0'", ">= 1"),
            id="total-zero",
        ),
        pytest.param(
            {"WORKER_INDEX": "0", "WORKERS_TOTAL": "-3"},
            ("WORKERS_TOTAL='-3'",),
            id="total-negative",
        ),
        pytest.param(
            {"WORKER_INDEX": "0", "WORKERS_TOTAL": "two"}, ("WORKERS_TOTAL='two'",), id="total-nan"
        ),
        pytest.param(
            {"WORKER_INDEX": "0"},
            ("WORKERS_TOTAL is not set", "WORKER_INDEX='0'"),
            id="total-missing",
        ),
        pytest.param(
            {"JOB_COMPLETION_INDEX": "4", "WORKERS_TOTAL": "4"},
            ("JOB_COMPLETION_INDEX='4' is out of range for WORKERS_TOTAL='4': expected 0..3",),
            id="k8s-index-too-big",
        ),
        pytest.param(
            {"JOB_COMPLETION_INDEX": "a", "WORKERS_TOTAL": "4"},
            ("JOB_COMPLETION_INDEX='a'",),
            id="k8s-index-nan",
        ),
        pytest.param(
            {"JOB_COMPLETION_INDEX": "0"},
            (
                "WORKERS_TOTAL is not set",
                "JOB_COMPLETION_INDEX='0'",
                "pod spec must pass WORKERS_TOTAL",
            ),
            id="k8s-total-missing",
        ),
        pytest.param(
            {"AWS_BATCH_JOB_ARRAY_INDEX": "3", "AWS_BATCH_JOB_ARRAY_SIZE": "3"},
            ("AWS_BATCH_JOB_ARRAY_INDEX='3' is out of range for AWS_BATCH_JOB_ARRAY_SIZE='3'",),
            id="aws-index-too-big",
        ),
        pytest.param(
            {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "0"},
            ("AWS_BATCH_JOB_ARRAY_SIZE='0'",),
            id="aws-size-zero",
        ),
        pytest.param(
            {"AWS_BATCH_JOB_ARRAY_INDEX": "-2", "AWS_BATCH_JOB_ARRAY_SIZE": "4"},
            ("AWS_BATCH_JOB_ARRAY_INDEX='-2'",),
            id="aws-index-negative",
        ),
        pytest.param(
            {"AWS_BATCH_JOB_ARRAY_INDEX": "0"},
            ("WORKERS_TOTAL is not set", "AWS_BATCH_JOB_ARRAY_SIZE"),
            id="aws-size-missing",
        ),
        pytest.param(
            {
                "AWS_BATCH_JOB_ARRAY_INDEX": "0",
                "AWS_BATCH_JOB_ARRAY_SIZE": "4",
                "WORKERS_TOTAL": "5",
            },
            ("WORKERS_TOTAL='5' contradicts AWS_BATCH_JOB_ARRAY_SIZE='4'",),
            id="aws-size-contradicted",
        ),
        pytest.param(
            {"CLOUD_RUN_TASK_INDEX": "5", "CLOUD_RUN_TASK_COUNT": "5"},
            ("CLOUD_RUN_TASK_INDEX='5' is out of range for CLOUD_RUN_TASK_COUNT='5'",),
            id="cloud-run-too-big",
        ),
        pytest.param(
            {"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "zero"},
            ("CLOUD_RUN_TASK_COUNT='zero'",),
            id="cloud-run-count-nan",
        ),
        pytest.param(
            {"BATCH_TASK_INDEX": "9", "BATCH_TASK_COUNT": "2"},
            ("BATCH_TASK_INDEX='9' is out of range for BATCH_TASK_COUNT='2'",),
            id="google-too-big",
        ),
        pytest.param(
            {"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "-1"},
            ("BATCH_TASK_COUNT='-1'",),
            id="google-count-negative",
        ),
        pytest.param(
            {"SLURM_ARRAY_TASK_ID": "q", "SLURM_ARRAY_TASK_MIN": "0"},
            ("SLURM_ARRAY_TASK_ID='q'",),
            id="slurm-id-nan",
        ),
    ],
)
def test_bad_numbers(env: dict[str, str], needles: tuple[str, ...]) -> None:
    with pytest.raises(IdentityError, match=m(*needles)):
        WorkerIdentity.from_env({"JOB_NAME": "j", **env})


@pytest.mark.parametrize(
    "env",
    [{}, {"WORKERS_TOTAL": "4", "JOB_NAME": "j"}, {"JOB_NAME": "j", "JOB_UID": "u"}],
)
def test_no_index_lists_what_was_looked_for(env: dict[str, str]) -> None:
    with pytest.raises(IdentityError) as info:
        WorkerIdentity.from_env(env)
    for name in (
        "WORKER_INDEX",
        "JOB_COMPLETION_INDEX",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "CLOUD_RUN_TASK_INDEX",
        "BATCH_TASK_INDEX",
        "SLURM_ARRAY_TASK_ID",
    ):
        assert name in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        {"WORKER_INDEX": "0", "WORKERS_TOTAL": "1"},
        {"JOB_COMPLETION_INDEX": "0", "WORKERS_TOTAL": "1"},
        {"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "1"},
        {"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1"},
        {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "1"},
    ],
)
def test_missing_job_name(env: dict[str, str]) -> None:
    with pytest.raises(IdentityError, match=m("JOB_NAME is not set", "downward API")):
        WorkerIdentity.from_env(env)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"JOB_NAME": "a/b"}, "JOB_NAME='a/b'"),
        ({"JOB_NAME": ".."}, "JOB_NAME='..'"),
        ({"JOB_NAME": "."}, "JOB_NAME='.'"),
        ({"JOB_NAME": "-lead"}, "JOB_NAME='-lead'"),
        ({"JOB_NAME": "sp ace"}, "JOB_NAME='sp ace'"),
        ({"JOB_NAME": "x" * 254}, "JOB_NAME='" + "x" * 254 + "'"),
        ({"JOB_NAME": "ok", "JOB_UID": "u/1"}, "JOB_UID='u/1'"),
        ({"JOB_NAME": "ok", "JOB_UID": ".."}, "JOB_UID='..'"),
    ],
)
def test_unsafe_names(extra: dict[str, str], needle: str) -> None:
    with pytest.raises(IdentityError, match=m(needle, "path segment", "expected")):
        WorkerIdentity.from_env({"WORKER_INDEX": "0", "WORKERS_TOTAL": "1", **extra})


@pytest.mark.parametrize(
    "name",
    [
        "\u2024\u2024",  # two ONE DOT LEADERs: looks like ".."
        "a\u2215b",  # DIVISION SLASH
        "a\uff0fb",  # FULLWIDTH SOLIDUS
        "a\u29f8b",  # BIG SOLIDUS
        "\uff4aob",  # FULLWIDTH j
        "j\u043eb",  # Cyrillic o
        "job\u200b",  # ZERO WIDTH SPACE
        "job\u202e",  # RIGHT-TO-LEFT OVERRIDE
        "jo\u0301b",  # a combining accent
        "job\x00",
    ],
)
def test_unicode_look_alikes_are_refused(name: str) -> None:
    """Only ASCII letters, digits, '.', '_' and '-': a name that looks safe but is not is refused.

    Some object stores and tools normalise Unicode (NFKC turns FULLWIDTH SOLIDUS
    into "/" and ONE DOT LEADERs into ".."), so a look-alike could escape the
    job's folder after the check.
    """
    with pytest.raises(IdentityError, match=m(f"JOB_NAME={name!r}", "path segment")):
        WorkerIdentity.from_env({"WORKER_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": name})
    with pytest.raises(IdentityError, match=m(f"job_name={name!r}", "path segment")):
        WorkerIdentity(worker_index=0, workers_total=1, job_name=name, job_uid="u")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {
                "AWS_BATCH_JOB_ARRAY_INDEX": "0",
                "AWS_BATCH_JOB_ARRAY_SIZE": "1",
                "AWS_BATCH_JOB_ID": "a/b:0",
            },
            "AWS_BATCH_JOB_ID='a/b'",
        ),
        (
            {
                "CLOUD_RUN_TASK_INDEX": "0",
                "CLOUD_RUN_TASK_COUNT": "1",
                "CLOUD_RUN_JOB": "j",
                "CLOUD_RUN_EXECUTION": "e/1",
            },
            "CLOUD_RUN_EXECUTION='e/1'",
        ),
        (
            {"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1", "BATCH_JOB_ID": "projects/p/jobs/j"},
            "BATCH_JOB_ID='projects/p/jobs/j'",
        ),
    ],
)
def test_unsafe_orchestrator_names_name_their_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(IdentityError, match=m(needle, "path segment")):
        WorkerIdentity.from_env(env)


def test_job_id_too_long() -> None:
    with pytest.raises(IdentityError, match=m("job_id=", "at most 253")):
        WorkerIdentity(worker_index=0, workers_total=1, job_name="n" * 200, job_uid="u" * 100)


# ---- the class itself -----------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "total", "first", "last"),
    [(0, 1, True, True), (0, 3, True, False), (1, 3, False, False), (2, 3, False, True)],
)
def test_first_and_last(index: int, total: int, first: bool, last: bool) -> None:
    ident = WorkerIdentity(worker_index=index, workers_total=total, job_name="j")
    assert (ident.is_first, ident.is_last) == (first, last)


def test_job_id() -> None:
    assert WorkerIdentity(worker_index=0, workers_total=1, job_name="j").job_id == "j"
    assert (
        WorkerIdentity(worker_index=0, workers_total=1, job_name="j", job_uid="u").job_id == "j-u"
    )


def test_job_start_normalised_to_utc() -> None:
    plus_one = timezone(timedelta(hours=1))
    ident = WorkerIdentity(
        worker_index=0,
        workers_total=1,
        job_name="j",
        job_start=datetime(2025, 2, 19, 22, 20, tzinfo=plus_one),
    )
    assert ident.job_start == START
    assert ident.job_start is not None
    assert ident.job_start.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"worker_index": 1, "workers_total": 1}, "worker_index=1"),
        ({"worker_index": -1, "workers_total": 1}, "worker_index=-1"),
        ({"worker_index": True, "workers_total": 2}, "worker_index=True"),
        ({"worker_index": 0, "workers_total": 0}, "workers_total=0"),
        ({"job_name": ".."}, "job_name='..'"),
        ({"job_name": "a/b"}, "job_name='a/b'"),
        ({"job_uid": "x y"}, "job_uid='x y'"),
        ({"orchestrator": "nomad"}, "orchestrator='nomad'"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"worker_index": 0, "workers_total": 1, "job_name": "j", **kwargs}
    with pytest.raises(IdentityError, match=re.escape(needle)):
        WorkerIdentity(**args)  # type: ignore[arg-type]


def test_frozen_and_slotted() -> None:
    ident = WorkerIdentity(worker_index=0, workers_total=1, job_name="j")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ident.worker_index = 1  # type: ignore[misc]
    assert not hasattr(ident, "__dict__")
    with pytest.raises(TypeError):
        WorkerIdentity(0, 1, "j")  # type: ignore[call-arg]


def test_identity_pickles() -> None:
    ident = WorkerIdentity(
        worker_index=1, workers_total=2, job_name="j", job_uid="u", job_start=START
    )
    assert pickle.loads(pickle.dumps(ident)) == ident


@pytest.mark.parametrize(
    "ident",
    [
        WorkerIdentity(worker_index=0, workers_total=1, job_name="j"),
        WorkerIdentity(worker_index=2, workers_total=5, job_name="job.x_1", job_uid="0b6f-41c2"),
        WorkerIdentity(worker_index=4, workers_total=5, job_name="j", job_start=START),
        WorkerIdentity(
            worker_index=3,
            workers_total=4,
            job_name="gfs-update-29000000",
            job_uid="uid",
            job_start=START + timedelta(microseconds=7),
            orchestrator="kubernetes",
        ),
    ],
)
def test_to_env_round_trip(ident: WorkerIdentity) -> None:
    env = ident.to_env()
    assert all(isinstance(v, str) for v in env.values())
    assert WorkerIdentity.from_env(env) == attrs.evolve(ident, orchestrator="explicit")


def test_to_env_keys() -> None:
    ident = WorkerIdentity(
        worker_index=1, workers_total=2, job_name="j", job_uid="u", job_start=START
    )
    assert ident.to_env() == {
        "WORKER_INDEX": "1",
        "WORKERS_TOTAL": "2",
        "JOB_NAME": "j",
        "JOB_UID": "u",
        "JOB_START": "2025-02-19T21:20:00+00:00",
    }
    assert set(WorkerIdentity(worker_index=0, workers_total=1, job_name="j").to_env()) == {
        "WORKER_INDEX",
        "WORKERS_TOTAL",
        "JOB_NAME",
    }


def test_to_env_beats_orchestrator_variables() -> None:
    ident = WorkerIdentity(worker_index=0, workers_total=2, job_name="launched")
    env = {"JOB_COMPLETION_INDEX": "1", "CRONJOB_NAME": "cron", **ident.to_env()}
    # CRONJOB_NAME without a suffix in the job name gives no start: the identity wins.
    assert WorkerIdentity.from_env(env) == ident


# ---- the error type -------------------------------------------------------------


def test_identity_error_is_value_error_and_pickles() -> None:
    with pytest.raises(IdentityError) as info:
        WorkerIdentity.from_env(
            {"JOB_COMPLETION_INDEX": "4", "WORKERS_TOTAL": "4", "JOB_NAME": "j"}
        )
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, ConfigurationError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is IdentityError
    assert str(back) == str(err)
    assert back.args == err.args


# ---- JobSet, Volcano, Argo ------------------------------------------------------

#: A JobSet of 3 child Jobs of 4 completions each: what its pods' downward API gives.
JOBSET = {
    "JOB_COMPLETION_INDEX": "2",
    "JOBSET_JOB_INDEX": "1",  # jobset.sigs.k8s.io/job-global-index
    "JOBSET_JOBS": "3",  # jobset.sigs.k8s.io/global-replicas
    "WORKERS_TOTAL": "12",
    "JOBSET_NAME": "regrid",  # jobset.sigs.k8s.io/jobset-name
    "JOBSET_UID": "7c1e-90aa",  # jobset.sigs.k8s.io/jobset-uid
    "JOBSET_RESTART_ATTEMPT": "1",  # jobset.sigs.k8s.io/restart-attempt
    "JOB_INDEX_FAILURE_COUNT": "0",
    "POD_NAME": "regrid-workers-1-2-x7k2p",
}


def test_a_jobset_pod_is_numbered_across_its_child_jobs() -> None:
    ident = WorkerIdentity.from_env(JOBSET)
    assert ident.orchestrator == "jobset"
    assert (ident.worker_index, ident.workers_total) == (1 * 4 + 2, 12)
    # The JobSet is the job: every child Job meets under the JobSet's name and uid.
    assert ident.job_id == "regrid-7c1e-90aa"
    assert (ident.restart, ident.attempt, ident.pod) == (1, 0, "regrid-workers-1-2-x7k2p")


def test_every_worker_of_a_jobset_has_its_own_index() -> None:
    seen = set()
    for job in range(3):
        for completion in range(4):
            env = {**JOBSET, "JOBSET_JOB_INDEX": str(job), "JOB_COMPLETION_INDEX": str(completion)}
            seen.add(WorkerIdentity.from_env(env).worker_index)
    assert seen == set(range(12))


def test_an_explicit_job_name_wins_over_the_jobsets() -> None:
    ident = WorkerIdentity.from_env({**JOBSET, "JOB_NAME": "mine", "JOB_UID": "u1"})
    assert ident.job_id == "mine-u1"


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        pytest.param(
            {"JOBSET_JOB_INDEX": ""},
            ("JOBSET_JOB_INDEX is not set", "job-global-index"),
            id="no-job-index",
        ),
        pytest.param(
            {"JOBSET_JOBS": ""}, ("JOBSET_JOBS is not set", "global-replicas"), id="no-job-count"
        ),
        pytest.param(
            {"JOBSET_JOB_INDEX": "3"},
            ("JOBSET_JOB_INDEX='3' is out of range for JOBSET_JOBS='3'", "0..2"),
            id="job-index-out-of-range",
        ),
        pytest.param(
            {"WORKERS_TOTAL": "10"},
            ("WORKERS_TOTAL='10' is not a multiple of JOBSET_JOBS='3'", "same completions"),
            id="uneven-child-jobs",
        ),
        pytest.param(
            {"JOB_COMPLETION_INDEX": "4"},
            ("JOB_COMPLETION_INDEX='4' is out of range for child Jobs of 4 completions", "0..3"),
            id="completion-out-of-range",
        ),
        pytest.param(
            {"WORKERS_TOTAL": ""}, ("WORKERS_TOTAL", "completions times JOBSET_JOBS"), id="no-total"
        ),
        pytest.param(
            {"JOBSET_NAME": ""},
            ("JOB_NAME is not set (nor JOBSET_NAME)", "jobset.sigs.k8s.io/jobset-name"),
            id="no-name",
        ),
        pytest.param(
            {"JOBSET_RESTART_ATTEMPT": "-1"},
            ("JOBSET_RESTART_ATTEMPT='-1' is not a valid number",),
            id="bad-restart",
        ),
    ],
)
def test_jobset_refusals(change: dict[str, str], needles: tuple[str, ...]) -> None:
    with pytest.raises(IdentityError, match=m(*needles)):
        WorkerIdentity.from_env({**JOBSET, **change})


def test_a_jobset_variable_alone_still_makes_a_pod_a_jobsets() -> None:
    """A JobSet pod missing its child Job's index would take itself for child Job 0: refused."""
    env = {"JOB_COMPLETION_INDEX": "0", "WORKERS_TOTAL": "4", "JOBSET_NAME": "js"}
    with pytest.raises(IdentityError, match="JOBSET_JOB_INDEX is not set"):
        WorkerIdentity.from_env(env)


#: A Volcano job of one task ("worker", 4 replicas) with the env and svc plugins.
VOLCANO = {
    "VC_TASK_INDEX": "3",
    "VK_TASK_INDEX": "3",
    "VC_WORKER_NUM": "4",
    "VC_WORKER_HOSTS": "w-0.vj,w-1.vj,w-2.vj,w-3.vj",
    "JOB_NAME": "vj",  # metadata.annotations['volcano.sh/job-name']
    "HOSTNAME": "vj-worker-3",
}


def test_a_volcano_task_reads_its_index_and_count() -> None:
    ident = WorkerIdentity.from_env(VOLCANO)
    assert ident.orchestrator == "volcano"
    assert (ident.worker_index, ident.workers_total, ident.is_last) == (3, 4, True)
    assert ident.pod == "vj-worker-3"  # a Kubernetes pod: HOSTNAME is its name
    assert ident.attempt is None  # Volcano has no per-task count; WORKER_ATTEMPT can say


def test_volcano_without_the_svc_plugin_needs_workers_total() -> None:
    env = {"VC_TASK_INDEX": "1", "JOB_NAME": "vj"}
    with pytest.raises(IdentityError, match=m("VC_TASK_INDEX='1'", "set WORKERS_TOTAL")):
        WorkerIdentity.from_env(env)
    ident = WorkerIdentity.from_env({**env, "WORKERS_TOTAL": "2"})
    assert (ident.worker_index, ident.workers_total) == (1, 2)


def test_a_volcano_job_of_several_tasks_needs_workers_total() -> None:
    env = {**VOLCANO, "VC_PS_NUM": "1"}
    with pytest.raises(IdentityError, match=m("several tasks: VC_PS_NUM, VC_WORKER_NUM")):
        WorkerIdentity.from_env(env)
    assert WorkerIdentity.from_env({**env, "WORKERS_TOTAL": "4"}).workers_total == 4


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"VK_TASK_INDEX": "2"}, ("VK_TASK_INDEX='2' contradicts VC_TASK_INDEX='3'",)),
        ({"VC_WORKER_NUM": "3"}, ("VC_TASK_INDEX='3' is out of range for VC_WORKER_NUM='3'",)),
        ({"WORKERS_TOTAL": "8"}, ("WORKERS_TOTAL='8' contradicts VC_WORKER_NUM='4'",)),
        ({"JOB_NAME": ""}, ("JOB_NAME is not set", "volcano.sh/job-name")),
    ],
)
def test_volcano_refusals(change: dict[str, str], needles: tuple[str, ...]) -> None:
    with pytest.raises(IdentityError, match=m(*needles)):
        WorkerIdentity.from_env({**VOLCANO, **change})


def test_vk_task_index_alone_is_read_too() -> None:
    env = {k: v for k, v in VOLCANO.items() if k != "VC_TASK_INDEX"}
    assert WorkerIdentity.from_env(env).worker_index == 3


#: What an Argo Workflows step passes (no index variable of its own): a
#: ``withSequence: {count: "4"}`` loop over one template with a retryStrategy,
#: its env set from ``{{item}}``, ``{{workflow.name}}``, ``{{workflow.uid}}``,
#: ``{{retries}}`` and ``{{pod.name}}``, as Argo substitutes them.
ARGO_STEP = {
    "WORKER_INDEX": "2",  # "{{item}}"
    "WORKERS_TOTAL": "4",  # the sequence's count
    "JOB_NAME": "forecast-update-x7k2p",  # "{{workflow.name}}"
    "JOB_UID": "3f6c1a2e-5b7d-4c9e-8a1f-2d4b6c8e0a13",  # "{{workflow.uid}}"
    "WORKER_ATTEMPT": "1",  # "{{retries}}"
    "POD_NAME": "forecast-update-x7k2p-worker-1234567890",  # "{{pod.name}}"
    "HOSTNAME": "forecast-update-x7k2p-worker-1234567890",
}


def test_an_argo_step_passes_the_explicit_variables() -> None:
    ident = WorkerIdentity.from_env(ARGO_STEP)
    assert ident.orchestrator == "explicit"
    assert (ident.worker_index, ident.workers_total) == (2, 4)
    assert ident.job_id == "forecast-update-x7k2p-3f6c1a2e-5b7d-4c9e-8a1f-2d4b6c8e0a13"
    assert (ident.attempt, ident.pod) == (1, "forecast-update-x7k2p-worker-1234567890")


def test_an_argo_step_with_an_unsubstituted_variable_is_refused() -> None:
    """A typo in a template tag reaches the pod as the tag itself: refused by name."""
    with pytest.raises(IdentityError, match=re.escape("WORKER_INDEX='{{item}}'")):
        WorkerIdentity.from_env({**ARGO_STEP, "WORKER_INDEX": "{{item}}"})
    with pytest.raises(IdentityError, match=re.escape("WORKER_ATTEMPT='{{retries}}'")):
        WorkerIdentity.from_env({**ARGO_STEP, "WORKER_ATTEMPT": "{{retries}}"})


# ---- the try and the pod ------------------------------------------------------------

K8S = {"JOB_COMPLETION_INDEX": "1", "WORKERS_TOTAL": "2", "JOB_NAME": "k"}


@pytest.mark.parametrize(
    ("env", "attempt"),
    [
        pytest.param({**K8S, "JOB_INDEX_FAILURE_COUNT": "2"}, 2, id="kubernetes"),
        pytest.param(
            {"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "1", "CLOUD_RUN_JOB": "c"}
            | {"CLOUD_RUN_TASK_ATTEMPT": "3"},
            3,
            id="cloud-run",
        ),
        pytest.param(
            {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "1", "JOB_NAME": "a"}
            | {"AWS_BATCH_JOB_ATTEMPT": "1"},
            0,  # AWS Batch counts from 1
            id="aws-batch",
        ),
        pytest.param(
            {"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1", "BATCH_JOB_ID": "g"}
            | {"BATCH_TASK_RETRY_ATTEMPT": "2"},
            2,
            id="google-batch",
        ),
        pytest.param(
            {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "0"}
            | {"SLURM_ARRAY_JOB_ID": "9", "SLURM_RESTART_COUNT": "1"},
            1,
            id="slurm",
        ),
        pytest.param({**K8S, "JOB_INDEX_FAILURE_COUNT": "2", "WORKER_ATTEMPT": "5"}, 5, id="wins"),
        pytest.param(K8S, None, id="unknown"),
        pytest.param({**K8S, "JOB_INDEX_FAILURE_COUNT": ""}, None, id="no-annotation"),
    ],
)
def test_attempt_from_each_orchestrator(env: dict[str, str], attempt: int | None) -> None:
    assert WorkerIdentity.from_env(env).attempt == attempt


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({**K8S, "JOB_INDEX_FAILURE_COUNT": "x"}, "JOB_INDEX_FAILURE_COUNT='x'"),
        ({**K8S, "WORKER_ATTEMPT": "-1"}, "WORKER_ATTEMPT='-1'"),
        (
            {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "1", "JOB_NAME": "a"}
            | {"AWS_BATCH_JOB_ATTEMPT": "0"},
            "AWS_BATCH_JOB_ATTEMPT='0' is too small",
        ),
        ({**K8S, "POD_NAME": "two words"}, "POD_NAME='two words' is not a pod name"),
        ({**K8S, "POD_NAME": "x" * 254}, "is not a pod name"),
    ],
)
def test_bad_attempts_and_pod_names_are_refused_by_name(env: dict[str, str], needle: str) -> None:
    with pytest.raises(IdentityError, match=re.escape(needle)):
        WorkerIdentity.from_env(env)


def test_hostname_names_the_pod_only_in_a_kubernetes_pod() -> None:
    assert WorkerIdentity.from_env({**K8S, "HOSTNAME": "k-1-abcde"}).pod == "k-1-abcde"
    assert WorkerIdentity.from_env({**K8S, "HOSTNAME": "k-1", "POD_NAME": "p"}).pod == "p"
    # On Slurm or a laptop HOSTNAME is a machine, not a pod.
    explicit = {"WORKER_INDEX": "0", "WORKERS_TOTAL": "1", "JOB_NAME": "j", "HOSTNAME": "node7"}
    assert WorkerIdentity.from_env(explicit).pod is None
    # A hostname that is no pod name (spec.hostname set oddly) is left out, not refused.
    assert WorkerIdentity.from_env({**K8S, "HOSTNAME": "bad host"}).pod is None


def test_the_run_label_names_what_is_known() -> None:
    ident = WorkerIdentity(worker_index=0, workers_total=1, job_name="j")
    assert ident.run_label == ""
    ident = attrs.evolve(ident, attempt=1, pod="j-0-abcde")
    assert ident.run_label == "attempt 1, pod j-0-abcde"
    assert attrs.evolve(ident, restart=2).run_label == "restart 2, attempt 1, pod j-0-abcde"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"attempt": -1}, "attempt=-1"),
        ({"attempt": True}, "attempt=True"),
        ({"restart": 1.5}, "restart=1.5"),
        ({"pod": ""}, "pod=''"),
        ({"pod": "a b"}, "pod='a b'"),
    ],
)
def test_attempt_restart_and_pod_are_checked_as_values(
    kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(IdentityError, match=re.escape(needle)):
        WorkerIdentity(worker_index=0, workers_total=1, job_name="j", **kwargs)  # type: ignore[arg-type]


def test_to_env_carries_the_try_and_the_pod() -> None:
    ident = WorkerIdentity(
        worker_index=1, workers_total=2, job_name="j", attempt=2, restart=1, pod="j-1-x"
    )
    assert WorkerIdentity.from_env(ident.to_env()) == ident
