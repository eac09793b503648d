"""A storage-agnostic meeting point for the workers of one job.

Workers of an indexed job share nothing but object storage, so that is where
they meet: one publishes a blob, others wait for it. This module knows
nothing of Icechunk; it moves sealed frames (see ``_payload``) between
processes through any fsspec filesystem.

What is atomic where (the rest of the protocol leans on exactly this):

- ``publish`` replaces a blob whole. S3 and GCS PUTs are atomic; on a local
  filesystem we write a temporary file and ``os.replace`` it; memory is one
  assignment. A reader never sees a torn blob.
- ``publish_once`` is put-if-absent. S3 uses ``If-None-Match: *``, GCS
  ``ifGenerationMatch=0`` (both through fsspec's ``mode="create"``); local
  files use ``os.link`` of a complete temporary file, which fails if the
  name exists and never exposes a half-written file (plain ``open("xb")``
  would); memory is guarded by a process-wide lock. A lost HTTP response can
  make the client's own retry see its own object and report a false
  conflict, so a conflict is resolved by reading the blob back.
- Probes never trust a cache: the filesystems are opened with listing
  caches off and every probe invalidates what fsspec might still hold
  (s3fs would otherwise answer ``exists`` from a stale listing forever).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs
import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from icechunk_coop._errors import ConfigurationError, WaitTimeoutError, WorkerFailedError
from icechunk_coop._payload import Content, Sealer
from icechunk_coop._waiting import WaitPolicy, poll_until

__all__ = ["FAILED_SUFFIX", "JobListing", "Rendezvous", "list_jobs", "normalise_url"]

log = logging.getLogger(__name__)

FAILED_SUFFIX = ".failed"
_TMP_MARK = ".tmp-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SCHEMES = {"s3", "s3a", "gs", "gcs", "file", "memory"}
_MEMORY_LOCK = threading.Lock()


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


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or _TMP_MARK in name:
        raise ConfigurationError(
            f"blob name {name!r} is unsafe as a path segment: use letters, digits, '.', "
            "'_' and '-', starting with a letter or digit"
        )
    return name


def _default_options(protocol: str, given: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"skip_instance_cache": True}
    if protocol in {"s3", "s3a"}:
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


@attrs.define(kw_only=True)
class RequestCounter:
    """Object-store operations issued, by kind (get, put, list, delete).

    One operation is at least one HTTP request; a backend may send more (s3fs
    lists the parent too when a prefix is empty). ``benchmarks/`` counts
    what reaches the wire.
    """

    counts: Counter[str] = attrs.field(factory=Counter)

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@attrs.frozen(kw_only=True)
class Rendezvous:
    """The meeting point of one job: a namespace ``<root>/<job_id>/``.

    Build it with :meth:`for_job`. Every blob is sealed with ``sealer``, so
    a blob from another job, another secret or a tampered one is refused
    before it is deserialised.
    """

    url: str
    sealer: Sealer
    policy: WaitPolicy = attrs.field(factory=WaitPolicy)
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    requests: RequestCounter = attrs.field(factory=RequestCounter, eq=False, repr=False)
    _fs: fsspec.AbstractFileSystem = attrs.field(init=False, eq=False, repr=False)
    _root: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        protocol = self.url.split("://", 1)[0] if "://" in self.url else "file"
        options = _default_options(protocol, self.storage_options)
        fs, root = fsspec.core.url_to_fs(self.url, **options)
        object.__setattr__(self, "_fs", fs)
        object.__setattr__(self, "_root", root.rstrip("/"))

    @classmethod
    def for_job(
        cls,
        root_url: str,
        *,
        job_id: str,
        sealer: Sealer,
        storage_options: Mapping[str, Any] | None = None,
        policy: WaitPolicy | None = None,
    ) -> Rendezvous:
        """The rendezvous of ``job_id`` under ``root_url``.

        ``job_id`` should include the orchestrator's uid when there is one
        (``WorkerIdentity.job_id`` does) so that a re-created job with the same
        name never reads an older run's blobs.
        """
        if job_id != sealer.job_id:
            raise ConfigurationError(
                f"the sealer is for job {sealer.job_id!r} but the rendezvous for {job_id!r}"
            )
        url = f"{normalise_url(root_url)}/{_check_name(job_id)}"
        return cls(
            url=url,
            sealer=sealer,
            storage_options=dict(storage_options or {}),
            policy=policy or WaitPolicy(),
        )

    @property
    def job_id(self) -> str:
        return self.sealer.job_id

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _path(self, name: str) -> str:
        return f"{self._root}/{_check_name(name)}"

    # ---- raw bytes -------------------------------------------------------

    def _fresh(self, path: str) -> None:
        self._fs.invalidate_cache(path)
        self._fs.invalidate_cache(self._root)

    def _get(self, name: str) -> bytes | None:
        path = self._path(name)
        self._fresh(path)
        self.requests.add("get")
        try:
            data: bytes = self._fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data

    def _put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self.requests.add("put")
        if isinstance(self._fs, LocalFileSystem):
            os.makedirs(self._root, exist_ok=True)
            tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self._fs.pipe_file(path, data)

    def _put_if_absent(self, name: str, data: bytes) -> bool:
        """Store ``data`` unless the name exists; True if ours is what is stored."""
        path = self._path(name)
        self.requests.add("put")
        try:
            if isinstance(self._fs, LocalFileSystem):
                os.makedirs(self._root, exist_ok=True)
                tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                finally:
                    os.unlink(tmp)
            elif isinstance(self._fs, MemoryFileSystem):
                with _MEMORY_LOCK:
                    if self._fs.exists(path):
                        raise FileExistsError(path)
                    self._fs.pipe_file(path, data)
            else:
                self._fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            # Possibly our own write whose response was lost: compare.
            return self._get(name) == data
        return True

    def _delete(self, name: str) -> None:
        path = self._path(name)
        self.requests.add("delete")
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(path)
        self._fs.invalidate_cache(path)

    def arrived(self) -> set[str]:
        """Names of the blobs present now (failure markers included), from one listing."""
        self._fresh(self._root)
        self.requests.add("list")
        try:
            entries = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return set()
        names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries}
        return {n for n in names if _TMP_MARK not in n}

    # ---- sealed objects ----------------------------------------------------

    def publish(self, name: str, obj: Any, *, content: Content = "json") -> None:
        """Store ``obj`` under ``name``, replacing whatever was there.

        Idempotent: a worker that runs again replaces its own blob whole.
        """
        self._put(name, self.sealer.seal(obj, name=name, content=content))
        log.debug("published %s", self.location(name))

    def publish_once(self, name: str, obj: Any, *, content: Content = "json") -> tuple[bool, Any]:
        """Store ``obj`` under ``name`` only if nothing is there yet.

        Returns ``(True, obj)`` if ours landed, else ``(False, existing)``
        with the blob that won, opened and verified.
        """
        data = self.sealer.seal(obj, name=name, content=content)
        if self._put_if_absent(name, data):
            return True, obj
        existing = self.read(name, content=content)
        if existing is None:  # removed between our attempt and the read: try again
            return self.publish_once(name, obj, content=content)
        return False, existing

    def read(self, name: str, *, content: Content = "json") -> Any | None:
        """The verified content of ``name``, or None when absent.

        ``content`` is what the caller expects; a blob holding anything else is
        refused (JSON by default: only sessions travel as pickles).
        """
        data = self._get(name)
        if data is None:
            return None
        return self.sealer.open(data, name=name, location=self.location(name), expect=content)

    def remove(self, name: str) -> None:
        """Delete one blob (absent is fine)."""
        self._delete(name)

    def mark_failed(self, name: str, summary: str) -> None:
        """Tell waiters of ``name`` that it will not come: they stop at once."""
        self.publish(
            name + FAILED_SUFFIX,
            {"name": name, "summary": summary[:2000], "at": time.time()},
        )

    def clear_failure(self, name: str) -> None:
        """Remove the failure marker of ``name`` (a retry is under way)."""
        self._delete(name + FAILED_SUFFIX)

    def remove_all(self, *, keep: Iterable[str] = ()) -> None:
        """Delete this job's whole namespace, except the blobs named in ``keep``."""
        kept = {_check_name(n) for n in keep}
        self.requests.add("delete")
        self._fresh(self._root)
        with contextlib.suppress(FileNotFoundError):
            if not kept:
                self._fs.rm(self._root, recursive=True)
            else:
                self.requests.add("list")
                entries = [str(e).rstrip("/") for e in self._fs.ls(self._root, detail=False)]
                doomed = [e for e in entries if e.rsplit("/", 1)[-1] not in kept]
                if doomed:
                    self._fs.rm(doomed)  # one bulk request on S3
        self._fresh(self._root)

    # ---- waiting -------------------------------------------------------------

    def _failures(self, names: Iterable[str]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for name in names:
            marker = self.read(name + FAILED_SUFFIX)
            if marker is not None:
                failures[name] = str(marker.get("summary", "no summary"))
        return failures

    def wait_for(
        self, name: str, *, content: Content = "json", policy: WaitPolicy | None = None
    ) -> Any:
        """Wait until ``name`` is published and return its verified content.

        Each poll costs two GET-class requests (the blob and its failure
        marker); see ``WaitPolicy`` for how often that happens.
        """
        _check_name(name)

        def probe() -> tuple[Any] | None:
            value = self.read(name, content=content)
            if value is not None:
                return (value,)
            if self._get(name + FAILED_SUFFIX) is not None:
                raise WorkerFailedError(
                    location=self.url, failures=self._failures([name]), job=self.job_id
                )
            return None

        def timeout(waited: float) -> Exception:
            return WaitTimeoutError(
                location=self.url,
                missing=[name],
                expected=1,
                waited_seconds=waited,
                job=self.job_id,
            )

        log.info("waiting for %s", self.location(name))
        return poll_until(probe, policy or self.policy, timeout)[0]

    def wait_for_all(
        self,
        names: Iterable[str],
        *,
        content: Content = "json",
        policy: WaitPolicy | None = None,
    ) -> dict[str, Any]:
        """Wait until every name is published; return their contents by name.

        One LIST per poll covers all of them and their failure markers, so
        the cost of a poll does not grow with the number of workers (up to a
        thousand names per listing page); each blob is then read once.
        """
        wanted = [_check_name(n) for n in names]
        got: dict[str, Any] = {}
        last_report = [time.monotonic()]

        def probe() -> dict[str, Any] | None:
            present = self.arrived()
            failed = [n for n in wanted if n not in present and n + FAILED_SUFFIX in present]
            if failed:
                raise WorkerFailedError(
                    location=self.url, failures=self._failures(failed), job=self.job_id
                )
            for name in wanted:
                if name in present and name not in got:
                    value = self.read(name, content=content)
                    if value is not None:
                        got[name] = value
            if len(got) == len(wanted):
                return {n: got[n] for n in wanted}
            if time.monotonic() - last_report[0] > 30:
                last_report[0] = time.monotonic()
                log.info(
                    "%d of %d arrived at %s; still waiting for %s",
                    len(got),
                    len(wanted),
                    self.url,
                    ", ".join(n for n in wanted if n not in got)[:500],
                )
            return None

        def timeout(waited: float) -> Exception:
            return WaitTimeoutError(
                location=self.url,
                missing=[n for n in wanted if n not in got],
                expected=len(wanted),
                waited_seconds=waited,
                job=self.job_id,
            )

        log.info("waiting for %d blobs at %s", len(wanted), self.url)
        return poll_until(probe, policy or self.policy, timeout)


def _modified(info: Mapping[str, Any]) -> float | None:
    """Last-modified time of an fsspec ``info`` entry, whichever backend wrote it."""
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


@attrs.frozen(kw_only=True)
class JobListing:
    """What a rendezvous holds for one job, from one listing (nothing is opened)."""

    job_id: str
    names: frozenset[str]
    newest: float | None

    def indexes(self, prefix: str) -> dict[int, str]:
        """Worker indexes found under ``prefix-<i>``, with their state."""
        found: dict[int, str] = {}
        for name in self.names:
            stem = name.removesuffix(FAILED_SUFFIX)
            if stem.startswith(prefix + "-") and stem[len(prefix) + 1 :].isdigit():
                index = int(stem[len(prefix) + 1 :])
                if name == stem:
                    found[index] = "arrived"
                else:
                    found.setdefault(index, "failed")
        return found


def list_jobs(
    root_url: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, JobListing]:
    """Every job namespace under ``root_url``, from one recursive listing."""
    url = normalise_url(root_url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    fs, root = fsspec.core.url_to_fs(url, **_default_options(protocol, storage_options or {}))
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    try:
        entries = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    grouped: dict[str, list[tuple[str, float | None]]] = {}
    for path, info in entries.items():
        rel = str(path).rstrip("/")[len(root) :].strip("/")
        if "/" not in rel:
            continue
        job_id, name = rel.split("/", 1)
        if _TMP_MARK in name or "/" in name:
            continue
        grouped.setdefault(job_id, []).append((name, _modified(info)))
    return {
        job_id: JobListing(
            job_id=job_id,
            names=frozenset(n for n, _ in items),
            newest=max((m for _, m in items if m is not None), default=None),
        )
        for job_id, items in grouped.items()
    }
