"""Sealed frames: how every blob in a rendezvous is written and refused.

A pickled Icechunk session is code: unpickling one runs whatever its bytes
say, and it carries the repository's storage configuration, static keys
included. So nothing we read from storage is unpickled until it has been
*authenticated*, and nothing we write is readable without the job's secret.

A frame is::

    MAGIC (4) | format (1) | header length (4, big-endian) | header (JSON) | nonce (12) | body

The header names the job, the blob's name, the kind of content and the
icechunk version that wrote it, and may carry a record's *public claims*
(see :data:`PUBLIC`). The body is the content encrypted with
AES-256-GCM under a key derived (HKDF-SHA256) from the shared secret, with
the whole header as associated data: a changed header, a changed body, a
truncated blob or another secret all fail the same tag check. Only after the
tag verifies do we look at what the header says (job, name, version), and
only after those match does a caller unpickle.

Public claims: a reader that only needs a record's facts (``status``
wants the setup's worker total, deadline and icechunk version) must not
unpickle the record to get them: a pickle can hold a class only the workers
import, and one written by another icechunk version may not load at all.
So a sealed mapping may name, under the key ``"public"``, a small JSON
object that also travels in the header. It is authenticated like the rest
of the header (it is associated data of the tag), so
:meth:`Sealer.open_header` returns it only after the tag verifies, and a
forged claim is refused like a forged body; it is *not* encrypted, so only
facts anyone who can list the bucket may read go there. Frames without it
(older writers) still open; their readers fall back to the body. Keeping the
claims inside the frame, rather than in a blob beside it, costs no request
on anyone's critical path (a worker's start reads the setup in one batch
already) and cannot disagree with the body it was sealed with.

AES-GCM comes from ``cryptography``, a direct dependency (gcsfs, now the
optional ``gcs`` extra, used to bring it in through google-auth).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import struct
from collections.abc import Mapping
from importlib import metadata
from typing import Any, Literal

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from icechunk_coop.errors import (
    ForeignPayloadError,
    IcechunkVersionError,
    MissingSecretError,
    PayloadAuthenticationError,
    PayloadFormatError,
)

__all__ = ["INSECURE_ENV", "PUBLIC", "SECRET_ENV", "FrameHeader", "Sealer"]

log = logging.getLogger(__name__)


@functools.cache
def _icechunk_version() -> str:
    """The installed icechunk's version, read without importing icechunk (zarr, numpy)."""
    return metadata.version("icechunk")


SECRET_ENV = "ICECHUNK_COOP_SECRET"  # noqa: S105 - a variable name, not a secret
INSECURE_ENV = "ICECHUNK_COOP_INSECURE"

MAGIC = b"ICCP"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">4sBI")
_NONCE_BYTES = 12
_MAX_HEADER = 64 * 1024
_MIN_SECRET_BYTES = 16

Content = Literal["pickle", "json"]

#: The key of a sealed mapping whose value (a JSON object) also travels in the header.
PUBLIC = "public"


def _public_of(obj: Any) -> dict[str, Any] | None:
    """The public claims a sealed object offers (see the module's docstring), if any."""
    if not isinstance(obj, Mapping) or PUBLIC not in obj:
        return None
    claims = obj[PUBLIC]
    if not isinstance(claims, Mapping):
        raise TypeError(f"a record's {PUBLIC!r} claims must be a mapping, got {claims!r}")
    return dict(claims)


@attrs.frozen(kw_only=True)
class FrameHeader:
    """What an authenticated frame's header says, read without deserialising its body.

    ``icechunk`` is the icechunk version of the writer; ``public`` the
    record's public claims (empty for a frame written before they existed).
    """

    job: str
    name: str
    content: str
    icechunk: str | None
    public: Mapping[str, Any] = attrs.field(factory=dict)


def _derive_key(secret: bytes) -> bytes:
    # A fixed salt is fine: the secret is already high-entropy and private;
    # HKDF here only turns "any string" into exactly 32 key bytes.
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"icechunk-coop", info=b"frame-v1"
    ).derive(secret)


