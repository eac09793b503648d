"""The live view in a real terminal (a pty), and what a worker must never import.

run-local and ``status --watch`` each get a pseudo-terminal of their own,
as an operator's shell would give them, and one real job of two worker
processes runs under run-local while the watch follows it.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from icechunk_coop import SECRET_ENV
from icechunk_coop.cli._view import (
    LineView,
    ProcessView,
    RegionCount,
    Snapshot,
    region_jobs_from_line,
)

WORKER = str(Path(__file__).with_name("coop_worker.py"))
ROWS, COLS = 40, 140


def clean_env(**extra: str) -> dict[str, str]:
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_", "NO_COLOR")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


class Terminal:
    """A command in a pseudo-terminal of ROWS x COLS; everything it writes is kept."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self._master, self._chunks = master, bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the other side closed
                return
            if not data:
                return
            self._chunks += data

    @property
    def text(self) -> str:
        return self._chunks.decode("utf-8", "replace")

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()
        self._reader.join(10)
        os.close(self._master)
        return code


@pytest.mark.slow
def test_run_local_and_status_watch_draw_a_live_table_in_a_terminal(
    tmp_path: Path, secret: str
) -> None:
    repo, rv = tmp_path / "repo", tmp_path / "rv"
    rv.mkdir()
    env = clean_env(
        **{SECRET_ENV: secret, "TERM": "xterm-256color", "COOP_TEST_SLEEP_IN_WORK": "1"}
    )
    cli = [sys.executable, "-m", "icechunk_coop.cli"]
    watch = Terminal([*cli, "status", str(rv), "--job", "live", "--watch", "--interval", "0.2"],
                     env)  # fmt: skip
    run = Terminal(
        [*cli, "run-local", "--workers", "2", "--job-name", "live", "--job-uid", "u1",
         "--timeout", "600", "--rendezvous", str(rv), "--",
         sys.executable, WORKER, "--repo", str(repo), "--rendezvous", str(rv)],
        env,
    )  # fmt: skip
    try:
        assert run.wait(timeout=240) == 0, run.text[-4000:]
        assert watch.wait(timeout=120) == 0, watch.text[-4000:]
    finally:
        run.proc.kill()
        watch.proc.kill()
    shown = run.text
    # A table redrawn in place: rich moves the cursor up and erases lines between frames.
    assert "\x1b[2K" in shown and "\x1b[1A" in shown
    for column in ("worker", "step", "process"):
        assert column in shown
    assert "running (pid " in shown  # a frame while the workers ran
    assert "left of 10:00" in shown  # time left before --timeout
    assert "job live-u1: committed" in shown  # the last frame stays
    assert "done" in shown and "succeeded" in shown
    assert "[0] " in shown and "[1] " in shown  # the workers' lines scroll above it
    assert "all 2 workers succeeded" in shown

    followed = watch.text
    assert "\x1b[2K" in followed
    assert "job live-u1: committed" in followed
    assert "worker" in followed and "step" in followed


def test_importing_the_package_and_running_a_worker_loads_no_view_library(
    tmp_path: Path,
) -> None:
    """rich and matplotlib are the operator's: a worker (and the CLI's import) never loads them."""
    code = f"""
import json, runpy, sys
import icechunk_coop, icechunk_coop.cli
repo, rv = {str(tmp_path / "repo")!r}, {str(tmp_path / "rv")!r}
sys.argv = ["worker", "--repo", repo, "--rendezvous", rv]
try:
    runpy.run_path({WORKER!r}, run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("rich", "matplotlib"))
print("LOADED", json.dumps(loaded))
"""
    env = clean_env(WORKERS_TOTAL="1", JOB_COMPLETION_INDEX="0", JOB_NAME="alone")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '"status": "committed"' in proc.stdout  # the worker really ran the job
    assert "LOADED []" in proc.stdout


def test_region_job_counts_are_read_from_run_region_jobs_lines() -> None:
    share = "INFO icechunk_coop.loop: worker 1/4: 3 of 10 region jobs"
    assert region_jobs_from_line(share) == RegionCount(worker=1, done=0, share=3, total=10)
    line = "[1] INFO icechunk_coop.loop: worker 1/4: 2/3 done, 1.5s elapsed, ~1s left"
    assert region_jobs_from_line(line) == RegionCount(worker=1, done=2, share=3)
    assert region_jobs_from_line("worker 1/4: published its result") is None


def test_run_region_jobs_logs_the_lines_the_view_reads() -> None:
    """The live count depends on these two lines: pin their shape to the loop's own logging."""
    import icechunk_coop.jobs._loop as loop_module

    source = Path(loop_module.__file__).read_text()
    share = '"worker %d/%d: %d of %d region job%s"'
    done = '"worker %d/%d: %d/%d done, %.1fs elapsed, ~%.0fs left"'
    assert share in source and done in source

    def logged(fmt: str, *args: object) -> str:
        return logging.makeLogRecord({"msg": fmt, "args": args}).getMessage()

    said = region_jobs_from_line(logged(share.strip('"'), 2, 4, 5, 20, "s"))
    assert said == RegionCount(worker=2, done=0, share=5, total=20)
    said = region_jobs_from_line(logged(done.strip('"'), 2, 4, 1, 5, 0.5, 2.0))
    assert said == RegionCount(worker=2, done=1, share=5)


