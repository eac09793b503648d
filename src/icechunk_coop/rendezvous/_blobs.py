"""Raw bytes in one folder of any fsspec filesystem: what is atomic where.

- ``put`` replaces a blob whole. S3 and GCS PUTs are atomic; on a local
  filesystem we write a temporary file and ``os.replace`` it; memory is one
  assignment. A reader never sees a torn blob.
- ``put_if_absent`` is put-if-absent. S3 uses ``If-None-Match: *``, GCS
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
import functools
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from icechunk_coop.errors import MissingLocationError, StorageUnreachableError
from icechunk_coop.rendezvous._locations import TMP_MARK, check_name, filesystem, protocol_of

__all__ = ["BlobStore", "RequestCounter"]

_MEMORY_LOCK = threading.Lock()
#: The rendezvous's S3 client settings when the caller gives none (see ``_locations``).
_S3_CONFIG = {"retries": {"total_max_attempts": 10, "mode": "standard"}}
#: How many GETs of one batch read run at once.
FETCH_CONCURRENCY = 32


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


_PASS_THROUGH = (FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError)
_TRANSPORT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "google")


def _transport_errors[**P, T](method: Callable[P, T]) -> Callable[P, T]:
    """Turn what outlasts the client's retries (a reset, a dead endpoint) into our error.

    botocore's connection errors are not ``OSError``s; left raw they end a
    worker with a traceback that names neither the job nor what to do. And
    s3fs turns a final 500 or 503 SlowDown into a bare ``OSError`` (errno 121
    or 16), so any ``OSError`` but the four that mean "not there", "already
    there", "a folder" and "not allowed" is the store failing too.
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            transport = type(exc).__module__.startswith(_TRANSPORT_MODULES)
            if not (transport or isinstance(exc, OSError)):
                raise
            store = args[0]
            assert isinstance(store, BlobStore)
            raise StorageUnreachableError(url=store.url, detail=str(exc)[:300]) from exc

    return wrapper