@attrs.frozen(kw_only=True)
class Sealer:
    """Seals and opens the frames of one job.

    ``secret`` is shared by every worker of the job (mount it from a
    Kubernetes Secret into ``ICECHUNK_COOP_SECRET``). ``secret=None`` is the
    local-development opt-out: frames are then stored in the clear and
    unauthenticated, and every use is logged as a warning.
    """

    job_id: str
    secret: bytes | None = attrs.field(repr=False)
    _key: AESGCM | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.secret is not None and len(self.secret) < _MIN_SECRET_BYTES:
            raise MissingSecretError(
                f"the shared secret is {len(self.secret)} bytes long; use at least "
                f"{_MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
            )
        key = None if self.secret is None else AESGCM(_derive_key(self.secret))
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_env(cls, job_id: str, environ: Mapping[str, str] | None = None) -> Sealer:
        """The job's sealer, keyed by ``ICECHUNK_COOP_SECRET``.

        Without a secret this refuses, unless ``ICECHUNK_COOP_INSECURE=1``
        asks for unauthenticated frames (local development only).
        """
        env = os.environ if environ is None else environ
        secret = env.get(SECRET_ENV, "")
        if secret:
            return cls(job_id=job_id, secret=secret.encode())
        if env.get(INSECURE_ENV, "").strip().lower() in {"1", "true", "yes"}:
            log.warning(
                "%s is set: rendezvous blobs for job %r are NOT authenticated or "
                "encrypted. Anyone who can write to the rendezvous can run code in "
                "every worker. Use this for local development only.",
                INSECURE_ENV,
                job_id,
            )
            return cls(job_id=job_id, secret=None)
        raise MissingSecretError(
            f"no shared secret: set {SECRET_ENV} to the same random value in every "
            f"worker of job {job_id!r} (e.g. from a Kubernetes Secret), or set "
            f"{INSECURE_ENV}=1 to run without authentication (only when the rendezvous "
            "and every target are local files)"
        )

    @property
    def authenticated(self) -> bool:
        return self._key is not None

    # ---- sealing -------------------------------------------------------

    def seal(self, obj: Any, *, name: str, content: Content) -> bytes:
        """Serialise ``obj`` (pickle or JSON) into a sealed frame for ``name``."""
        if content == "pickle":
            body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        claims: dict[str, Any] = {
            "job": self.job_id,
            "name": name,
            "content": content,
            "icechunk": _icechunk_version(),
            "auth": "aes-256-gcm" if self._key is not None else "none",
        }
        public = _public_of(obj)
        if public is not None:
            claims[PUBLIC] = public
        header = json.dumps(claims, sort_keys=True).encode()
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
        if self._key is None:
            return prefix + body
        nonce = os.urandom(_NONCE_BYTES)
        return prefix + nonce + self._key.encrypt(nonce, body, prefix)

    def open(self, blob: bytes, *, name: str, location: str, expect: Content) -> Any:
        """Verify a frame and return its content, or raise a ``PayloadError``.

        The order is the point: frame shape, then the tag, then the header's
        claims, and only then deserialisation. ``expect`` is the caller's,
        never the frame's, to decide: a frame that says "pickle" where JSON is
        expected (a failure marker, say) is refused, so even a reader without
        the secret (``icechunk-coop status``) never unpickles what it finds.
        """
        header, body = self._verified(blob, name=name, location=location)
        if header.get("content") == "pickle" and header.get("icechunk") != _icechunk_version():
            raise IcechunkVersionError(
                location=location,
                reason=f"it was written by icechunk {header.get('icechunk')}, this process "
                f"runs {_icechunk_version()}: run every worker of a job (and the tools that "
                f"read its sessions) with icechunk {header.get('icechunk')}",
            )
        if header.get("content") != expect:
            raise PayloadFormatError(
                location=location,
                reason=f"it holds {header.get('content')!r} content where {expect!r} is "
                "expected; refusing to deserialise it",
            )
        if expect == "pickle":
            return pickle.loads(body)  # authenticated above; see module docstring
        return json.loads(body)

    def open_header(self, blob: bytes, *, name: str, location: str) -> FrameHeader:
        """Verify a frame and return its header; the body is never deserialised.

        The tag is checked exactly as by :meth:`open` (the body is decrypted
        to do so, then dropped), and so are the job and the name. The icechunk
        version is returned, not checked: telling a reader which version wrote
        a blob is the point of reading the header of one it cannot load.
        """
        header, _ = self._verified(blob, name=name, location=location)
        public = header.get(PUBLIC, {})
        icechunk = header.get("icechunk")
        if not isinstance(public, Mapping) or not isinstance(icechunk, str | None):
            raise PayloadFormatError(location=location, reason="malformed public claims")
        return FrameHeader(
            job=str(header.get("job")),
            name=str(header.get("name")),
            content=str(header.get("content")),
            icechunk=icechunk,
            public=dict(public),
        )

    def _verified(self, blob: bytes, *, name: str, location: str) -> tuple[dict[str, Any], bytes]:
        """The header and the plaintext body of an authentic frame of this job's ``name``."""
        if len(blob) < _PREFIX.size:
            raise PayloadFormatError(
                location=location, reason=f"truncated: {len(blob)} bytes is not a frame"
            )
        magic, version, header_len = _PREFIX.unpack_from(blob)
        if magic != MAGIC:
            raise PayloadFormatError(
                location=location,
                reason="not an icechunk-coop frame (no magic bytes): it was not written "
                "by this library, or it was overwritten",
            )
        if version != FORMAT_VERSION:
            raise PayloadFormatError(
                location=location,
                reason=f"frame format {version} is not {FORMAT_VERSION}: every worker "
                "of a job must run the same icechunk-coop version",
            )
        if header_len > _MAX_HEADER or _PREFIX.size + header_len > len(blob):
            raise PayloadFormatError(location=location, reason="truncated inside its header")
        end = _PREFIX.size + header_len
        prefix, rest = blob[:end], blob[end:]
        try:
            header = json.loads(prefix[_PREFIX.size :])
            auth = header["auth"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PayloadFormatError(location=location, reason="unreadable header") from exc
        body = self._authenticate(auth, prefix, rest, location)
        self._check_claims(header, name=name, location=location)
        return header, body

    def _authenticate(self, auth: object, prefix: bytes, rest: bytes, location: str) -> bytes:
        if self._key is None:
            if auth != "none":
                raise PayloadAuthenticationError(
                    location=location,
                    reason=f"it is sealed ({auth}) but no secret is configured here: "
                    f"set {SECRET_ENV} to the job's shared secret",
                )
            return rest
        if auth != "aes-256-gcm":
            raise PayloadAuthenticationError(
                location=location,
                reason=f"it is not authenticated (auth={auth!r}); it was written with "
                f"{INSECURE_ENV} or by someone else. Refusing to load it",
            )
        if len(rest) < _NONCE_BYTES + 16:
            raise PayloadFormatError(location=location, reason="truncated before its tag")
        try:
            return self._key.decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], prefix)
        except InvalidTag:
            raise PayloadAuthenticationError(
                location=location,
                reason="its authentication tag does not verify: it was truncated, "
                f"tampered with, or sealed with another secret (check {SECRET_ENV} "
                "is the same in every worker)",
            ) from None

    def _check_claims(self, header: Mapping[str, Any], *, name: str, location: str) -> None:
        if header.get("job") != self.job_id:
            raise ForeignPayloadError(
                location=location,
                reason=f"it belongs to job {header.get('job')!r}, not {self.job_id!r}",
            )
        if header.get("name") != name:
            raise ForeignPayloadError(
                location=location,
                reason=f"it was written as {header.get('name')!r}, not {name!r}",
            )
