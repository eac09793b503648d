"""Fail fast: refuse a job list whose region jobs share a chunk or shard across workers.

The last worker's overlap check (``_overlap``) catches every shared chunk,
but only after every worker has downloaded and written its share. When the
region jobs say where they write, worker 0 can tell before anyone starts:
a region job shaped like reformatters' carries ``region`` (an integer slice
along the append dimension), ``append_dim`` and ``data_vars`` (the
variables it writes: names, or objects with a ``path`` or ``name``), and
after ``prepare`` the stores hold every array's chunk and shard sizes.

Two jobs on one worker may share a block: that worker writes it twice into
one fork, in order, which is what a single worker would do. Jobs that do not
say all three things are not checked here (guessing which arrays a job
writes would refuse jobs that are fine); the last worker's check still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zarr
from zarr.abc.store import Store

from icechunk_coop.errors import RegionOverlapError

__all__ = ["refuse_shared_blocks"]


def _region(job: Any) -> tuple[str, slice, frozenset[str]] | None:
    region, dim, variables = (getattr(job, a, None) for a in ("region", "append_dim", "data_vars"))
    if not (isinstance(region, slice) and isinstance(dim, str) and variables is not None):
        return None
    if not (isinstance(region.start, int) and isinstance(region.stop, int)):
        return None
    names: set[str] = set()
    for v in variables if isinstance(variables, Iterable) else ():
        name = v if isinstance(v, str) else getattr(v, "path", None) or getattr(v, "name", None)
        if not isinstance(name, str):
            return None
        names.add(name.strip("/"))
    return dim, region, frozenset(names)


def _block_sizes(store: Store) -> dict[str, dict[str, int]]:
    """Array path -> dimension -> the size of a shard (or chunk) along it."""
    sizes: dict[str, dict[str, int]] = {}
    root = zarr.open_group(store, mode="r")
    for path, node in root.members(max_depth=None):
        if not isinstance(node, zarr.Array) or node.metadata.zarr_format != 3:
            continue
        dims = node.metadata.dimension_names or ()
        block = node.shards or node.chunks
        sizes[path] = {d: b for d, b in zip(dims, block, strict=False) if d is not None}
    return sizes


def _describe(position: int, dim: str, region: slice) -> str:
    return f"#{position} ({dim} {region.start}:{region.stop})"


def refuse_shared_blocks(
    *, job_id: str, jobs: Sequence[Any], worker_of: Callable[[int], int], store: Store
) -> None:
    """Raise :class:`RegionOverlapError` if two workers' region jobs share a block.

    ``worker_of(position)`` is the worker a job list position is assigned to;
    ``store`` is worker 0's staging store of the primary, after ``prepare``.
    """
    regions = [_region(job) for job in jobs]
    if not regions or any(r is None for r in regions):
        return
    sizes = _block_sizes(store)
    owner: dict[tuple[str, int], int] = {}
    for position, found in enumerate(regions):
        assert found is not None
        dim, region, names = found
        worker = worker_of(position)
        for path, dims in sizes.items():
            size = dims.get(dim)
            if not size or (path not in names and path.rsplit("/", 1)[-1] not in names):
                continue
            for block in range(region.start // size, -(-region.stop // size)):
                first = owner.setdefault((path, block), position)
                if worker_of(first) != worker:
                    other = regions[first]
                    assert other is not None
                    raise RegionOverlapError(
                        job=job_id,
                        array=path,
                        dimension=dim,
                        size=size,
                        block=block,
                        jobs=[
                            _describe(first, dim, other[1]),
                            _describe(position, dim, region),
                        ],
                        workers=[worker_of(first), worker],
                    )