@attrs.frozen(kw_only=True)
class BlobStore:
    """The blobs under ``url``, as bytes: get, put, put-if-absent, delete, list."""

    url: str
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    requests: RequestCounter = attrs.field(factory=RequestCounter, eq=False, repr=False)
    _fs: fsspec.AbstractFileSystem = attrs.field(init=False, eq=False, repr=False)
    _root: str = attrs.field(init=False, eq=False, repr=False)
    #: check_reachable's own client (few retries, short timeouts), built once.
    _probes: list[fsspec.AbstractFileSystem] = attrs.field(factory=list, init=False, eq=False,
                                                           repr=False)  # fmt: skip
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, eq=False, repr=False)
    #: Set once a request on the main client reached the bucket (see :meth:`connect`).
    _reached: threading.Event = attrs.field(factory=threading.Event, init=False, eq=False,
                                            repr=False)  # fmt: skip

    def __attrs_post_init__(self) -> None:
        options = dict(self.storage_options)
        if protocol_of(self.url) in {"s3", "s3a"}:
            # A batch read (get_many) sends FETCH_CONCURRENCY GETs at once: the
            # connection pool must hold them all (botocore's default is 10), or
            # 32 reads cost four round trips instead of one.
            config = dict(options.get("config_kwargs") or _S3_CONFIG)
            config.setdefault("max_pool_connections", FETCH_CONCURRENCY)
            options["config_kwargs"] = config
        fs, root = filesystem(self.url, options)
        object.__setattr__(self, "_fs", fs)
        object.__setattr__(self, "_root", root)

    def connect(self) -> None:
        """Build the storage client and send it one request, so the job's first read does not.

        Building a botocore client costs about 0.1-0.5 s of CPU, and its first
        request as much again (aiohttp's TLS contexts, the operation's model);
        a job does both while it is being built (``CooperativeJob``), not on
        its critical path. The request is a HEAD of the bucket: when it
        answers, the bucket is reachable and :meth:`check_reachable` has
        nothing left to ask (a second client, the probe, is then never built).
        When it does not, nothing is raised here: :meth:`check_reachable`
        probes and says why, on a client with short timeouts.
        """
        if isinstance(self._fs, LocalFileSystem | MemoryFileSystem):
            return
        connect = getattr(self._fs, "connect", None)  # s3fs builds its client here
        if callable(connect):
            connect()
        self.requests.add("get")
        try:
            self._fs.info(self._bucket)
        except Exception:  # told by check_reachable, not here
            return
        self._reached.set()

    @property
    def _bucket(self) -> str:
        return self._root.split("/", 1)[0]

    def _path(self, name: str) -> str:
        return f"{self._root}/{check_name(name)}"

    def _fresh(self, path: str) -> None:
        self._fs.invalidate_cache(path)
        self._fs.invalidate_cache(self._root)

    @_transport_errors
    def get(self, name: str) -> bytes | None:
        path = self._path(name)
        self._fresh(path)
        self.requests.add("get")
        try:
            data: bytes = self._fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data

    @_transport_errors
    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        """The blobs of ``names`` that exist, fetched concurrently (bounded) where the backend can.

        s3fs and gcsfs run the GETs of one ``cat`` call concurrently, up to
        ``batch_size`` (:data:`FETCH_CONCURRENCY`) at a time, so collecting N
        results costs about N / FETCH_CONCURRENCY round trips, not N.
        """
        if not names:
            return {}
        paths = {self._path(n): n for n in names}
        for path in paths:
            self._fs.invalidate_cache(path)
        self.requests.add("get", len(paths))
        found = self._fs.cat(list(paths), on_error="omit", batch_size=FETCH_CONCURRENCY)
        return {paths[p]: data for p, data in found.items() if p in paths}

    def _complete_temp(self, path: str, data: bytes) -> str:
        """A local file beside ``path`` holding all of ``data``, synced: nobody reads it."""
        os.makedirs(self._root, exist_ok=True)
        tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    @_transport_errors
    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self.requests.add("put")
        if isinstance(self._fs, LocalFileSystem):
            os.replace(self._complete_temp(path, data), path)
        else:
            self._fs.pipe_file(path, data)

    @_transport_errors
    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Store ``data`` unless the name exists; True if ours is what is stored."""
        path = self._path(name)
        self.requests.add("put")
        try:
            if isinstance(self._fs, LocalFileSystem):
                tmp = self._complete_temp(path, data)
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
            return self.get(name) == data
        return True

    @_transport_errors
    def delete(self, name: str) -> None:
        path = self._path(name)
        self.requests.add("delete")
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(path)
        self._fs.invalidate_cache(path)

    @_transport_errors
    def names(self) -> set[str]:
        """Names of the blobs present now (failure markers included), from one listing."""
        self._fresh(self._root)
        self.requests.add("list")
        try:
            entries = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return set()
        names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries}
        return {n for n in names if TMP_MARK not in n}

    def remove_all(self, *, keep: Iterable[str] = ()) -> None:
        """Delete the whole folder, except the blobs named in ``keep``."""
        kept = {check_name(n) for n in keep}
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

    def _probe(self) -> fsspec.AbstractFileSystem:
        """A client of its own with few retries and short timeouts, built once.

        A dead endpoint is then reported in seconds, not after the minute
        botocore's ten attempts take.
        """
        with self._lock:
            if not self._probes:
                options = dict(self.storage_options)
                if protocol_of(self.url) in {"s3", "s3a"}:
                    options.setdefault(
                        "config_kwargs",
                        {"retries": {"total_max_attempts": 2, "mode": "standard"},
                         "connect_timeout": 5, "read_timeout": 20},
                    )  # fmt: skip
                self._probes.append(filesystem(self.url, options)[0])
            return self._probes[0]

    def check_reachable(self) -> None:
        """Refuse at once a meeting point whose bucket does not exist or cannot be reached.

        Without this, a typo in the bucket name surfaces as a raw
        ``FileNotFoundError`` in worker 0 while every other worker waits out
        its deadline for a setup that can never be written.
        """
        if isinstance(self._fs, LocalFileSystem | MemoryFileSystem) or self._reached.is_set():
            return
        self.requests.add("get")
        probe = self._probe()
        try:
            probe.info(self._bucket)
        except FileNotFoundError as exc:
            raise MissingLocationError(
                url=self.url, role="the rendezvous bucket", detail=str(exc)[:200]
            ) from exc
        except PermissionError as exc:
            raise MissingLocationError(
                url=self.url, role="the rendezvous bucket", detail=f"access denied ({exc})"
            ) from exc
        except Exception as exc:  # botocore's connection errors are not OSErrors
            raise StorageUnreachableError(url=self.url, detail=str(exc)[:300]) from exc
        self._reached.set()
