"""What ``status`` and ``report`` say is true: who was never seen, why a job ended, exit codes.

Workers run as real processes started the way an Indexed Job starts pods
(environment variables), on local files; their setup's decision holds a
class of the worker script's ``__main__`` that no reader can import, as a
real job's does. Setups whose header must say something a run cannot
produce (a deadline long past, another icechunk version, a forged claim)
are sealed here with the package's own API.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from importlib.metadata import version
from pathlib import Path

import pytest

from icechunk_coop import SECRET_ENV, ConfigurationError
from icechunk_coop.cli import build_parser, main, report, status
from icechunk_coop.cli._parser import STATUS_EXIT
from icechunk_coop.errors import PayloadAuthenticationError, PayloadFormatError
from icechunk_coop.inspect import ProgressReader
from icechunk_coop.rendezvous import Rendezvous
from icechunk_coop.testing import start_workers
from icechunk_coop.wire import Sealer, _payload
from icechunk_coop.wire._records import SETUP, Setup, SetupHeader, result_name

WORKER = str(Path(__file__).with_name("status_worker.py"))
RUNNING, FAILED, STOPPED = STATUS_EXIT["running"], STATUS_EXIT["failed"], STATUS_EXIT["stopped"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without job identity or secrets (each worker gets its own)."""
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


def run_workers(
    tmp: Path,
    total: int,
    indexes: Iterable[int],
    *,
    secret: str,
    timeout: float = 60,
    extra_env: Mapping[int, Mapping[str, str]] | None = None,
) -> dict[int, tuple[int, str]]:
    """Run ``indexes`` of a job of ``total`` workers at once, like pods; (exit code, output)."""
    argv = [sys.executable, WORKER, "--repo", str(tmp / "repo"), "--rendezvous", str(tmp / "rv"),
            "--timeout", str(timeout)]  # fmt: skip
    procs = start_workers(
        argv, total, job_name="truth", job_uid="u1", secret=secret, env=clean_env(),
        indexes=indexes, extra_env=extra_env,
    )  # fmt: skip
    outcomes = {}
    for index, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        outcomes[index] = (proc.returncode, out)
    return outcomes


