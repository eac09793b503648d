"""Worker identity from each orchestrator's environment, and every way it is refused."""

from __future__ import annotations

import pickle
import re
from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest

from icechunk_coop._errors import ConfigurationError, IdentityError
from icechunk_coop._identity import WorkerIdentity

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
    expected = {"job_uid": None, "job_start": None, **expected}
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
