"""Where ``run-local`` gets a job's shared secret, and where it keeps one it generated.

Resuming a job needs the secret its first run used (every blob is sealed
with it). ``--secret-file PATH`` names a file holding it; a new job with a
path that does not exist yet generates a secret there. Without the option,
``ICECHUNK_COOP_SECRET`` is used if set, else the file
``$XDG_STATE_HOME/icechunk-coop/secrets/<job id>.secret`` (default
``~/.local/state``): read if this job id ran before (so ``--resume`` finds
it by itself), generated otherwise. Files are created with mode 0600; the
secret is never printed, only the file's path.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from icechunk_coop import SECRET_ENV, ConfigurationError

__all__ = ["Secret", "default_secret_file", "resolve_secret"]


@dataclass(frozen=True, kw_only=True)
class Secret:
    """A job's secret and where it came from (``file`` is what a resume names)."""

    value: str = field(repr=False)
    source: str
    file: Path | None = None
    created: bool = False
    warning: str | None = None


def default_secret_file(job_id: str, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    state = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else None
    base = state or Path.home() / ".local" / "state"
    return base / "icechunk-coop" / "secrets" / f"{job_id}.secret"


def _read(path: Path) -> Secret:
    try:
        value = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigurationError(f"--secret-file {path}: {exc.strerror or exc}") from exc
    if not value:
        raise ConfigurationError(f"--secret-file {path} is empty")
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = f"{path} can be read by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
    return Secret(value=value, source=str(path), file=path, warning=warning)


def _generate(path: Path) -> Secret:
    value = secrets.token_hex(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write the job's secret to {path}: {exc.strerror or exc}"
        ) from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return Secret(value=value, source=str(path), file=path, created=True)


def resolve_secret(
    *,
    job_id: str,
    secret_file: Path | None,
    resume: bool,
    environ: Mapping[str, str] | None = None,
) -> Secret:
    """The secret for ``job_id``: the file given, else the environment's, else a new one.

    Resuming never generates one: a new secret could not open the blobs the
    job's first run sealed.
    """
    env = os.environ if environ is None else environ
    if secret_file is not None:
        if secret_file.exists() or resume:
            return _read(secret_file)
        return _generate(secret_file)
    if env.get(SECRET_ENV):
        return Secret(value=env[SECRET_ENV], source=SECRET_ENV)
    default = default_secret_file(job_id, env)
    if default.exists():  # this job ran before: its secret
        return _read(default)
    if resume:
        raise ConfigurationError(
            f"--resume {job_id} needs the secret the job started with: pass --secret-file PATH "
            f"(run-local printed the path when the job started) or set {SECRET_ENV}; "
            f"no {default}"
        )
    return _generate(default)
