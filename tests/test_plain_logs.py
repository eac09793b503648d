"""icechunk's log lines reach a pipe without colour codes, whatever a worker imports first.

icechunk reads ``NO_COLOR`` once, when it is imported. ``import icechunk_coop``
sets it when stderr is not a terminal, which is in time only if it comes first;
a script sorted by ruff or isort imports ``icechunk`` first, so the container's
environment (or ``run-local``, or ``testing.start_workers``) sets it instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from icechunk_coop.testing import start_workers

ESCAPE = "\x1b["

#: A worker that makes icechunk warn (local files are not safe for concurrent commits).
WARN = (
    "import sys, tempfile\n"
    "{imports}\n"
    "icechunk.set_logs_filter('warn')\n"
    "icechunk.Repository.create(icechunk.local_filesystem_storage(tempfile.mkdtemp()))\n"
)
COOP_FIRST = "import icechunk_coop\nimport icechunk"
ICECHUNK_FIRST = "import icechunk\nimport icechunk_coop"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "ICECHUNK_LOG"}}
    return {**env, **extra}


def _stderr_through_a_pipe(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stderr


def test_importing_icechunk_coop_first_keeps_colour_codes_out_of_a_pipe() -> None:
    err = _stderr_through_a_pipe(WARN.format(imports=COOP_FIRST), _env())
    assert "WARN" in err, err
    assert ESCAPE not in err, repr(err)


def test_no_color_in_the_environment_works_whatever_is_imported_first() -> None:
    err = _stderr_through_a_pipe(WARN.format(imports=ICECHUNK_FIRST), _env(NO_COLOR="1"))
    assert "WARN" in err, err
    assert ESCAPE not in err, repr(err)


def test_a_no_color_already_set_is_left_alone() -> None:
    code = (
        "import os, sys\n"
        "import icechunk_coop._plain_logs as p\n"
        "print(os.environ.get('NO_COLOR'), p.plain_logs_when_piped())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(NO_COLOR="0"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["0", "False"]


@pytest.mark.slow
def test_start_workers_sets_no_color_for_workers_that_import_icechunk_first(
    tmp_path: Path,
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WARN.format(imports=ICECHUNK_FIRST))
    procs = start_workers(
        [sys.executable, str(script)], 2, job_name="plain", job_uid="logs", env=_env()
    )
    for proc in procs.values():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "WARN" in out, out
        assert ESCAPE not in out, repr(out)
