"""moto's S3 server and the counting proxy in front of it, as subprocesses.

Everything the benchmark measures talks to the proxy (``AWS_ENDPOINT_URL``);
the harness's own chores (creating buckets, seeding blobs, creating and
checking repositories) talk to moto directly, so they are never counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icechunk_coop.testing import LOOPBACK, LocalS3, free_port, local_s3, serve

_PROXY_SCRIPT = Path(__file__).with_name("_proxy.py")
_REGION = "us-east-1"


@dataclass(frozen=True)
class S3:
    """Where the benchmark's S3 lives: moto (direct) and the counting proxy."""

    direct_url: str
    proxy_url: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"  # noqa: S105 - moto accepts anything
    region: str = _REGION

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """AWS environment for clients; counted (through the proxy) unless told otherwise."""
        return LocalS3(
            endpoint_url=endpoint or self.proxy_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        ).env

    @property
    def direct_env(self) -> dict[str, str]:
        return self.env(self.direct_url)

    def boto3_client(self, *, counted: bool, max_pool: int = 10) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.proxy_url if counted else self.direct_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(max_pool_connections=max_pool, retries={"mode": "standard"}),
        )

    def create_bucket(self, name: str) -> None:
        self.boto3_client(counted=False).create_bucket(Bucket=name)

    def _control(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.proxy_url}{path}", timeout=30) as resp:  # noqa: S310
            return json.load(resp)

    def counts(self, bucket: str) -> dict[str, int]:
        """Requests the proxy forwarded for ``bucket``, by kind."""
        return {k: int(v) for k, v in self._control("/_bench/counts").get(bucket, {}).items()}

    def events(self, bucket: str) -> list[tuple[float, str, int]]:
        """``(unix_time, kind, status)`` of every request forwarded for ``bucket``."""
        return [
            (float(t), str(k), int(s))
            for t, k, s in self._control(f"/_bench/events?bucket={bucket}")
        ]

    def log(self, bucket: str) -> list[tuple[float, float, str, str, str, str, int]]:
        """``(start, end, caller, method, kind, path, status)`` of every request for ``bucket``.

        ``caller`` is the access key that signed it: give each worker its own
        (:meth:`worker_env`) to tell their requests apart.
        """
        return [
            (float(a), float(b), str(c), str(m), str(k), str(p), int(s))
            for a, b, c, m, k, p, s in self._control(f"/_bench/log?bucket={bucket}")
        ]

    def worker_env(self, index: int) -> dict[str, str]:
        """The counted environment of worker ``index``: its requests signed by key ``w<index>``."""
        return {**self.env(), "AWS_ACCESS_KEY_ID": f"w{index}"}


def clean_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment minus identity variables, plus ``extra``."""
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


@contextlib.contextmanager
def s3_servers(latency_ms: float = 0.0) -> Iterator[S3]:
    """Start moto and the counting proxy; point this process's AWS env at the proxy."""
    proxy_port = free_port()
    proxy = f"http://{LOOPBACK}:{proxy_port}"
    proxy_argv = [sys.executable, str(_PROXY_SCRIPT), "--port", str(proxy_port)]
    proxy_argv += ["--latency-ms", str(latency_ms)]
    with (
        local_s3() as moto,
        serve(
            [*proxy_argv, "--upstream", moto.endpoint_url],
            ready_url=f"{proxy}/_bench/counts",
            name="counting proxy",
        ),
    ):
        s3 = S3(direct_url=moto.endpoint_url, proxy_url=proxy)
        saved = {k: os.environ.get(k) for k in s3.env()}
        for key in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL_S3",
        ):
            os.environ.pop(key, None)
        os.environ.update(s3.env())
        try:
            yield s3
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
