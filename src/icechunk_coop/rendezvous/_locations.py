"""Where things live: location URLs, safe names, and cache-free filesystems.

Storage locations are URLs (``s3://``, ``gs://``, ``file://`` or a path,
``memory://`` for one process) with fsspec-style options beside them. The
options we add by default are the ones coordination cannot do without:
no listing caches (s3fs would answer ``exists`` from a stale listing
forever) and one GET per read.

``gs://`` locations go through gcsfs, which is the optional ``gcs`` extra
(23 packages an S3-only user does not need): :func:`require_filesystem`
refuses such a URL when gcsfs is missing, naming the extra, before any
worker reads or writes anything.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import fsspec

from icechunk_coop.errors import ConfigurationError

__all__ = [
    "TMP_MARK",
    "check_name",
    "default_options",
    "filesystem",
    "normalise_url",
    "protocol_of",
    "require_filesystem",
]

TMP_MARK = ".tmp-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SCHEMES = {"s3", "s3a", "gs", "gcs", "file", "memory"}
#: Schemes whose fsspec filesystem is an optional extra: (module, extra).
_EXTRAS = {"gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def normalise_url(url: str) -> str:
    """Check a location URL and return it without a trailing slash.

    Accepts ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///path``,
    a plain path, and ``memory://name`` (one process only).
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"location URL must be a non-empty string, got {url!r}")
    if "://" not in url:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url) and not re.match(r"^[A-Za-z]:[\\/]", url):
            raise ConfigurationError(
                f"malformed location URL {url!r}: write SCHEME://..., e.g. s3://bucket/prefix"
            )
        return os.path.abspath(os.path.expanduser(url)).rstrip("/") or "/"
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"unsupported scheme {parsed.scheme!r} in location URL {url!r}: use one of "
            f"{', '.join(sorted(_SCHEMES))}, or a plain local path"
        )
    if parsed.scheme in {"s3", "s3a", "gs", "gcs"} and not parsed.netloc:
        raise ConfigurationError(
            f"location URL {url!r} names no bucket: write {parsed.scheme}://BUCKET/PREFIX"
        )
    if parsed.query or parsed.fragment:
        raise ConfigurationError(
            f"location URL {url!r} has a query or fragment; pass options as storage_options"
        )
    if any(part in {".", ".."} for part in parsed.path.split("/")):
        raise ConfigurationError(f"location URL {url!r} contains '.' or '..' segments")
    return url.rstrip("/")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or TMP_MARK in name:
        raise ConfigurationError(
            f"blob name {name!r} is unsafe as a path segment: use letters, digits, '.', "
            "'_' and '-', starting with a letter or digit"
        )
    return name


@functools.cache
def _shared_s3_session() -> Any:
    """One botocore session for every S3 filesystem this process opens.

    Each client a session creates parses the S3 service model and endpoint
    rules (megabytes of JSON, 0.15 s of CPU); a session caches them, so the
    probe's client and the blob store's share that cost instead of paying it
    twice on every worker's first step. Clients are all made on fsspec's one
    event-loop thread, so sharing the session is safe.
    """
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    return get_session()


def default_options(protocol: str, given: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"skip_instance_cache": True}
    if protocol in {"s3", "s3a"}:
        if "profile" not in given:  # s3fs makes a session of its own for a profile
            options["session"] = _shared_s3_session()
        options["use_listings_cache"] = False
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in given:
            options["endpoint_url"] = endpoint
        options["config_kwargs"] = {"retries": {"total_max_attempts": 10, "mode": "standard"}}
        # Blobs are small: read each with one GET. Above 1, s3fs first HEADs every
        # object to plan ranged reads, which doubles the cost of every poll.
        options["max_concurrency"] = 1
    elif protocol in {"gs", "gcs"}:
        options["use_listings_cache"] = False
        if os.environ.get("STORAGE_EMULATOR_HOST") and "token" not in given:
            options["token"] = "anon"  # noqa: S105 - the emulator takes no credentials
    options.update(given)
    return options


def protocol_of(url: str) -> str:
    """The fsspec protocol of a normalised URL (``file`` for a plain path)."""
    return url.split("://", 1)[0] if "://" in url else "file"


def require_filesystem(url: str, role: str = "location") -> None:
    """Refuse ``url`` at once if the fsspec filesystem it needs is not installed.

    Without this, fsspec's own ImportError comes from deep inside the first
    read, on every worker, without the extra that fixes it. Only whether the
    module can be found is checked (no import: gcsfs takes a second to load,
    and fsspec imports it anyway when the filesystem opens). An Icechunk
    repository on ``gs://`` does not come here: icechunk reaches GCS itself.
    """
    needed = _EXTRAS.get(protocol_of(url))
    if needed is None:
        return
    module, extra = needed
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent
        found = False
    if not found:
        raise ConfigurationError(
            f"{role} {url!r} needs {module}, which is not installed: install the {extra!r} "
            f"extra, pip install 'icechunk-coop[{extra}]' (or uv add 'icechunk-coop[{extra}]')"
        )


def filesystem(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem behind ``url`` with our defaults, and the path inside it."""
    url = normalise_url(url)
    require_filesystem(url)
    options = default_options(protocol_of(url), storage_options or {})
    fs, root = fsspec.core.url_to_fs(url, **options)
    return fs, str(root).rstrip("/")
