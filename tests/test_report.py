"""Where a job's time went (``report``), following it (``status --watch``), piped output.

One real job of three worker processes (run-local, local files) serves
several tests: ``status --watch`` is started before it and must see it
commit; run-local's piped output must carry icechunk's own warnings without
colour codes; ``report`` must name the critical path and draw every worker.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from icechunk_coop import SECRET_ENV, ConfigurationError
from icechunk_coop.cli import main, report
from icechunk_coop.cli._gantt import draw_timeline
from icechunk_coop.inspect import ProgressReader, Span, Timeline

WORKER = str(Path(__file__).with_name("coop_worker.py"))
PNG = b"\x89PNG\r\n\x1a\n"
ESC = "\x1b"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without job identity, secrets or NO_COLOR (each test sets its own)."""
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_", "NO_COLOR")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "icechunk_coop.cli", *args]


@attrs.frozen
class Job:
    repo: Path
    rv: Path
    run: subprocess.CompletedProcess[str]
    watch_code: int
    watch_out: str
    watch_err: str


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, secret: str) -> Job:
    tmp = tmp_path_factory.mktemp("report")
    repo, rv = tmp / "repo", tmp / "rv"
    rv.mkdir()
    env = clean_env(**{SECRET_ENV: secret, "COOP_TEST_SLEEP_IN_WORK": "2"})  # seen running
    watch = subprocess.Popen(
        cli("status", str(rv), "--job", "wr", "--watch", "--interval", "0.2"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run = subprocess.run(
            cli("run-local", "--workers", "3", "--job-name", "wr", "--job-uid", "u1",
                "--rendezvous", str(rv), "--", sys.executable, WORKER,
                "--repo", str(repo), "--rendezvous", str(rv)),
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        out, err = watch.communicate(timeout=120)
    finally:
        watch.kill()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return Job(repo=repo, rv=rv, run=run, watch_code=watch.returncode, watch_out=out,
               watch_err=err)  # fmt: skip


def test_status_watch_follows_a_job_until_it_commits(job: Job) -> None:
    assert job.watch_code == 0, job.watch_out + job.watch_err
    lines = job.watch_out.splitlines()
    assert any(line.startswith("job wr-u1: running") for line in lines), job.watch_out
    assert "job wr-u1: committed" in job.watch_out  # the last line of the watch
    assert "by 3 workers" in job.watch_out  # then the status of the committed job
    assert ESC not in job.watch_out + job.watch_err  # piped: plain lines


def test_piped_run_local_has_icechunks_warnings_without_colour_codes(job: Job) -> None:
    text = job.run.stdout + job.run.stderr
    assert " WARN icechunk" in text  # a Rust log line came through ...
    assert ESC not in text  # ... without escape codes
    # With --rendezvous and no terminal: a line each time the job's state changed.
    assert "icechunk-coop: job wr-u1: committed" in job.run.stderr
    assert "icechunk-coop: job wr-u1: running; " in job.run.stderr
    assert f"--workers 3 --rendezvous {job.rv} --" in job.run.stderr  # in the way to resume


def test_report_prints_the_critical_path_and_draws_every_worker(
    job: Job, tmp_path: Path, secret: str
) -> None:
    picture = tmp_path / "out" / "timeline.png"
    proc = subprocess.run(
        cli("report", str(job.rv), "wr", "-o", str(picture)),
        env=clean_env(**{SECRET_ENV: secret}),  # the committed marker is sealed
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "job wr-u1: " in proc.stdout and "(3 workers)" in proc.stdout
    assert "critical path" in proc.stdout
    assert "overhead" in proc.stdout
    assert f"timeline written to {picture}" in proc.stdout
    assert picture.read_bytes().startswith(PNG)

    reader = ProgressReader(str(job.rv), "wr", secret=secret)
    progress = reader.read()
    assert progress is not None and progress.state == "committed"
    timeline = reader.timeline(progress)
    chart = draw_timeline(timeline, tmp_path / "again.png")
    assert chart.rows == ("worker 0", "worker 1", "worker 2")
    assert chart.labels == chart.rows  # what the axis shows
    drawn = {(bar.row, bar.step) for bar in chart.bars}
    assert {(i, "work") for i in range(3)} <= drawn
    assert (0, "setup") in drawn and (2, "commit") in drawn
    path = timeline.critical_path()
    assert path.spans[-1].step == "commit" and path.spans[-1].worker == 2
    assert {bar.step for bar in chart.bars if bar.critical} >= {"work", "commit"}


def test_the_cli_itself_logs_icechunks_warnings_plain_when_piped(job: Job) -> None:
    proc = subprocess.run(
        cli("clean", str(job.rv), "--job", "no-such-job", "--repo", str(job.repo)),
        env=clean_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert " WARN icechunk" in proc.stderr  # opening a local repository warns
    assert ESC not in proc.stdout + proc.stderr


def test_the_critical_path_is_worker_0s_setup_the_last_result_and_the_commit() -> None:
    steps = {
        0: {"setup": (0.0, 2.0), "work": (2.0, 5.0)},
        1: {"setup": (0.5, 2.2), "work": (2.2, 9.0)},  # the slowest work, the last result
        2: {"setup": (0.1, 2.1), "work": (2.1, 4.0), "wait": (4.0, 9.3), "commit": (9.3, 10.0)},
    }
    timeline = Timeline.from_steps("j-u", steps)
    path = timeline.critical_path()
    assert [(s.worker, s.step) for s in path.spans] == [(0, "setup"), (1, "work"), (2, "commit")]
    assert path.job_seconds == pytest.approx(10.0)
    assert (path.slowest_worker, path.slowest_work) == (1, pytest.approx(6.8))
    assert path.overhead == pytest.approx(3.2)
    out = io.StringIO()
    from icechunk_coop.cli._report import describe

    describe(timeline, out)
    assert "slowest worker's own work: worker 1, 6.80s; overhead 3.20s (32% of the job)" in (
        out.getvalue()
    )
    assert timeline.missing() == []
    bigger = Timeline.from_steps("j-u", steps, workers_total=4)
    assert bigger.missing() == [3]
    assert Span(worker=0, step="x", began=2.0, ended=1.0).seconds == 0.0


def test_report_of_a_running_job_shows_the_steps_so_far(
    tmp_path: Path,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo, rv = tmp_path / "repo", tmp_path / "rv"
    env = clean_env(**{SECRET_ENV: secret, "JOB_NAME": "half", "JOB_UID": "u2",
                       "WORKERS_TOTAL": "2", "JOB_COMPLETION_INDEX": "0"})  # fmt: skip
    worker = subprocess.run(
        [sys.executable, WORKER, "--repo", str(repo), "--rendezvous", str(rv)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]

    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=f"set {SECRET_ENV}"):
        report(str(rv), "half", output=tmp_path / "no.png", out=io.StringIO())

    monkeypatch.setenv(SECRET_ENV, secret)
    out = io.StringIO()
    assert report(str(rv), "half", output=tmp_path / "half.png", out=out) == 0
    text = out.getvalue()
    assert "job half-u2 is running: the steps so far" in text
    assert "(2 workers)" in text  # the total from the setup, opened with the secret
    assert "no steps recorded yet for worker 1" in text
    assert (tmp_path / "half.png").read_bytes().startswith(PNG)

    assert main(["report", str(rv), "nothing-here", "-o", str(tmp_path / "x.png")]) == 1
    assert "nothing at" in capsys.readouterr().out


def test_a_picture_of_many_workers_keeps_a_row_each_and_labels_some(tmp_path: Path) -> None:
    steps = {
        i: {"setup": (0.0, 1.0), "work": (1.0, 2.0 + i % 7)} for i in range(150)
    }  # fmt: skip
    steps[149]["commit"] = (9.0, 9.5)
    chart = draw_timeline(Timeline.from_steps("big-u", steps), tmp_path / "big.png")
    assert len(chart.rows) == 150 and len({bar.row for bar in chart.bars}) == 150
    assert 0 < len(chart.labels) <= 60 and set(chart.labels) <= set(chart.rows)
    assert chart.labels[0] == "worker 0"
    assert (tmp_path / "big.png").read_bytes().startswith(PNG)
