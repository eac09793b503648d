"""No chunk written by two workers of one job, unless their bytes are the same.

Why this exists: icechunk merges forks by taking each fork's chunk
references, so where two forks hold the same chunk the fork merged last wins
and nothing says so; a plain zarr store keeps the last PUT. A region job that
is not aligned to chunk (or shard) boundaries rewrites the whole chunk in
its worker's fork, so two workers writing the two halves of one chunk lose
one half silently. Detecting it needs no chunk data:

- each worker writes through a :class:`RecordingStore`, which notes every
  key it sets or deletes with a digest of the bytes (blake2b, 128 bits: a
  few hundred MB/s, far below the cost of encoding the chunk), and the
  result carries that record (:class:`Writes`);
- for an Icechunk target the fork's own change set (``ForkSession.status()``,
  coordinates only, no chunk data) says which chunks and nodes it changed,
  whether or not they went through our store; each worker lists it for its
  own fork as it publishes (a few ms, in parallel with the others), so the
  last worker only compares keys. For a plain zarr target the record is all
  there is;
- :class:`OverlapCheck` on the last worker folds each result in as it
  arrives and raises :class:`~icechunk_coop.ChunkOverlapError` on the first key
  two workers both wrote with different (or unknown) bytes, before any
  target moves. Memory follows the keys written, never the array's size.

The same bytes from two workers are fine: the merge then equals what one
worker writing both regions would have produced (both forks' chunk equals
the base outside each worker's region, so each region's values are in it).
A coordinate every region job writes the same way is the usual case.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import zarr.storage
from zarr.abc.store import Store
from zarr.core.buffer import Buffer

from icechunk_coop.errors import ChunkOverlapError
from icechunk_coop.wire._records import Writes

if TYPE_CHECKING:
    import icechunk

__all__ = [
    "DELETED",
    "UNKNOWN",
    "OverlapCheck",
    "RecordingStore",
    "chunk_key",
    "digest",
    "fork_changes",
    "split_key",
    "zarr_changes",
]

#: The digest of a key that was deleted (zarr deletes a chunk left all fill value).
DELETED = "deleted"
#: Written by a call whose bytes the store cannot see whole (a partial write).
UNKNOWN = "unknown"
_META = "zarr.json"
_CHUNK_KEY = re.compile(r"^(?:(?P<array>.*)/)?c(?P<coords>(?:[/.]\d+)*)$")


def digest(data: bytes) -> str:
    """A short fingerprint of a chunk's bytes: equal bytes, equal digest."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def chunk_key(path: str, coords: Sequence[int]) -> str:
    """The store key of a chunk (zarr v3's default encoding) from an icechunk path and coords."""
    array = path.strip("/")
    tail = "c" + "".join(f"/{c}" for c in coords)
    return f"{array}/{tail}" if array else tail


def split_key(key: str) -> tuple[str, str]:
    """``(array path, what of it)`` for a message: chunk coordinates, or "metadata"."""
    if key == _META or key.endswith("/" + _META):
        return "/" + key.removesuffix(_META).rstrip("/"), "metadata"
    match = _CHUNK_KEY.match(key)
    if match is None:
        head, _, tail = key.rpartition("/")
        return "/" + head, tail
    coords = [c for c in re.split(r"[/.]", match["coords"]) if c]
    return "/" + (match["array"] or ""), "(" + ", ".join(coords) + (
        "," if len(coords) == 1 else ""
    ) + ")"


def _is_meta(key: str) -> bool:
    return key == _META or key.endswith("/" + _META)


class RecordingStore(zarr.storage.WrapperStore[Store]):
    """The store a worker writes into: every call goes through, every write is noted.

    ``written`` maps each key set or deleted to a digest of its bytes; a copy
    made for read-only use (zarr calls ``with_read_only``) shares it. Calls
    this class does not know (icechunk's virtual references, ``session``)
    go to the wrapped store unrecorded: the fork's change set still lists
    those chunks, and a chunk with no digest never counts as "the same bytes".
    """

    def __init__(self, store: Store, written: dict[str, str] | None = None) -> None:
        super().__init__(store)
        self.written: dict[str, str] = {} if written is None else written

    def _with_store(self, store: Store) -> RecordingStore:
        return type(self)(store, self.written)

    @property
    def wrapped(self) -> Store:
        """The store underneath (an Icechunk fork's store, or a staging store)."""
        return self._store

    def __getattr__(self, name: str) -> Any:
        # Only reached for what the wrapper lacks: icechunk's extras.
        if name.startswith("__") or name in ("_store", "written"):
            raise AttributeError(name)
        return getattr(self._store, name)

    @property
    def supports_consolidated_metadata(self) -> bool:
        # Icechunk says no; the default (yes) would make xarray consolidate into it.
        return bool(self._store.supports_consolidated_metadata)

    @property
    def supports_partial_writes(self) -> bool:  # type: ignore[override]
        return bool(self._store.supports_partial_writes)

    async def set(self, key: str, value: Buffer) -> None:
        self.written[key] = digest(value.to_bytes())
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self.written[key] = digest(value.to_bytes())
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        items = list(values)
        for key, value in items:
            self.written[key] = digest(value.to_bytes())
        await self._store._set_many(items)

    def set_sync(self, key: str, value: Buffer) -> None:
        self.written[key] = digest(value.to_bytes())
        super().set_sync(key, value)

    async def set_partial_values(self, key_start_values: Iterable[tuple[str, int, Any]]) -> None:
        items = list(key_start_values)
        for key, _, _ in items:
            self.written[key] = UNKNOWN
        await self._store.set_partial_values(items)  # type: ignore[attr-defined]

    async def delete(self, key: str) -> None:
        self.written[key] = DELETED
        await self._store.delete(key)

    def delete_sync(self, key: str) -> None:
        self.written[key] = DELETED
        super().delete_sync(key)

    async def delete_dir(self, prefix: str) -> None:
        # The keys underneath are not known here; the prefix stands for all of them.
        self.written[prefix.rstrip("/") + "/"] = UNKNOWN
        await self._store.delete_dir(prefix)

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._store.list_dir(prefix)


