"""``icechunk-coop run-local`` as a small Job controller, with real worker processes.

The workers are a tiny script (below) told per index and attempt what to do;
each records its pid (and its child's) in a folder, so a test can kill it
and then check that nothing outlived run-local.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from icechunk_coop import SECRET_ENV
from icechunk_coop.cli import main

WORKER = r"""
import hashlib, os, signal, subprocess, sys, time
from pathlib import Path

here = Path(sys.argv[1])
index = int(os.environ["JOB_COMPLETION_INDEX"])
plans = sys.argv[2:]
steps = (plans[index] if index < len(plans) else "ok").split(",")
attempt = len(list(here.glob(f"w{index}-a*.pid")))
step = steps[min(attempt, len(steps) - 1)]


def note(name, pid):
    (here / f".{name}").write_text(str(pid))
    (here / f".{name}").rename(here / name)


secret = hashlib.sha256(os.environ["ICECHUNK_COOP_SECRET"].encode()).hexdigest()[:12]
print("env", os.environ["JOB_NAME"], os.environ["JOB_UID"], os.environ["WORKERS_TOTAL"],
      secret, os.environ.get("ICECHUNK_COOP_LOG_LEVEL"), flush=True)
if step == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if step == "child":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    note(f"w{index}-child{attempt}.pid", child.pid)
note(f"w{index}-a{attempt}.pid", os.getpid())
if step.startswith("exit"):
    sys.exit(int(step[4:]))
