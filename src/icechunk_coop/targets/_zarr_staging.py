"""Plain zarr v3 stores: chunks now, ``zarr.json`` last.

A zarr v3 store has no transactions, so "readers see old or whole-new" can
only be approximated: workers write chunks directly (they are invisible
until metadata points at them), while every metadata document written
during the job is held in a staging dict that travels through the
rendezvous. The last worker writes the staged documents, coordinates
before data variables and groups last, so a reader never finds a shape
whose chunks are still missing.

What remains (documented in the README): while those few ``zarr.json``
files are written one by one, a reader may see a new coordinate beside an
old data variable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import zarr.storage
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync

from icechunk_coop.rendezvous._locations import require_filesystem
from icechunk_coop.targets._targets import ZarrTarget

__all__ = ["StagedMetadataStore", "open_zarr_store", "publish_staged"]

_META = "zarr.json"


def _is_meta(key: str) -> bool:
    return key == _META or key.endswith("/" + _META)


def open_zarr_store(target: ZarrTarget) -> Store:
    """The real store behind a :class:`ZarrTarget`."""
    if "://" not in target.url:
        return zarr.storage.LocalStore(target.url)
    if target.url.startswith("file://"):
        return zarr.storage.LocalStore(target.url.removeprefix("file://"))
    require_filesystem(target.url, role=f"plain zarr target {target.name!r} at")
    return zarr.storage.FsspecStore.from_url(
        target.url, storage_options=dict(target.storage_options) or None
    )


class StagedMetadataStore(zarr.storage.WrapperStore[Store]):
    """Reads and writes ``zarr.json`` in ``staged``; everything else goes to the store."""

    def __init__(self, store: Store, staged: dict[str, bytes] | None = None) -> None:
        super().__init__(store)
        self.staged: dict[str, bytes] = {} if staged is None else staged

    @property
    def wrapped(self) -> Store:
        """The real store underneath."""
        return self._store

    def _with_store(self, store: Store) -> StagedMetadataStore:
        return type(self)(store, self.staged)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if _is_meta(key) and key in self.staged:
            return prototype.buffer.from_bytes(self.staged[key])
        return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        if _is_meta(key) and key in self.staged:
            return True
        return await self._store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        if _is_meta(key):
            self.staged[key] = value.to_bytes()
            return
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if _is_meta(key):
            self.staged.setdefault(key, value.to_bytes())
            return
        await self._store.set_if_not_exists(key, value)

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        seen: set[str] = set()
        async for item in self._store.list_dir(prefix):
            seen.add(item)
            yield item
        base = prefix.rstrip("/") + "/" if prefix else ""
        for key in self.staged:
            if key.startswith(base):
                head = key[len(base) :].split("/", 1)[0]
                if head not in seen:
                    seen.add(head)
                    yield head

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        seen: set[str] = set()
        async for item in self._store.list_prefix(prefix):
            seen.add(item)
            yield item
        for key in self.staged:
            if key.startswith(prefix) and key not in seen:
                yield key


def _order(staged: Mapping[str, bytes]) -> list[str]:
    """Coordinates, then other arrays, then groups (deepest first, root last)."""

    def rank(key: str) -> tuple[int, int, str]:
        doc: dict[str, Any] = json.loads(staged[key])
        path = key[: -len(_META)].rstrip("/")
        name = path.rsplit("/", 1)[-1]
        if doc.get("node_type") == "group":
            return (2, -path.count("/") - (1 if path else 0), key)
        is_coordinate = name in (doc.get("dimension_names") or ())
        return (0 if is_coordinate else 1, 0, key)

    return sorted(staged, key=rank)


def publish_staged(store: Store, staged: Mapping[str, bytes]) -> list[str]:
    """Write staged metadata into the real store in reader-safe order; return the keys."""
    keys = _order(staged)
    prototype = default_buffer_prototype()

    async def write(items: Iterable[str]) -> None:
        for key in items:
            await store.set(key, prototype.buffer.from_bytes(staged[key]))

    sync(write(keys))
    return keys
