"""Servers on loopback, each its own process: moto's S3 and the fault-injecting proxy."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
import s3fs

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


# ---- faults ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FaultProxy(LocalS3):
    """A running fault proxy: an S3 endpoint (like :class:`LocalS3`) that misbehaves on purpose.

    ``endpoint_url`` and ``env`` point clients at the proxy; ``upstream_url``
    is the server behind it (go there directly to check what really landed).
    Rates are fractions of requests (``lose_reply``: of writes); one request
    gets at most one of ``reset``, ``slowdown``, ``error500``, ``lose_reply``
    (they add up to at most 1) and, independently, a ``delay``:

    - ``reset``: the connection is reset before the request is forwarded (a
      dropped connection; nothing reached storage);
    - ``slowdown``: ``503 SlowDown`` with S3's XML error body (S3 throttling);
    - ``error500``: ``500 InternalError`` (a transient S3 failure);
    - ``lose_reply``: a PUT/POST/DELETE is forwarded and lands, then the
      connection is reset instead of answering (a lost response: the
      client's retry meets its own write);
    - ``delay`` with ``delay_ms``: the reply is held that long after storage
      answered (a slow store; a client that times out first sees a lost reply).

    ``budget`` and ``match`` aim faults at one request (``set_rates(lose_reply=1,
    budget=1, match=r"/repo$")`` loses the reply of the next branch update of an
    icechunk 2 repository); ``seed`` makes the sequence of faults reproducible
    for requests that arrive in the same order. The proxy holds each request
    whole before forwarding it, so it suits small objects (not multi-GB bodies).
    """

    upstream_url: str

    def _control(self, path: str, payload: Mapping[str, object] | None = None) -> object:
        data = None if payload is None else json.dumps(dict(payload)).encode()
        request = urllib.request.Request(  # noqa: S310 - a loopback URL of ours
            f"{self.endpoint_url}/_faults/{path}",
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ValueError(f"the fault proxy refused {path}: {detail}") from exc

    def counts(self) -> dict[str, int]:
        """Requests seen, forwarded, and faults injected by kind, since the proxy started."""
        counts = self._control("counts")
        assert isinstance(counts, dict)
        return {str(k): int(v) for k, v in counts.items()}

    def rates(self) -> dict[str, Any]:
        """The settings in force now: every rate, ``delay_ms``, ``budget`` and ``match``."""
        rates = self._control("rates")
        assert isinstance(rates, dict)
        return {str(k): v for k, v in rates.items()}

    def set_rates(self, **changes: float | int | str | None) -> dict[str, Any]:
        """Change some settings for later requests; the others keep their value.

        Rates: ``reset``, ``slowdown``, ``error500``, ``lose_reply``, ``delay``
        (with ``delay_ms``). Aiming: ``seed`` restarts the random sequence;
        ``budget=n`` lets only the next ``n`` requests be hit (``None``: no
        limit); ``match="/refs/"`` hits only requests whose path that regular
        expression finds (``None``: every request). Returns the settings in
        force; ValueError (with the proxy's reason) if one is refused.
        """
        got = self._control("rates", changes)
        assert isinstance(got, dict)
        return {str(k): v for k, v in got.items()}

    def clear(self) -> dict[str, Any]:
        """Every rate back to 0, no budget, no match: the proxy forwards everything."""
        return self.set_rates(
            reset=0,
            slowdown=0,
            error500=0,
            lose_reply=0,
            delay=0,
            delay_ms=0,
            budget=None,
            match=None,
        )

    def lost_writes(self) -> list[tuple[str, str, int]]:
        """``(method, path, upstream status)`` of every write whose reply was dropped."""
        lost = self._control("lost")
        assert isinstance(lost, list)
        return [(str(m), str(p), int(s)) for m, p, s in lost]


@contextlib.contextmanager
def fault_proxy(
    upstream_url: str,
    *,
    reset: float = 0.0,
    slowdown: float = 0.0,
    error500: float = 0.0,
    lose_reply: float = 0.0,
    delay: float = 0.0,
    delay_ms: float = 0.0,
    seed: int | None = None,
    port: int | None = None,
    timeout: float = 30.0,
) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of ``upstream_url``, in its own process, for the block.

    See :class:`FaultProxy` for what each rate imitates; change them while it
    runs with :meth:`FaultProxy.set_rates`. The proxy runs ``python -m
    icechunk_coop.testing._faults`` on a loopback port; the control endpoints live
    under ``/_faults/`` (no bucket name can start with ``_``).
    """
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "icechunk_coop.testing._faults",
        "--port",
        str(port),
        "--upstream",
        upstream_url,
        "--reset",
        str(reset),
        "--slowdown",
        str(slowdown),
        "--error500",
        str(error500),
        "--lose-reply",
        str(lose_reply),
        "--delay-rate",
        str(delay),
        "--delay-ms",
        str(delay_ms),
    ]
    if seed is not None:
        argv += ["--seed", str(seed)]
    proxy = FaultProxy(endpoint_url=f"http://{LOOPBACK}:{port}", upstream_url=upstream_url)
    ready = f"{proxy.endpoint_url}/_faults/rates"
    with serve(argv, ready_url=ready, name="fault proxy", timeout=timeout):
        yield proxy


# ---- jobs -------------------------------------------------------------------------------