def fork_changes(fork: icechunk.ForkSession, writes: Writes) -> dict[str, str | None]:
    """Every key an Icechunk fork changed, with its digest where the worker recorded one.

    The change set is the authority (it sees writes that bypassed our store);
    a node created or deleted has no digest: icechunk refuses to merge a node
    created in two forks anyway, and two workers deleting one node is never
    something to take on trust.
    """
    diff = fork.status()
    known = writes.keys
    changed: dict[str, str | None] = {}
    for path, coords in diff.updated_chunks.items():
        for coord in coords:
            key = chunk_key(path, coord)
            changed[key] = known.get(key)
    for path in (*diff.updated_arrays, *diff.updated_groups):
        key = chunk_key(path, ()).removesuffix("c") + _META
        changed[key] = known.get(key)
    for path in (*diff.new_arrays, *diff.new_groups, *diff.deleted_arrays, *diff.deleted_groups):
        changed[chunk_key(path, ()).removesuffix("c") + _META] = None
    return changed


def zarr_changes(writes: Writes) -> dict[str, str | None]:
    """Every key a worker wrote to a plain zarr target: its record is all there is."""
    changed: dict[str, str | None] = {
        key: (None if value == UNKNOWN else value)
        for key, value in writes.keys.items()
        if not _is_meta(key)
    }
    for key, doc in writes.metadata.items():
        changed[key] = digest(doc)
    return changed


@attrs.define
class _Owner:
    worker: int
    digest: str | None


@attrs.define
class OverlapCheck:
    """The last worker's index of who wrote what, per target, folded in result by result.

    ``add`` raises on the first result that shares a key with an earlier one
    (different or unknown bytes), naming the array, the first chunk, how many
    chunks of it the two workers share, and both workers. ``plain`` names the
    targets that are plain zarr stores: their chunks are in the store already,
    and the error says so.
    """

    job: str
    plain: frozenset[str] = frozenset()
    _owners: dict[str, dict[str, _Owner]] = attrs.field(factory=dict)
    _prefixes: dict[str, list[tuple[str, int]]] = attrs.field(factory=dict)

    def add(self, worker: int, target: str, changed: Mapping[str, str | None]) -> None:
        """Fold one worker's changes to ``target`` in; raise if they overlap an earlier one's."""
        owners = self._owners.setdefault(target, {})
        prefixes = self._prefixes.setdefault(target, [])
        clashes: list[tuple[str, int]] = []
        for key, dig in changed.items():
            before = owners.get(key)
            if before is not None and before.worker != worker:
                if dig is None or before.digest is None or dig != before.digest:
                    clashes.append((key, before.worker))
                continue
            owners[key] = _Owner(worker=worker, digest=dig)
            clashes.extend((key, w) for p, w in prefixes if w != worker and key.startswith(p))
        for key in (k for k in changed if k.endswith("/")):  # a whole prefix deleted
            prefixes.append((key, worker))
            clashes.extend(
                (k, o.worker) for k, o in owners.items()
                if o.worker != worker and k.startswith(key) and k != key
            )  # fmt: skip
        if clashes:
            self._refuse(target, worker, clashes, changed)

    def _refuse(
        self,
        target: str,
        worker: int,
        clashes: list[tuple[str, int]],
        changed: Mapping[str, str | None],
    ) -> None:
        first_key, other = min(clashes, key=lambda c: (split_key(c[0])[0], c[0]))
        array, first = split_key(first_key)
        same = sorted(k for k, w in clashes if w == other and split_key(k)[0] == array)
        owners = self._owners[target]
        known = all(changed.get(k) is not None and owners[k].digest is not None for k in same
                    if k in owners)  # fmt: skip
        raise ChunkOverlapError(
            job=self.job,
            target=target,
            array=array,
            first=first,
            count=len(same),
            workers=sorted({worker, other}),
            compared=known,
            plain=target in self.plain,
            keys=same[:10],
        )
