"""Their store factory's stores as targets, their worker assignment and identity as ours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zarr.storage
from zarr.abc.store import Store

from icechunk_coop.errors import ConfigurationError, CoopError
from icechunk_coop.identity._worker import WorkerIdentity
from icechunk_coop.jobs._loop import Assignment
from icechunk_coop.reformatters._shapes import RegionJobClassLike, StoreFactoryLike
from icechunk_coop.targets._targets import IcechunkTarget, Target, ZarrTarget

__all__ = ["assignment_of", "identity_of", "rendezvous_of", "targets_of"]


def _zarr_target(name: str, store: Store) -> ZarrTarget:
    """A plain zarr v3 store of their factory's, as a target (URL and fsspec options)."""
    if isinstance(store, zarr.storage.LocalStore):
        return ZarrTarget(name=name, url=str(store.root))
    if isinstance(store, zarr.storage.FsspecStore):
        protocol = store.fs.protocol
        scheme = protocol[0] if isinstance(protocol, tuple | list) else protocol
        return ZarrTarget(
            name=name,
            url=f"{scheme}://{store.path}",
            storage_options=dict(getattr(store.fs, "storage_options", {}) or {}),
        )
    raise ConfigurationError(
        f"target {name!r}: a plain zarr store of type {type(store).__name__} has no URL "
        "this package can open on every worker; pass targets=(primary, replicas) "
        "built with ZarrTarget(name=..., url=..., storage_options=...)"
    )


def targets_of(store_factory: StoreFactoryLike, *, create: bool) -> tuple[Target, list[Target]]:
    """Their factory's stores as targets: ``("primary", ["replica-0", ...])``.

    Icechunk stores by their repository's storage and config (the roles are
    their ``icechunk_repos`` roles); the others are plain zarr v3 stores.
    ``create=False`` (an update) refuses a missing Icechunk repository in the
    setup instead of starting an empty dataset. Virtual chunk credentials are
    not carried: writing references and committing never read a source file.
    """
    repos = dict(store_factory.icechunk_repos(sort="primary-first"))

    def icechunk_target(role: str) -> IcechunkTarget:
        repo = repos[role]
        return IcechunkTarget(name=role, storage=repo.storage, config=repo.config, create=create)

    primary: Target = (
        icechunk_target("primary")
        if "primary" in repos
        else _zarr_target("primary", store_factory.primary_store(writable=True))
    )
    replicas: list[Target] = []
    for index, store in enumerate(store_factory.replica_stores(writable=True)):
        role = f"replica-{index}"
        replicas.append(icechunk_target(role) if role in repos else _zarr_target(role, store))
    return primary, replicas


def assignment_of(job_class: RegionJobClassLike) -> Assignment:
    """Their ``worker_assignment`` as ours: their "spread" interleaves (ours: "interleaved")."""
    found = getattr(job_class, "worker_assignment", "spread")
    if found == "spread":
        return "interleaved"
    if found == "contiguous":
        return "contiguous"
    raise ConfigurationError(
        f"{getattr(job_class, '__name__', job_class)}.worker_assignment={found!r}: "
        "expected 'spread' or 'contiguous'"
    )


def identity_of(
    worker_index: int, workers_total: int, job_name: str, environ: Mapping[str, str]
) -> WorkerIdentity:
    """The environment's identity when it agrees with their arguments, else theirs.

    In a pod the environment knows more (the job's uid, the attempt, the pod,
    a CronJob's start); ``backfill_local`` passes ``0, 1, "local"`` with
    none of it.
    """
    try:
        found = WorkerIdentity.from_env(environ)
    except CoopError:
        found = None
    if found is not None and (found.worker_index, found.workers_total, found.job_name) == (
        worker_index,
        workers_total,
        job_name,
    ):
        return found
    return WorkerIdentity(
        worker_index=worker_index,
        workers_total=workers_total,
        job_name=job_name,
        job_uid=environ.get("JOB_UID") or None,
    )


def rendezvous_of(store_factory: StoreFactoryLike) -> tuple[str, dict[str, Any]]:
    """Beside their coordination files: ``{base}/{dataset_id}/_internal/coop``."""
    base = getattr(store_factory, "_coordination_base_path", None)
    fs = getattr(store_factory, "_coordination_fs", None)
    if base is None or fs is None:
        raise ConfigurationError(
            "no rendezvous_url given and the store factory has no _coordination_base_path/"
            "_coordination_fs to put one beside its coordination files: pass "
            "rendezvous_url=, e.g. 's3://bucket/dataset/_internal/coop'"
        )
    options = dict(getattr(fs(), "storage_options", {}) or {})
    return f"{base()}/coop", options