if step != "ok":
    time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Running (a zombie is dead: it only waits to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return fields[0] not in {"Z", "X"}


def pids(folder: Path) -> dict[str, int]:
    return {p.name: int(p.read_text()) for p in folder.glob("w*.pid")}


@pytest.fixture
def pid_dir(tmp_path: Path) -> Iterator[Path]:
    """The workers' folder; whatever a failed test left running is killed afterwards."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for pid in pids(folder).values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def worker(tmp_path: Path) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return [sys.executable, str(script)]


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No inherited job identity or secret; generated secrets go under tmp_path."""
    for key in list(os.environ):
        if key.startswith(("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return dict(os.environ)


def wait_for(folder: Path, *names: str, proc: subprocess.Popen[str] | None = None) -> None:
    """Until every file ``names`` exists (a guard, not a measurement)."""
    deadline = time.monotonic() + 120
    while not all((folder / n).exists() for n in names):
        assert proc is None or proc.poll() is None, "run-local ended early"
        assert time.monotonic() < deadline, f"never appeared: {names}"
        time.sleep(0.05)


def start_cli(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "icechunk_coop.cli", *args],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )


def test_a_killed_worker_is_named_and_restarted_up_to_its_limit(
    worker: list[str], pid_dir: Path, local_env: dict[str, str], tmp_path: Path
) -> None:
    # Worker 1 dies once and then succeeds; worker 2 dies twice: past its limit of 1.
    log = tmp_path / "run.log"
    plans = ["sleep", "sleep,ok", "sleep,sleep"]
    args = ["run-local", "--workers", "3", "--backoff-limit-per-index", "1", "--grace-period", "1"]
    proc = start_cli(*args, "--", *worker, str(pid_dir), *plans, env=local_env, log=log)
    try:
        wait_for(pid_dir, "w1-a0.pid", proc=proc)
        os.kill(pids(pid_dir)["w1-a0.pid"], signal.SIGKILL)
        wait_for(pid_dir, "w1-a1.pid", "w2-a0.pid", proc=proc)
        os.kill(pids(pid_dir)["w2-a0.pid"], signal.SIGKILL)
        wait_for(pid_dir, "w2-a1.pid", proc=proc)
        os.kill(pids(pid_dir)["w2-a1.pid"], signal.SIGKILL)
        assert proc.wait(timeout=120) == 1
    finally:
        proc.kill()
    text = log.read_text()
    assert "worker 1 killed by SIGKILL; restarting it" in text, text
    assert "worker 1 succeeded (attempt 2)" in text
    assert "worker 2 killed by SIGKILL; index 2 failed (after 2 attempts" in text
    last = text.strip().splitlines()[-1]
    assert "failed: worker 2 killed by SIGKILL; stopped worker 0;" in last, last
    assert "resume with:" in last and "--resume" in last
    assert "exit -9" not in text and "Traceback" not in text
    assert not (pid_dir / "w2-a2.pid").exists()  # no third attempt
    assert not any(alive(pid) for pid in pids(pid_dir).values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_every_worker_and_their_children(
    sig: signal.Signals,
    worker: list[str],
    pid_dir: Path,
    local_env: dict[str, str],
    tmp_path: Path,
) -> None:
    log = tmp_path / "run.log"
    args = ["run-local", "--workers", "2", "--job-name", "stop-me", "--"]
    proc = start_cli(*args, *worker, str(pid_dir), "child", "child", env=local_env, log=log)
    try:
        wait_for(pid_dir, "w0-a0.pid", "w1-a0.pid", proc=proc)
        running = pids(pid_dir)
        assert len(running) == 4 and all(alive(p) for p in running.values())
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 128 + sig
    finally:
        proc.kill()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    ours = [line for line in text.splitlines() if line.startswith("icechunk-coop:")]
    after = ours[[n for n, line in enumerate(ours) if " started, pid " in line][-1] + 1 :]
    assert len(after) == 1, after  # one line
    assert re.match(rf"icechunk-coop: job stop-me-\w+ interrupted by {sig.name}; ", after[0])
    assert "stopped workers 0 and 1; resume with:" in after[0]
    assert not any(alive(pid) for pid in running.values())


def test_the_deadline_stops_the_workers_and_names_those_still_running(
    worker: list[str], pid_dir: Path, local_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Worker 1 ignores SIGTERM: it is killed after the grace period.
    args = ["run-local", "--workers", "2", "--timeout", "2", "--grace-period", "0.2", "--"]
    assert main([*args, *worker, str(pid_dir), "ok", "stubborn"]) == 1
    err = capsys.readouterr().err
    assert "passed its deadline (--timeout 2s); stopped worker 1 (still running)" in err, err
    assert "killing worker 1 (still running after SIGTERM)" in err
    assert not any(alive(pid) for pid in pids(pid_dir).values())


def test_exit_code_2_fails_the_index_at_once_and_stops_the_others(
    worker: list[str], pid_dir: Path, local_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run-local", "--workers", "2", "--backoff-limit-per-index", "3", "--"]
    assert main([*args, *worker, str(pid_dir), "exit2", "sleep"]) == 2
    err = capsys.readouterr().err
    assert "worker 0 exited with 2 (not retryable): index 0 failed" in err, err
    assert "failed: worker 0 exited with 2; stopped worker 1;" in err
    assert not (pid_dir / "w0-a1.pid").exists()  # never restarted
    assert not any(alive(pid) for pid in pids(pid_dir).values())


def test_a_command_that_does_not_exist_is_a_message(
    local_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run-local", "--workers", "2", "--", "no-such-cmd", "--flag"]) == 2
    err = capsys.readouterr().err
    assert "cannot start worker 0: 'no-such-cmd': No such file or directory" in err, err
    assert main(["run-local", "--workers", "2", "--env", "JOB_NAME=x", "--", "true"]) == 2
    assert "--env JOB_NAME: run-local sets it itself" in capsys.readouterr().err
    assert main(["run-local", "--workers", "0", "--", "true"]) == 2
    assert "--workers: expected a number of at least 1" in capsys.readouterr().err


def env_lines(out: str) -> list[list[str]]:
    return [line.split()[2:] for line in out.splitlines() if line.split()[1:2] == ["env"]]


def test_resume_reuses_the_name_uid_and_the_secret_from_the_file(
    worker: list[str],
    pid_dir: Path,
    local_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_file = tmp_path / "job.secret"
    first = ["run-local", "--workers", "2", "--job-name", "r", "--secret-file", str(secret_file)]
    rc = main([*first, "--backoff-limit-per-index", "0", "--", *worker, str(pid_dir), "exit1"])
    assert rc == 1
    out, err = capsys.readouterr()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) == 64 and secret not in out + err
    job_id = re.search(r"starting job (r-\w+) with 2 workers", err)
    assert job_id, err
    hint = (
        f"--resume {job_id[1]} --secret-file {secret_file} --workers 2 --backoff-limit-per-index 0"
    )
    assert f"resume with: {'uv run ' if 'UV_RUN_RECURSION_DEPTH' in os.environ else ''}" in err
    assert f"icechunk-coop run-local {hint} -- " in err
    seen = env_lines(out)
    sha = hashlib.sha256(secret.encode()).hexdigest()[:12]
    assert {tuple(s[:4]) for s in seen} == {("r", job_id[1].removeprefix("r-"), "2", sha)}

    again = tmp_path / "again"
    again.mkdir()
    resume = ["run-local", "--resume", job_id[1], "--secret-file", str(secret_file)]
    assert main([*resume, "--workers", "2", "--", *worker, str(again), "ok", "ok"]) == 0
    out, err = capsys.readouterr()
    assert f"resuming job {job_id[1]} with 2 workers; secret from {secret_file}" in err
    assert {tuple(s[:4]) for s in env_lines(out)} == {tuple(seen[0][:4])}

    # Without the secret there is no resuming; a new run of the name is a new job.
    assert main(["run-local", "--resume", job_id[1], "--workers", "2", "--", "true"]) == 2
    assert "--secret-file PATH" in capsys.readouterr().err
    new = ["run-local", "--workers", "1", "--job-name", "r", "--", *worker, str(again)]
    assert main(new) == 0
    assert env_lines(capsys.readouterr().out)[0][1] != seen[0][1]


def test_a_generated_secret_goes_to_a_private_file_that_resume_finds(
    worker: list[str],
    pid_dir: Path,
    local_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run-local", "--workers", "1", "--", *worker, str(pid_dir), "exit1"]) == 1
    out, err = capsys.readouterr()
    found = re.search(
        r"starting job (\S+) with 1 worker; secret from (\S+) \(new, mode 0600\)", err
    )
    assert found, err
    job_id, path = found[1], Path(found[2])
    assert path == tmp_path / "state" / "icechunk-coop" / "secrets" / f"{job_id}.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() not in out + err
    again = tmp_path / "again"
    again.mkdir()
    assert main(["run-local", "--resume", job_id, "--workers", "1", "--", *worker, str(again)]) == 0
    out, err = capsys.readouterr()
    assert f"secret from {path}" in err
    sha = hashlib.sha256(path.read_text().strip().encode()).hexdigest()[:12]
    assert env_lines(out)[0][3] == sha
    assert f"job {job_id}: the worker succeeded" in err


def test_env_secret_is_used_and_never_written(
    worker: list[str],
    pid_dir: Path,
    local_env: dict[str, str],
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(SECRET_ENV, secret)
    assert main(["run-local", "--workers", "1", "--", *worker, str(pid_dir)]) == 0
    out, err = capsys.readouterr()
    assert f"secret from {SECRET_ENV}" in err and secret not in err
    assert env_lines(out)[0][3] == hashlib.sha256(secret.encode()).hexdigest()[:12]
    assert not (tmp_path / "state").exists()
