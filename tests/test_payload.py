"""Sealed frames: what is refused, and that refusing happens before unpickling."""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import icechunk
import pytest

from icechunk_coop.errors import (
    ForeignPayloadError,
    IcechunkVersionError,
    MissingSecretError,
    PayloadAuthenticationError,
    PayloadError,
    PayloadFormatError,
)
from icechunk_coop.wire import Sealer


class Boom:
    """Unpickling this creates a file: the canary for 'was it unpickled?'."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


@pytest.fixture
def sealer(secret: str) -> Sealer:
    return Sealer(job_id="job-a", secret=secret.encode())


@pytest.mark.parametrize("content", ["json", "pickle"])
def test_round_trip(sealer: Sealer, content: str) -> None:
    obj = {"worker": 3, "files": ["a", "b"]}
    blob = sealer.seal(obj, name="result-3", content=content)  # type: ignore[arg-type]
    assert sealer.open(blob, name="result-3", location="here", expect=content) == obj  # type: ignore[arg-type]


def test_body_is_not_readable_without_the_secret(sealer: Sealer) -> None:
    blob = sealer.seal({"secret_access_key": "AKIAVERYSECRET"}, name="setup", content="pickle")
    assert b"AKIAVERYSECRET" not in blob


def test_planted_raw_pickle_is_never_unpickled(sealer: Sealer, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    with pytest.raises(PayloadFormatError, match="not an icechunk-coop frame"):
        sealer.open(
            pickle.dumps(Boom(canary)), name="setup", location="bucket/setup", expect="pickle"
        )
    assert not canary.exists()


@pytest.mark.parametrize("auth", ["none", "aes-256-gcm"])
def test_forged_frame_with_malicious_pickle_is_refused(
    sealer: Sealer, tmp_path: Path, auth: str
) -> None:
    canary = tmp_path / "pwned"
    header = (
        f'{{"auth":"{auth}","content":"pickle","icechunk":"{icechunk.__version__}","job":"job-a","name":"setup"}}'
    ).encode()
    body = pickle.dumps(Boom(canary))
    if auth != "none":
        body = b"\0" * 12 + body + b"\0" * 16
    forged = struct.pack(">4sBI", b"ICCP", 1, len(header)) + header + body
    with pytest.raises(PayloadAuthenticationError):
        sealer.open(forged, name="setup", location="bucket/setup", expect="pickle")
    assert not canary.exists()


@pytest.mark.parametrize("sealed", [True, False], ids=["with-secret", "without"])
def test_a_pickle_where_json_is_expected_is_never_unpickled(
    tmp_path: Path, secret: str, sealed: bool
) -> None:
    # Authentic or not, a frame does not get to choose to be unpickled: a failure
    # marker read without the secret (icechunk-coop status) must stay data.
    canary = tmp_path / "pwned"
    reader = Sealer(job_id="job-a", secret=secret.encode() if sealed else None)
    blob = reader.seal(Boom(canary), name="result-0.failed", content="pickle")
    with pytest.raises(PayloadFormatError, match="'pickle' content where 'json' is expected"):
        reader.open(blob, name="result-0.failed", location="x", expect="json")
    assert not canary.exists()


def test_tampered_byte_is_refused(sealer: Sealer) -> None:
    blob = bytearray(sealer.seal([1, 2, 3], name="setup", content="json"))
    blob[-5] ^= 0x01
    with pytest.raises(PayloadAuthenticationError, match="tampered"):
        sealer.open(bytes(blob), name="setup", location="x", expect="json")


def test_tampered_header_is_refused(sealer: Sealer) -> None:
    blob = sealer.seal([1], name="result-1", content="json")
    forged = blob.replace(b'"name": "result-1"', b'"name": "result-2"')
    assert forged != blob
    with pytest.raises(PayloadAuthenticationError):
        sealer.open(forged, name="result-2", location="x", expect="json")


@pytest.mark.parametrize("keep", [0, 3, 9, 30, -1])
def test_truncated_is_refused(sealer: Sealer, keep: int) -> None:
    blob = sealer.seal({"k": "v" * 100}, name="setup", content="json")
    with pytest.raises(PayloadError):
        sealer.open(blob[:keep], name="setup", location="x", expect="json")


def test_other_secret_is_refused(sealer: Sealer) -> None:
    blob = Sealer(job_id="job-a", secret=b"another-secret-of-32-bytes-long!").seal(
        1, name="setup", content="json"
    )
    with pytest.raises(PayloadAuthenticationError, match="another secret"):
        sealer.open(blob, name="setup", location="x", expect="json")


def test_other_job_is_refused(sealer: Sealer, secret: str) -> None:
    blob = Sealer(job_id="job-b", secret=secret.encode()).seal(1, name="setup", content="json")
    with pytest.raises(ForeignPayloadError, match="job-b"):
        sealer.open(blob, name="setup", location="x", expect="json")


def test_blob_moved_to_another_name_is_refused(sealer: Sealer) -> None:
    blob = sealer.seal(1, name="result-1", content="json")
    with pytest.raises(ForeignPayloadError, match="result-1"):
        sealer.open(blob, name="result-2", location="x", expect="json")


_SEAL_ELSEWHERE = """
import sys
from pathlib import Path
from icechunk_coop.wire import Sealer

class Boom:
    def __reduce__(self):
        return (Path.touch, (Path(sys.argv[2]),))

sealer = Sealer(job_id="job-a", secret=sys.argv[1].encode())
sys.stdout.buffer.write(sealer.seal(Boom(), name="setup", content="pickle"))
"""


def test_other_icechunk_version_is_refused(sealer: Sealer, secret: str, tmp_path: Path) -> None:
    """A setup sealed by a worker whose environment has icechunk 1.0.0 installed."""
    canary = tmp_path / "pwned"
    elsewhere = tmp_path / "site"  # first on its path: what its package metadata says
    (elsewhere / "icechunk-1.0.0.dist-info").mkdir(parents=True)
    (elsewhere / "icechunk-1.0.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: icechunk\nVersion: 1.0.0\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(elsewhere), *sys.path])}
    blob = subprocess.run(
        [sys.executable, "-c", _SEAL_ELSEWHERE, secret, str(canary)],
        env=env, capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert not canary.exists()
    with pytest.raises(IcechunkVersionError, match=r"icechunk 1\.0\.0"):
        sealer.open(blob, name="setup", location="x", expect="pickle")
    assert not canary.exists()


def test_unsigned_frame_is_refused_by_a_secured_worker(sealer: Sealer) -> None:
    blob = Sealer(job_id="job-a", secret=None).seal(1, name="setup", content="json")
    with pytest.raises(PayloadAuthenticationError, match="not authenticated"):
        sealer.open(blob, name="setup", location="x", expect="json")


def test_from_env_requires_a_secret() -> None:
    with pytest.raises(MissingSecretError, match="ICECHUNK_COOP_SECRET"):
        Sealer.from_env("job-a", {})


def test_short_secret_is_refused() -> None:
    with pytest.raises(MissingSecretError, match="at least 16"):
        Sealer.from_env("job-a", {"ICECHUNK_COOP_SECRET": "short"})


def test_insecure_opt_out_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sealer = Sealer.from_env("job-a", {"ICECHUNK_COOP_INSECURE": "1"})
    assert not sealer.authenticated
    assert "NOT authenticated" in caplog.text


def test_errors_pickle() -> None:
    err = PayloadAuthenticationError(location="s3://b/p", reason="bad tag")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is PayloadAuthenticationError
    assert str(back) == str(err)
    assert back.location == "s3://b/p"
