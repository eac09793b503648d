"""The command's manners: --version, help, -v/-q anywhere, words, exit codes of status/clean."""

from __future__ import annotations

import argparse
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

from icechunk_coop.cli import build_parser, main
from icechunk_coop.testing import LOOPBACK, free_port

COMMANDS = ("run-local", "status", "report", "clean", "demo")


def test_version_comes_from_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"icechunk-coop {version('icechunk-coop')}"


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_help_has_examples_exit_codes_and_a_text_for_every_option() -> None:
    parser = build_parser()
    helps = {"": parser.format_help()}
    for name, sub in subparsers(parser).items():
        helps[name] = sub.format_help()
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert set(helps) == {"", *COMMANDS}
    for name, text in helps.items():
        assert "examples:" in text, name
        assert "exit codes:" in text, name
        assert "0    done" in text and "2    not retryable" in text, name
    assert (
        "ICECHUNK_COOP_LOG_LEVEL" in helps[""] and "ICECHUNK_COOP_LOG_LEVEL" in helps["run-local"]
    )


def test_an_unknown_command_is_a_usage_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "Traceback" not in err
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "level"),
    [([], "INFO"), (["-v"], "DEBUG"), (["-q"], "WARNING")],
    ids=["default", "verbose", "quiet"],
)
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbosity_goes_anywhere_and_reaches_the_workers(
    flags: list[str],
    level: str,
    where: str,
    tmp_path: Path,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ICECHUNK_COOP_LOG_LEVEL", raising=False)
    monkeypatch.setenv("ICECHUNK_COOP_SECRET", secret)
    show = "import os; print('level', os.environ['ICECHUNK_COOP_LOG_LEVEL'])"
    run = ["--workers", "1", "--", sys.executable, "-c", show]
    argv = [*flags, "run-local", *run] if where == "before" else ["run-local", *flags, *run]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"[0] level {level}" in out
    # Quiet: only warnings and errors; otherwise progress, in words that read right.
    assert ("started, pid" in err) == (level != "WARNING"), err
    assert ("with 1 worker;" in err) == (level != "WARNING")
    assert "the worker succeeded" in err and "1 workers" not in err


def test_the_environment_sets_the_level_unless_a_flag_does(
    secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ICECHUNK_COOP_SECRET", secret)
    monkeypatch.setenv("ICECHUNK_COOP_LOG_LEVEL", "warning")
    show = "import os; print('level', os.environ['ICECHUNK_COOP_LOG_LEVEL'])"
    assert main(["run-local", "--workers", "1", "--", sys.executable, "-c", show]) == 0
    assert "[0] level WARNING" in capsys.readouterr().out
    assert main(["-v", "run-local", "--workers", "1", "--", sys.executable, "-c", show]) == 0
    assert "[0] level DEBUG" in capsys.readouterr().out
    monkeypatch.setenv("ICECHUNK_COOP_LOG_LEVEL", "loud")
    assert main(["status", "memory://x"]) == 2
    assert "ICECHUNK_COOP_LOG_LEVEL='LOUD'" in capsys.readouterr().err


def test_status_and_clean_refuse_a_bucket_that_does_not_exist(
    base_env: dict[str, str], s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"s3://no-such-{uuid.uuid4().hex[:8]}/rendezvous"
    commands = (["status"], ["status", "--job", "j"], ["clean", "--older-than", "1h"])
    for command in commands:
        argv = [command[0], missing, *command[1:]]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"the rendezvous bucket at {missing} does not exist" in err, err
    # The bucket exists but holds nothing: no jobs (0); no such job (1), for both commands.
    there = f"s3://{s3_bucket}/rendezvous"
    assert main(["status", there]) == 0
    assert f"no jobs at {there}" in capsys.readouterr().out
    assert main(["status", there, "--job", "j"]) == 1
    assert main(["clean", there, "--job", "j"]) == 1
    assert f"job 'j': nothing at {there}" in capsys.readouterr().out
    assert main(["clean", there, "--older-than", "1h"]) == 0
    assert "no job at" in capsys.readouterr().out


@pytest.mark.timeout(80)  # a hang guard: each used to take a minute of client retries
def test_status_and_clean_say_when_the_storage_does_not_answer(
    base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://{LOOPBACK}:{free_port()}"  # nobody listens
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for command in (["status"], ["clean", "--job", "j"]):
        assert main([command[0], "s3://some-bucket/rv", *command[1:]]) == 1
        err = capsys.readouterr().err
        assert "cannot reach the storage at s3://some-bucket/rv" in err, err
        assert endpoint in err and "Traceback" not in err


def test_clean_names_a_repository_it_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rv, repo = tmp_path / "rv", tmp_path / "no-repo"
    (rv / "old-u1").mkdir(parents=True)
    (rv / "old-u1" / "setup").write_bytes(b"x")
    assert main(["clean", str(rv), "--job", "old-u1", "--repo", str(repo)]) == 2
    assert f"--repo {repo}: cannot open the repository" in capsys.readouterr().err
    assert (rv / "old-u1").exists()  # refused before removing anything


def test_a_worker_that_fails_reports_its_error_once(
    tmp_path: Path,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The library tells the other workers and raises; the error is reported once, by the caller."""
    monkeypatch.setenv("ICECHUNK_COOP_SECRET", secret)
    monkeypatch.setenv("COOP_TEST_RAISE_IN_WORK", "1")
    worker = [sys.executable, str(Path(__file__).with_name("coop_worker.py"))]
    where = ["--repo", str(tmp_path / "repo"), "--rendezvous", str(tmp_path / "rv")]
    argv = ["run-local", "--workers", "1", "--backoff-limit-per-index", "0", "--", *worker, *where]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    said = [line for line in out.splitlines() if "worker 0 found no source files" in line]
    assert len(said) == 1, out  # the traceback's last line, and nothing else
    assert "failed (RuntimeError); telling the other workers" in out
    assert "failed: worker 0 exited with 1" in err
