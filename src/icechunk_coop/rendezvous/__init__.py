"""Where workers meet: blobs published once and waited for, over fsspec.

``_locations`` checks URLs, ``_blobs`` talks to the object store,
``_waiting`` polls with a deadline, ``_rendezvous`` is the storage-agnostic
meeting place of one job, and ``_meeting`` the job's view of it (setup,
results, markers). Knows nothing of icechunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop.rendezvous._locations import normalise_url
    from icechunk_coop.rendezvous._rendezvous import Rendezvous
    from icechunk_coop.rendezvous._waiting import WaitPolicy

_LAZY: dict[str, str] = {
    "Rendezvous": "icechunk_coop.rendezvous._rendezvous",
    "normalise_url": "icechunk_coop.rendezvous._locations",
    "WaitPolicy": "icechunk_coop.rendezvous._waiting",
}

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Rendezvous",
    "WaitPolicy",
    "normalise_url",
]
