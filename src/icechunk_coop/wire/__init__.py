"""What travels between workers: sealed frames and the records inside them.

``_payload`` seals and opens frames (authenticated, encrypted, versioned);
``_records`` and ``_markers`` are the typed records a job's blobs hold;
``_ledger`` is what a commit records about the job that made it. Knows
nothing of where blobs live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop.wire._payload import INSECURE_ENV, SECRET_ENV, Sealer

_LAZY: dict[str, str] = {
    "Sealer": "icechunk_coop.wire._payload",
    "SECRET_ENV": "icechunk_coop.wire._payload",
    "INSECURE_ENV": "icechunk_coop.wire._payload",
}

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "INSECURE_ENV",
    "SECRET_ENV",
    "Sealer",
]