def test_the_plain_view_writes_a_line_only_when_something_changed() -> None:
    out = io.StringIO()
    view = LineView(out, prefix="icechunk-coop: ")
    running = ProcessView(state="running", attempt=1, pid=42)
    failed = ProcessView(state="restarting", attempt=1, code=-9)
    view.update(Snapshot(job_id="j-u", processes={0: running}, elapsed=1.0))
    view.update(Snapshot(job_id="j-u", processes={0: running}, elapsed=2.0))
    view.update(Snapshot(job_id="j-u", processes={0: failed}, elapsed=3.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == "icechunk-coop: job j-u: starting (0:01 elapsed)"
    assert lines[1] == (
        "icechunk-coop: job j-u: starting; worker 0 restarting: killed by SIGKILL (0:03 elapsed)"
    )
    assert "\x1b" not in out.getvalue()


@pytest.mark.parametrize(
    ("names", "steps"),
    [
        ((), ["setup", "waiting for setup", "waiting for setup"]),
        (("setup",), ["work", "work", "work"]),
        (("setup", "result-0", "result-2"), ["published", "work", "wait"]),
        (("setup", "result-0", "result-1.failed"), ["published", "failed", "work"]),
        (("setup", "result-0", "result-1", "result-2", "plan"), ["published", "published",
                                                                  "commit"]),
        (("committed",), ["done", "done", "done"]),
    ],
    ids=["nothing", "setup", "last-waits", "one-failed", "plan-pinned", "committed"],
)  # fmt: skip
def test_each_workers_step_is_read_from_the_names_in_the_rendezvous(
    names: tuple[str, ...], steps: list[str]
) -> None:
    from icechunk_coop.inspect import JobListing
    from icechunk_coop.inspect._progress import _step

    listing = JobListing(job_id="j-u", names=frozenset(names), newest=None)
    assert [_step(listing, index, 3) for index in range(3)] == steps


def test_status_watch_ends_with_1_when_a_worker_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from icechunk_coop.cli import main
    from icechunk_coop.rendezvous import Rendezvous
    from icechunk_coop.wire import Sealer

    monkeypatch.delenv(SECRET_ENV, raising=False)
    rv = Rendezvous.for_job(str(tmp_path), job_id="f-u1", sealer=Sealer(job_id="f-u1", secret=None))
    rv.mark_failed("result-1", "RuntimeError: no source files")
    assert main(["status", str(tmp_path), "--job", "f", "--watch", "--interval", "0.1"]) == 1
    out = capsys.readouterr().out
    first = out.splitlines()[0]  # the watch's one line, then the status
    assert first.startswith("job f-u1: failed; ") and "1 failed" in first, out
    assert "RuntimeError: no source files" in out  # the status names the failure


class _OnlyTheWorkersImportThis:
    """Unpickles by calling a function that fails, like a class from a worker's __main__."""

    def __reduce__(self) -> tuple[object, ...]:
        import operator

        return operator.truediv, (1, 0)


def test_a_setup_only_the_workers_can_unpickle_still_shows_the_job(
    tmp_path: Path,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from icechunk_coop.cli import main
    from icechunk_coop.inspect import ProgressReader
    from icechunk_coop.rendezvous import Rendezvous
    from icechunk_coop.wire import Sealer

    monkeypatch.setenv(SECRET_ENV, secret)
    sealer = Sealer(job_id="m-u1", secret=secret.encode())
    rv = Rendezvous.for_job(str(tmp_path), job_id="m-u1", sealer=sealer)
    wire = {"format": "icechunk-coop/setup/1", "token": "t", "job": "m-u1", "workers_total": 3,
            "job_start": None, "targets": {}, "decision": _OnlyTheWorkersImportThis()}  # fmt: skip
    rv.publish("setup", wire, content="pickle")
    assert main(["status", str(tmp_path), "--job", "m"]) == 3  # running
    text = capsys.readouterr().out
    assert "job m-u1: running" in text
    assert "its body does not unpickle here: ZeroDivisionError" in text  # said, not swallowed
    progress = ProgressReader(str(tmp_path), "m", secret=secret).read()
    assert progress is not None
    assert [w.step for w in progress.workers] == []  # no total known: nothing to list
    assert progress.state == "running"


def test_region_jobs_done_read_as_words() -> None:
    from icechunk_coop.cli._view import summary

    one = {0: RegionCount(worker=0, done=1, share=3)}
    assert summary(Snapshot(job_id="j", region_jobs=one)).endswith("; 1 region job done")
    both = {**one, 1: RegionCount(worker=1, done=2, share=3, total=6)}
    assert summary(Snapshot(job_id="j", region_jobs=both)).endswith("; region jobs 3/6 done")
    assert summary(Snapshot(job_id="j", region_jobs=both), counts=False) == (
        "job j: nothing in the rendezvous yet"
    )
