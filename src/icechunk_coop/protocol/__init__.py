"""The cooperative write, step by step.

``_context`` holds one worker's view of the job; ``_start`` reads what a
worker must know before it acts; ``_setup`` is worker 0's prepare and
publish; ``_work`` opens the forks and publishes a result; ``_finalize``
collects and merges the results and pins the plan; ``_commit`` checks,
commits once and cleans up; ``_cooperative`` ties them into
:class:`CooperativeJob`, and ``_steps`` offers them one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icechunk_coop._lazy import lazy_attributes

if TYPE_CHECKING:
    from icechunk_coop.protocol._cooperative import CooperativeJob, Forks, Merged, WorkerOutcome
    from icechunk_coop.protocol._steps import (
        commit_merged,
        get_forked_session,
        get_merged_sessions,
        is_first_worker,
        is_last_worker,
        publish_result,
    )

_LAZY: dict[str, str] = {
    "CooperativeJob": "icechunk_coop.protocol._cooperative",
    "Forks": "icechunk_coop.protocol._cooperative",
    "Merged": "icechunk_coop.protocol._cooperative",
    "WorkerOutcome": "icechunk_coop.protocol._cooperative",
    "commit_merged": "icechunk_coop.protocol._steps",
    "get_forked_session": "icechunk_coop.protocol._steps",
    "get_merged_sessions": "icechunk_coop.protocol._steps",
    "is_first_worker": "icechunk_coop.protocol._steps",
    "is_last_worker": "icechunk_coop.protocol._steps",
    "publish_result": "icechunk_coop.protocol._steps",
}

__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CooperativeJob",
    "Forks",
    "Merged",
    "WorkerOutcome",
    "commit_merged",
    "get_forked_session",
    "get_merged_sessions",
    "is_first_worker",
    "is_last_worker",
    "publish_result",
]
