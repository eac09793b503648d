"""Region jobs over the protocol: the loop a dataset keeps.

``_loop`` pins the job list on worker 0, hands each worker its share and
runs it; ``_regions`` refuses, before any work, two jobs that would write
one chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop.jobs._loop import (
        Assignment,
        Loop,
        RegionJobLike,
        assign_jobs,
        run_region_jobs,
    )

_LAZY: dict[str, str] = {
    "Assignment": "icechunk_coop.jobs._loop",
    "Loop": "icechunk_coop.jobs._loop",
    "RegionJobLike": "icechunk_coop.jobs._loop",
    "assign_jobs": "icechunk_coop.jobs._loop",
    "run_region_jobs": "icechunk_coop.jobs._loop",
}

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Assignment",
    "Loop",
    "RegionJobLike",
    "assign_jobs",
    "run_region_jobs",
]
