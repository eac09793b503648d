"""The icechunk-coop command: run-local, status, clean, demo."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import icechunk
import numpy as np
import pytest
import zarr

from icechunk_coop import SECRET_ENV, ConfigurationError, icechunk_storage
from icechunk_coop.cli import clean, main, parse_age, status
from icechunk_coop.inspect import job_branch_prefix
from icechunk_coop.wire import Sealer

WORKER = str(Path(__file__).with_name("coop_worker.py"))


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icechunk_coop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_run_local_gives_indexed_job_env_and_propagates_failure(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    base_env = {**base_env, "XDG_STATE_HOME": str(tmp_path)}  # where the new secret goes
    code = (
        "import os, sys; i = os.environ['JOB_COMPLETION_INDEX']; "
        "print('index', i, 'of', os.environ['WORKERS_TOTAL'], os.environ['JOB_NAME'], "
        "len(os.environ['ICECHUNK_COOP_SECRET'])); sys.exit(3 if i == '1' else 0)"
    )
    proc = cli(
        "run-local",
        "--workers",
        "3",
        "--job-name",
        "j",
        "--",
        sys.executable,
        "-c",
        code,
        env=base_env,
    )
    assert proc.returncode == 1
    for i in range(3):
        assert f"[{i}] index {i} of 3 j 64" in proc.stdout
    assert "worker 1 exited with 3; restarting it" in proc.stderr  # once: the default limit
    assert "worker 1 exited with 3; index 1 failed (after 2 attempts" in proc.stderr
    assert proc.stdout.count("[1] index 1 of 3") == 2
    assert "failed: worker 1 exited with 3;" in proc.stderr
    ok = cli("run-local", "--workers", "2", "--", sys.executable, "-c", "pass", env=base_env)
    assert ok.returncode == 0, ok.stderr


def test_status_and_clean_after_a_half_done_job(
    tmp_path: Path, base_env: dict[str, str], secret: str
) -> None:
    repo, rv = str(tmp_path / "repo"), str(tmp_path / "rv")
    env = {
        **base_env,
        "JOB_NAME": "half",
        "JOB_UID": "u1",
        "WORKERS_TOTAL": "3",
        "ICECHUNK_COOP_SECRET": secret,
    }
    argv = [sys.executable, WORKER, "--repo", repo, "--rendezvous", rv]

    def worker(index: int, **extra: str) -> int:
        return subprocess.run(
            argv,
            env={**env, "JOB_COMPLETION_INDEX": str(index), **extra},
            capture_output=True,
            timeout=120,
            check=False,
        ).returncode

    assert worker(0) == 0
    assert worker(1, COOP_TEST_DIE_IN_WORK="1") == 9  # killed: no marker
    assert worker(2, COOP_TEST_RAISE_IN_WORK="1") != 0  # raised: a marker
    job_id = "half-u1"

    out = io.StringIO()
    assert status(rv, None, None, out) == 0
    assert job_id in out.getvalue()
    assert "failed" in out.getvalue()

    proc = cli("status", rv, "--job", job_id, "--workers", "3", env=env)
    assert proc.returncode == 4, proc.stderr  # failed: a worker left a failure marker
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line[:1].isdigit()}
    assert "arrived" in lines["0"]
    assert "missing" in lines["1"]
    assert "failed" in lines["2"]
    assert "no source files" in lines["2"]
    # By name, and without --workers: the total comes from the setup (the secret is set).
    proc = cli("status", rv, "--job", "half", env=env)
    assert proc.returncode == 4, proc.stderr
    assert f"job {job_id}: failed" in proc.stdout
    assert "workers total 3, from the setup" in proc.stdout

    repository = icechunk.Repository.open(icechunk_storage(repo))
    assert repository.list_branches() == {"main"}  # setup moves no ref
    # What a finalizer killed between merging and committing leaves behind.
    dead = job_branch_prefix(job_id) + "attempt1"
    repository.create_branch(dead, repository.lookup_branch("main"))
    repository.create_branch("icechunk-coop/another-job/attempt1", repository.lookup_branch("main"))
    proc = cli("clean", rv, "--job", job_id, "--repo", repo, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "removed" in proc.stdout
    assert repository.list_branches() == {"main", "icechunk-coop/another-job/attempt1"}
    proc = cli("status", rv, "--job", job_id, env=env)
    assert proc.returncode == 1
    assert "nothing at" in proc.stdout


def test_status_never_unpickles_a_planted_marker(tmp_path: Path) -> None:
    # Someone with write access to the bucket plants a "failure marker" that is a
    # pickle which would create a file; status, run without the secret, reads it.
    canary = tmp_path / "pwned"
    rv = tmp_path / "rv"
    (rv / "j").mkdir(parents=True)
    planted = Sealer(job_id="j", secret=None).seal(
        PlantedFile(canary), name="result-0.failed", content="pickle"
    )
    (rv / "j" / "result-0.failed").write_bytes(planted)
    out = io.StringIO()
    assert status(str(rv), "j", 1, out) == 4  # failed (its marker unreadable: fail closed)
    assert not canary.exists()
    assert "refused" in out.getvalue() and "'pickle' content" in out.getvalue()


def worker_rows(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines() if line[:1].isdigit()}


def test_status_reads_the_total_from_the_setup_then_shows_the_commit(
    tmp_path: Path, base_env: dict[str, str], secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, rv = str(tmp_path / "repo"), str(tmp_path / "rv")
    env = {**base_env, "JOB_NAME": "late", "JOB_UID": "u7", "WORKERS_TOTAL": "3"}
    env["ICECHUNK_COOP_SECRET"] = secret
    argv = [sys.executable, WORKER, "--repo", repo, "--rendezvous", rv]

    def worker(index: int) -> None:
        proc = subprocess.run(
            argv,
            env={**env, "JOB_COMPLETION_INDEX": str(index)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    worker(0)  # setup published and result-0; workers 1 and 2 never came
    monkeypatch.delenv(SECRET_ENV, raising=False)
    out = io.StringIO()
    assert status(rv, "late", None, out) == 3  # running: not committed, 0 only for that
    assert "job late-u7: running" in out.getvalue()
    assert list(worker_rows(out.getvalue())) == ["0"]  # all a reader without the secret sees
    assert "inferred as 1" in out.getvalue()
    monkeypatch.setenv(SECRET_ENV, secret)
    out = io.StringIO()
    assert status(rv, "late", None, out) == 3
    rows = worker_rows(out.getvalue())
    assert [rows[i].split()[1] for i in "012"] == ["arrived", "missing", "missing"]
    assert "workers total 3, from the setup" in out.getvalue()

    worker(1)
    worker(2)  # the last worker commits and cleans up
    tip = icechunk.Repository.open(icechunk_storage(repo)).lookup_branch("main")
    out = io.StringIO()
    assert status(rv, "late-u7", None, out) == 0
    text = out.getvalue()
    assert "job late-u7: committed" in text
    assert "by 3 workers" in text
    assert f"primary  {tip}" in text
    assert "missing" not in text and "setup: not yet" not in text
    monkeypatch.delenv(SECRET_ENV)
    out = io.StringIO()
    assert status(rv, "late", None, out) == 0
    text = out.getvalue()
    assert "committed: (sealed: set ICECHUNK_COOP_SECRET" in text
    assert "missing" not in text and "setup: not yet" not in text
    monkeypatch.setenv(SECRET_ENV, "another-secret-" + secret)
    out = io.StringIO()
    assert status(rv, "late", None, out) == 0
    assert "committed: (sealed with another secret than the ICECHUNK_COOP_SECRET given" in (
        out.getvalue()
    )
    monkeypatch.delenv(SECRET_ENV)
    out = io.StringIO()
    assert status(rv, None, None, out) == 0
    assert "late-u7  committed  all" in out.getvalue()


def test_a_name_finds_its_job_or_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    rv = tmp_path / "rv"
    for job_id in ("twin-u1", "twin-u2", "twinkle-u3"):
        (rv / job_id).mkdir(parents=True)
        (rv / job_id / "setup").write_bytes(b"x")
    out = io.StringIO()
    assert status(str(rv), "twin", None, out) == 2  # say which: like clean, not retryable
    assert "matches 2 jobs" in out.getvalue()
    assert "twin-u1" in out.getvalue() and "twin-u2" in out.getvalue()
    assert "twinkle" not in out.getvalue()
    with pytest.raises(ConfigurationError, match="twin-u1, twin-u2"):
        clean(str(rv), job="twin", older_than=None, repos=[], out=out)
    assert (rv / "twin-u1").exists() and (rv / "twin-u2").exists()
    assert clean(str(rv), job="twin-u1", older_than=None, repos=[], out=out) == ["twin-u1"]
    out = io.StringIO()
    assert status(str(rv), "twin", None, out) == 3  # running
    assert out.getvalue().startswith("job twin-u2: running")
    assert "setup: published" in out.getvalue()
    assert clean(str(rv), job="twinkle", older_than=None, repos=[], out=out) == ["twinkle-u3"]


def test_clean_by_name_finds_the_branches_of_a_job_already_gone(tmp_path: Path) -> None:
    repo_url, rv = str(tmp_path / "repo"), str(tmp_path / "rv")
    repo = icechunk.Repository.create(icechunk_storage(repo_url))
    tip = repo.lookup_branch("main")
    for job_id in ("gone-u1", "other-u2"):
        repo.create_branch(job_branch_prefix(job_id) + "attempt1", tip)
    out = io.StringIO()
    assert clean(rv, job="gone", older_than=None, repos=[repo_url], out=out) == []
    assert f"deleted branch {job_branch_prefix('gone-u1')}attempt1" in out.getvalue()
    assert repo.list_branches() == {"main", job_branch_prefix("other-u2") + "attempt1"}
    # By age, every temporary branch of a job no longer in the rendezvous goes.
    assert clean(rv, job=None, older_than=60, repos=[repo_url], out=out) == []
    assert repo.list_branches() == {"main"}


class PlantedFile:
    """Unpickling this creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