def status_of(rv: Path, secret: str | None) -> tuple[int, str]:
    """``status --job`` as a script runs it: its exit code and what it printed."""
    env = clean_env(**({SECRET_ENV: secret} if secret else {}))
    proc = subprocess.run(
        [sys.executable, "-m", "icechunk_coop.cli", "status", str(rv), "--job", "truth"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


def rows(text: str) -> dict[int, list[str]]:
    return {int(line.split()[0]): line.split() for line in text.splitlines() if line[:1].isdigit()}


def test_four_pods_of_an_eight_worker_job_exit_0_and_status_names_the_four_never_seen(
    tmp_path: Path,
    secret: str,
) -> None:
    ran = run_workers(tmp_path, 8, range(4), secret=secret)
    assert {i: code for i, (code, _) in ran.items()} == dict.fromkeys(range(4), 0), ran
    code, text = status_of(tmp_path / "rv", secret)
    assert code == RUNNING != 0, text
    assert "job truth-u1: running" in text
    # The total comes from the setup's header: the decision's class is not needed.
    assert "setup: published for 8 workers" in text
    assert "(workers total 8, from the setup)" in text
    assert {i: r[1] for i, r in rows(text).items()} == {
        **dict.fromkeys(range(4), "arrived"), **dict.fromkeys(range(4, 8), "missing"),
    }  # fmt: skip
    assert "never seen: 4..7 of 0..7 (no result, no failure marker)" in text
    assert "among them the committer, index 7" in text
    assert "the Job's completions may disagree with WORKERS_TOTAL (8)" in text
    assert "no worker has" not in text

    progress = ProgressReader(str(tmp_path / "rv"), "truth", secret=secret).read()
    assert progress is not None
    assert (progress.state, progress.workers_total, progress.finished) == ("running", 8, False)


def test_a_committed_job_is_the_only_one_status_exits_0_for(tmp_path: Path, secret: str) -> None:
    ran = run_workers(tmp_path, 2, range(2), secret=secret)
    assert all(code == 0 for code, _ in ran.values()), ran
    assert '"status": "committed"' in ran[1][1]
    code, text = status_of(tmp_path / "rv", secret)
    assert code == 0, text
    assert "job truth-u1: committed" in text and "never seen" not in text
    out = io.StringIO()
    assert status(str(tmp_path / "rv"), None, None, out) == 0  # the list of jobs
    assert "truth-u1  committed  all" in out.getvalue()  # every worker's result was merged


def test_a_worker_that_raised_makes_status_exit_failed_with_its_error(
    tmp_path: Path, secret: str
) -> None:
    ran = run_workers(tmp_path, 2, [0], extra_env={0: {"STATUS_TEST_RAISE": "1"}}, secret=secret)
    assert ran[0][0] != 0
    code, text = status_of(tmp_path / "rv", secret)
    assert code == FAILED, text
    assert "job truth-u1: failed" in text
    assert rows(text)[0][1] == "failed" and "worker 0 found no source files" in text
    assert "never seen: 1 of 0..1" in text and "the committer, index 1" in text


def test_workers_that_gave_up_waiting_make_status_exit_stopped(tmp_path: Path, secret: str) -> None:
    # Worker 0 never runs: index 1 waits for the setup, gives up, and says so.
    ran = run_workers(tmp_path, 3, [1], timeout=1, secret=secret)
    assert ran[1][0] != 0 and "WaitTimeoutError" in ran[1][1], ran[1][1][-2000:]
    code, text = status_of(tmp_path / "rv", secret)
    assert code == STOPPED, text
    assert "job truth-u1: stopped" in text
    assert "stopped: worker 1 gave up waiting: what it waited for never came" in text
    # No setup, so no total: only the index that ran is listed, and the total is said to be a guess.
    assert rows(text)[1][1] == "failed" and "inferred as 2" in text


def publish_setup(
    rv: Path, secret: str, *, total: int, deadline: float | None, job: str = "truth-u1"
) -> bytes:
    """Seal a setup (no targets) as worker 0 would; its raw frame."""
    rendezvous = Rendezvous.for_job(
        str(rv), job_id=job, sealer=Sealer(job_id=job, secret=secret.encode())
    )
    record = Setup(token="t", job=job, workers_total=total, targets={}, deadline=deadline)
    rendezvous.publish(SETUP, record.to_wire(), content="pickle")
    frame = rendezvous.blobs.get(SETUP)
    assert frame is not None
    return frame


def test_a_job_whose_deadline_has_passed_is_stopped_and_says_when(
    tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SECRET_ENV, secret)
    rv = tmp_path / "rv"
    publish_setup(rv, secret, total=4, deadline=1000.0)  # 1970: long past, on any clock
    assert main(["status", str(rv), "--job", "truth"]) == STOPPED
    text = capsys.readouterr().out
    assert "job truth-u1: stopped" in text
    assert "its waits ended at 1970-01-01T00:16:40+00:00" in text
    assert "never seen: 1..3 of 0..3" in text  # worker 0 published the setup
    assert rows(text)[0][1:] == ["missing", "published", "the", "setup"]

    publish_setup(tmp_path / "later", secret, total=4, deadline=time.time() + 30 * 86400)
    assert main(["status", str(tmp_path / "later"), "--job", "truth"]) == RUNNING
    assert "deadline 20" in capsys.readouterr().out  # shown as a date


def test_a_forged_setup_header_is_refused_not_believed(
    tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rv = tmp_path / "rv"
    frame = publish_setup(rv, secret, total=8, deadline=None)
    claim = b'"workers_total": 8'
    assert frame.count(claim) == 1  # in the header, in the clear: readable, not writable
    forged = frame.replace(claim, b'"workers_total": 4')
    with pytest.raises(PayloadAuthenticationError, match="does not verify"):
        Sealer(job_id="truth-u1", secret=secret.encode()).open_header(
            forged, name=SETUP, location="here"
        )
    (rv / "truth-u1" / SETUP).write_bytes(forged)
    monkeypatch.setenv(SECRET_ENV, secret)
    assert main(["status", str(rv), "--job", "truth"]) == RUNNING
    text = capsys.readouterr().out
    assert "its header unreadable (sealed with another secret" in text
    assert "or tampered with" in text
    assert "for 4 workers" not in text and "workers total 4" not in text


def test_a_setup_that_cannot_be_read_says_why(
    tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rv = tmp_path / "rv"
    frame = publish_setup(rv, secret, total=3, deadline=None)
    monkeypatch.setenv(SECRET_ENV, "another-" + secret)
    assert main(["status", str(rv), "--job", "truth"]) == RUNNING
    assert "header unreadable (sealed with another secret" in capsys.readouterr().out
    monkeypatch.setenv(SECRET_ENV, secret)
    (rv / "truth-u1" / SETUP).write_bytes(frame[:20])  # cut inside its header
    assert main(["status", str(rv), "--job", "truth"]) == RUNNING
    assert "header unreadable (refused: truncated inside its header)" in capsys.readouterr().out
    (rv / "truth-u1" / SETUP).write_bytes(frame[:-100])  # cut in its body: the tag fails
    assert main(["status", str(rv), "--job", "truth"]) == RUNNING
    assert "or truncated or tampered with" in capsys.readouterr().out


class _Unimportable:
    """Unpickles by calling a function that fails, like a class from a worker's __main__."""

    def __reduce__(self) -> tuple[object, ...]:
        import operator

        return operator.truediv, (1, 0)


def test_a_setup_sealed_before_headers_still_opens_or_says_why_not(
    tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(SECRET_ENV, secret)
    for job, decision in (("old-u1", None), ("older-u1", _Unimportable())):
        rendezvous = Rendezvous.for_job(
            str(tmp_path), job_id=job, sealer=Sealer(job_id=job, secret=secret.encode())
        )
        wire = {"format": Setup.FORMAT, "token": "t", "job": job, "workers_total": 3,
                "job_start": None, "targets": {}, "decision": decision}  # fmt: skip
        rendezvous.publish(SETUP, wire, content="pickle")  # no public claims: an older writer
    assert main(["status", str(tmp_path), "--job", "old"]) == RUNNING
    assert "setup: published for 3 workers, by icechunk unknown" in capsys.readouterr().out
    assert main(["status", str(tmp_path), "--job", "older"]) == RUNNING
    text = capsys.readouterr().out
    assert "its body does not unpickle here: ZeroDivisionError" in text
    assert "pass --workers N" in text


def test_report_says_which_icechunk_version_sealed_what_it_cannot_open(
    tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job = "truth-u1"
    rendezvous = Rendezvous.for_job(
        str(tmp_path), job_id=job, sealer=Sealer(job_id=job, secret=secret.encode())
    )
    with monkeypatch.context() as patch:
        patch.setattr(_payload, "_icechunk_version", lambda: "0.0.1")
        record = Setup(token="t", job=job, workers_total=2, targets={})
        rendezvous.publish(SETUP, record.to_wire(), content="pickle")
        rendezvous.publish(result_name(0), {"format": "whatever"}, content="pickle")
    assert _payload._icechunk_version() == version("icechunk")
    monkeypatch.setenv(SECRET_ENV, secret)
    with pytest.raises(ConfigurationError) as refused:
        report(str(tmp_path), "truth", output=tmp_path / "no.png", out=io.StringIO())
    message = str(refused.value)
    assert "written by icechunk 0.0.1" in message and f"runs {version('icechunk')}" in message
    assert "a wrong secret" not in message
    assert main(["status", str(tmp_path), "--job", "truth"]) == RUNNING
    text = capsys.readouterr().out
    assert f"by icechunk 0.0.1 (this tool runs {version('icechunk')})" in text


def test_the_setup_header_round_trips_and_an_unknown_format_is_refused(secret: str) -> None:
    sealer = Sealer(job_id="j-u", secret=secret.encode())
    record = Setup(token="t", job="j-u", workers_total=5, targets={}, job_start="2025-01-01")
    frame = sealer.seal(record.to_wire(), name=SETUP, content="pickle")
    header = SetupHeader.from_frame(sealer.open_header(frame, name=SETUP, location="x"), "x")
    assert header == SetupHeader(
        workers_total=5, icechunk=version("icechunk"), job_start="2025-01-01", deadline=None
    )
    assert Setup.from_wire(sealer.open(frame, name=SETUP, location="x", expect="pickle"), "x") == (
        record
    )
    wire = {**record.to_wire(), "public": {"format": "icechunk-coop/setup-header/99"}}
    other = sealer.seal(wire, name=SETUP, content="pickle")
    with pytest.raises(PayloadFormatError, match="setup-header/99"):
        SetupHeader.from_frame(sealer.open_header(other, name=SETUP, location="x"), "x")


def test_status_help_documents_each_exit_code_and_run_locals_examples_keep_their_lines() -> None:
    parser = build_parser()
    subs = {a.dest: a for a in parser._actions}["cmd"].choices  # type: ignore[attr-defined]
    text = subs["status"].format_help()
    for line in ("0    committed", f"{RUNNING}    running", f"{FAILED}    failed",
                 f"{STOPPED}    stopped without committing"):  # fmt: skip
        assert line in text
    assert len({0, RUNNING, FAILED, STOPPED, 1, 2}) == 6  # none shares a code with another
    run_local = subs["run-local"].format_help()
    assert "rendezvous -- \\\n      python job.py --rendezvous" in run_local
