"""Where a job writes: one primary Icechunk repo, Icechunk replicas, plain zarr v3 stores.

The primary decides what work remains for the next run, so it is committed
last: a failure between targets leaves the primary behind, never ahead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic

import attrs
import icechunk
import zarr.abc.store

from icechunk_coop.errors import ConfigurationError
from icechunk_coop.rendezvous._locations import normalise_url
from icechunk_coop.targets._storage import icechunk_storage

if TYPE_CHECKING:
    # A default (PEP 696) keeps a bare ``Stores`` meaning ``Stores[Store]`` for a
    # strict type checker; at run time a plain TypeVar does (generics are erased).
    from typing_extensions import TypeVar

    StoreT = TypeVar("StoreT", bound=zarr.abc.store.Store, covariant=True,
                     default=zarr.abc.store.Store)  # fmt: skip
else:
    from typing import TypeVar

    StoreT = TypeVar("StoreT", bound=zarr.abc.store.Store, covariant=True)

__all__ = ["IcechunkTarget", "Stores", "ZarrTarget"]

_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _check_target_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _TARGET_NAME.match(value):
        raise ConfigurationError(
            f"target {attribute.name}={value!r} must be 1-64 letters, digits, '_' or '-'"
        )


@attrs.frozen(kw_only=True)
class IcechunkTarget:
    """An Icechunk repository and the branch the job commits to.

    ``storage`` is what every worker opens. :func:`icechunk_coop.icechunk_storage`
    builds one with credentials from the environment; a storage that carries
    static keys (from your own secret files) works too: sessions travel only
    inside sealed, encrypted frames, so the keys are never in a blob in the
    clear.
    """

    name: str = attrs.field(validator=_check_target_name)
    storage: icechunk.Storage = attrs.field(repr=False)
    branch: str = "main"
    config: icechunk.RepositoryConfig | None = attrs.field(default=None, repr=False)
    authorize_virtual_chunk_access: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    #: Whether worker 0 may create the repository when there is none. An
    #: update, which extends a dataset, passes False: a typo in the URL then
    #: stops the job in its setup (every worker with it) instead of starting
    #: an empty dataset somewhere else.
    create: bool = True
    #: Seconds worker 0 waits, finding a repository half created, for the
    #: creator to finish it (a twin of worker 0 may be creating it right
    #: now) before it refuses the leftovers, naming them.
    creator_grace: float = attrs.field(default=20.0, validator=attrs.validators.ge(0), repr=False)

    @classmethod
    def from_url(cls, url: str, *, name: str = "primary", branch: str = "main") -> IcechunkTarget:
        return cls(name=name, storage=icechunk_storage(url), branch=branch)

    @property
    def location(self) -> str:
        """Where the repository is, for messages (bucket and prefix, or path)."""
        lines = [line.strip() for line in repr(self.storage).splitlines()[1:] if line.strip()]
        return ", ".join(lines) or self.name

    def open(self, *, create: bool) -> icechunk.Repository:
        """Open the repository; only the setup worker may ``create`` it.

        ``config`` and ``authorize_virtual_chunk_access`` (credentials per
        virtual-chunk container, for virtual datasets) go to icechunk as given.
        """
        extra: dict[str, Any] = {}
        if self.authorize_virtual_chunk_access is not None:
            extra["authorize_virtual_chunk_access"] = dict(self.authorize_virtual_chunk_access)
        opener = icechunk.Repository.open_or_create if create else icechunk.Repository.open
        return opener(self.storage, config=self.config, **extra)


@attrs.frozen(kw_only=True)
class ZarrTarget:
    """A plain zarr v3 store (no transactions).

    Workers write chunks straight into it; every ``zarr.json`` written during
    the job is held back and written by the last worker, coordinates first,
    so readers see the new data appear at once rather than a shape that
    promises chunks not yet written.
    """

    name: str = attrs.field(validator=_check_target_name)
    url: str = attrs.field(converter=normalise_url)
    storage_options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


Target = IcechunkTarget | ZarrTarget


@attrs.frozen(kw_only=True)
class Stores(Generic[StoreT]):  # noqa: UP046 - a default needs Python 3.13 syntax
    """The zarr stores a worker writes into: the primary and the replicas, in order.

    Generic in the kind of store so that code which knows more than
    ``zarr.abc.store.Store`` (a hook typed for its own store class) needs no
    cast; a bare ``Stores`` is ``Stores[zarr.abc.store.Store]``. What the
    package hands to hooks are zarr stores: an Icechunk session's store, or
    wrappers of it (see :mod:`icechunk_coop.targets._overlap`), never anything else.
    """

    primary: StoreT
    replicas: tuple[StoreT, ...] = ()

    @property
    def all(self) -> tuple[StoreT, ...]:
        return (self.primary, *self.replicas)
