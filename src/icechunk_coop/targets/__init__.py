"""What a job writes to: Icechunk repositories and plain zarr v3 stores.

One driver per kind of target (``_icechunk``, ``_zarr``) behind the
protocol of ``_drivers``; :func:`driver_for` is the one place that maps a
target to its driver. ``_overlap`` records what each worker writes and
refuses a chunk two workers wrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop.rendezvous._meeting import MeetingPoint
    from icechunk_coop.targets._drivers import TargetDriver
    from icechunk_coop.targets._storage import icechunk_storage
    from icechunk_coop.targets._targets import IcechunkTarget, Stores, Target, ZarrTarget

_LAZY: dict[str, str] = {
    "IcechunkTarget": "icechunk_coop.targets._targets",
    "ZarrTarget": "icechunk_coop.targets._targets",
    "Target": "icechunk_coop.targets._targets",
    "Stores": "icechunk_coop.targets._targets",
    "icechunk_storage": "icechunk_coop.targets._storage",
}

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def driver_for(
    target: Target,
    *,
    job_id: str,
    meeting: MeetingPoint,
    scan: int,
    run_start: str | None = None,
) -> TargetDriver:
    """The driver of ``target``: the one place that maps a kind of target to its driver.

    ``run_start`` is the job start of a job known by its name alone (no uid):
    an earlier run of that name committed under the same job id, and only
    its recorded start tells the two runs apart.
    """
    from icechunk_coop.targets._icechunk import IcechunkDriver
    from icechunk_coop.targets._targets import IcechunkTarget, ZarrTarget
    from icechunk_coop.targets._zarr import ZarrDriver

    if isinstance(target, IcechunkTarget):
        return IcechunkDriver(target=target, job_id=job_id, scan=scan, run_start=run_start)
    if isinstance(target, ZarrTarget):
        return ZarrDriver(target=target, job_id=job_id, meeting=meeting)
    raise TypeError(f"no driver for {type(target).__name__}")  # pragma: no cover


__all__ = [
    "IcechunkTarget",
    "Stores",
    "Target",
    "ZarrTarget",
    "icechunk_storage",
]
