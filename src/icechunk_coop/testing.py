"""Local servers for testing pipelines built on icechunk-coop: no cloud needed.

Icechunk talks to storage from Rust, so an in-process mock of botocore never
reaches it; a real S3 server on loopback does. :func:`local_s3` runs moto's
S3 server (install ``moto[server]``) as a separate process, which also keeps
it from competing for the GIL with busy workers::

    from icechunk_coop.testing import local_s3

    with local_s3() as s3:
        s3.create_bucket("demo")
        env = {**os.environ, **s3.env}  # for worker processes
        ...  # s3://demo/... now works for icechunk, s3fs and boto3 alike

:func:`serve` is the general piece: start any server process and wait until
it answers HTTP, with a deadline, stopping it on the way out.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import attrs
import s3fs

__all__ = ["LOOPBACK", "LocalS3", "free_port", "local_s3", "serve"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _tail(log: IO[bytes]) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_for_http(
    proc: subprocess.Popen[bytes], url: str, log: IO[bytes], name: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - a loopback URL of ours
                return
        except urllib.error.HTTPError:
            return  # an error status still means it is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer at {url} within {timeout:.0f}s:\n{_tail(log)}")


@contextlib.contextmanager
def serve(
    argv: Sequence[str], *, ready_url: str, name: str, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends; enter only once ``ready_url`` answers HTTP.

    The server's output goes to a temporary file, not a pipe: servers that log
    every request would block on a pipe nobody drains. On failure the error
    carries the tail of that output.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            _wait_for_http(proc, ready_url, log, name, timeout)
            yield proc
        finally:
            _stop(proc)


@attrs.frozen(kw_only=True)
class LocalS3:
    """Where a local S3 server answers, and the environment that points clients at it."""

    endpoint_url: str
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = attrs.field(default="testing", repr=False)

    @property
    def env(self) -> dict[str, str]:
        """Standard AWS variables: icechunk, s3fs and boto3 all read them."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, name: str) -> None:
        """Create an empty bucket (moto accepts any credentials)."""
        fs = s3fs.S3FileSystem(
            key=self.access_key_id,
            secret=self.secret_access_key,
            endpoint_url=self.endpoint_url,
            skip_instance_cache=True,
        )
        # No region: s3fs would send it as a LocationConstraint, which S3 (and
        # moto) refuse for us-east-1.
        fs.mkdir(name)


def _moto_argv(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", LOOPBACK, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]


@contextlib.contextmanager
def local_s3(*, port: int | None = None, timeout: float = 30.0) -> Iterator[LocalS3]:
    """A moto S3 server in its own process on loopback, for the length of the block."""
    port = port or free_port()
    s3 = LocalS3(endpoint_url=f"http://{LOOPBACK}:{port}")
    with serve(
        _moto_argv(port),
        ready_url=f"{s3.endpoint_url}/moto-api/",
        name="moto_server",
        timeout=timeout,
    ):
        yield s3
