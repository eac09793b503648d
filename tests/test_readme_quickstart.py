"""The README's quickstart works when copied: its job.py, run as local workers, commits once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import icechunk
import pytest
import zarr

from icechunk_coop import icechunk_storage

ROOT = Path(__file__).resolve().parents[1]
WHERE = "/tmp/coop-quickstart"


def _blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_stays_short_and_keeps_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    two = text[text.index("## The two commands") :]
    start = two.index("```bash\n") + len("```bash\n")
    block = two[start : two.index("```", start)]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["uv run icechunk-coop demo", "uv run pytest"]


@pytest.mark.slow
def test_the_quickstart_runs_as_shown(tmp_path: Path) -> None:
    [script] = _blocks("python")
    [shell] = _blocks("bash")
    assert "icechunk-coop run-local --workers 4 -- python job.py" in shell
    assert WHERE in script
    job = tmp_path / "job.py"
    job.write_text(script.replace(WHERE, str(tmp_path / "quickstart")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "WORKER"))}
    proc = subprocess.run(
        [sys.executable, "-m", "icechunk_coop.cli", "run-local", "--workers", "4", "--",
         sys.executable, str(job)],
        env={**env, "ICECHUNK_LOG": "error", "XDG_STATE_HOME": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker 3: committed" in proc.stdout
    repo = icechunk.Repository.open(icechunk_storage(str(tmp_path / "quickstart" / "repo")))
    root = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert root["x"][:, 0].tolist() == list(range(8))
    assert root.attrs["rows"] == list(range(8))
    messages = [snapshot.message for snapshot in repo.ancestry(branch="main")]
    assert len(messages) == 2 and messages[0].startswith("quickstart")
