"""Icechunk storage from the same URLs the rendezvous takes.

Credentials are never baked into a ``Storage`` here: S3 and GCS read them
from the environment (``from_env=True``), so a pickled session carries no
static keys, and moto, MinIO and AWS differ only in ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

import icechunk

from icechunk_coop.errors import ConfigurationError
from icechunk_coop.rendezvous._locations import normalise_url

__all__ = ["icechunk_storage"]


def icechunk_storage(url: str, environ: Mapping[str, str] | None = None) -> icechunk.Storage:
    """An Icechunk ``Storage`` for ``s3://``, ``gs://``, ``file://``/path or ``memory://``.

    S3 honours ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) and
    ``AWS_REGION``/``AWS_DEFAULT_REGION``; a custom endpoint implies
    path-style addressing, and an ``http://`` endpoint allows plain HTTP.
    """
    env = os.environ if environ is None else environ
    url = normalise_url(url)
    if "://" not in url:
        return icechunk.local_filesystem_storage(url)
    parsed = urllib.parse.urlparse(url)
    prefix = parsed.path.strip("/")
    if parsed.scheme in {"s3", "s3a"}:
        if not prefix:
            raise ConfigurationError(
                f"repository URL {url!r} needs a prefix inside the bucket: s3://BUCKET/PREFIX"
            )
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        return icechunk.s3_storage(
            bucket=parsed.netloc,
            prefix=prefix,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            endpoint_url=endpoint,
            allow_http=bool(endpoint and endpoint.startswith("http://")),
            force_path_style=bool(endpoint),
            from_env=True,
        )
    if parsed.scheme in {"gs", "gcs"}:
        if not prefix:
            raise ConfigurationError(
                f"repository URL {url!r} needs a prefix inside the bucket: gs://BUCKET/PREFIX"
            )
        return icechunk.gcs_storage(bucket=parsed.netloc, prefix=prefix, from_env=True)
    if parsed.scheme == "file":
        return icechunk.local_filesystem_storage(parsed.path)
    if parsed.scheme == "memory":
        raise ConfigurationError(
            f"{url!r}: an in-memory Icechunk repository cannot be shared between worker "
            "processes; use a local path or an object store"
        )
    raise ConfigurationError(f"unsupported repository URL {url!r}")  # pragma: no cover