def test_clean_by_age(tmp_path: Path) -> None:
    rv = tmp_path / "rv"
    (rv / "old-job").mkdir(parents=True)
    (rv / "old-job" / "setup").write_bytes(b"x")
    out = io.StringIO()
    assert clean(str(rv), job=None, older_than=3600, repos=[], out=out) == []
    assert clean(str(rv), job=None, older_than=0, repos=[], out=out) == ["old-job"]
    assert not (rv / "old-job").exists()


@pytest.mark.parametrize("text", ["6", "h", "-1h", "2w"])
def test_bad_ages_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="older-than"):
        parse_age(text)
    assert parse_age("90s") == 90
    assert parse_age("2d") == 172800


def test_clean_wants_exactly_one_selector(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clean", "memory://x"]) == 2
    assert "exactly one" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_and_says_what_it_did(tmp_path: Path, base_env: dict[str, str]) -> None:
    proc = cli("demo", "--dir", str(tmp_path / "demo"), env=base_env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Commits on main" in proc.stdout
    assert "backfill to 2025-01-04" in proc.stdout
    assert "update to 2025-01-05" in proc.stdout
    assert "4 workers" in proc.stdout and "1 workers" not in proc.stdout
    assert 'Open it: uv run python -c "import icechunk' in proc.stdout
    repo = icechunk.Repository.open(icechunk_storage(str(tmp_path / "demo" / "forecast.icechunk")))
    assert len(list(repo.ancestry(branch="main"))) == 3
    # The update resumed where the backfill ended (2025-01-04T00Z): no init time is empty.
    assert "Every one of the 16 init times holds data." in proc.stdout
    temp = zarr.open_array(repo.readonly_session("main").store, path="temperature_2m", mode="r")
    assert temp.shape[0] == 16
    assert not np.isnan(temp[:]).all(axis=(1, 2, 3)).any()
