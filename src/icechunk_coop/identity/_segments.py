"""The rule a job name or uid must obey: it is a path segment.

The job's rendezvous blobs live under a folder named after the job, so
``job_name`` and ``job_uid`` (and ``job_name-job_uid`` joined) must be safe
as one path segment on every store. Both the identity class and the
environment reader check against this one rule, with one message.
"""

from __future__ import annotations

import re
from typing import Final

from icechunk_coop.errors import IdentityError

__all__ = ["MAX_JOB_ID", "check_segment"]

_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
MAX_JOB_ID: Final = 253
_SEGMENT_RULE = (
    "expected 1 to 253 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
)


def _segment_problem(value: str) -> str | None:
    """Why ``value`` is not a safe path segment, or None when it is."""
    if value in (".", ".."):
        return f"{_SEGMENT_RULE}; '.' and '..' are not allowed"
    if _SAFE_SEGMENT.fullmatch(value) is None:
        return _SEGMENT_RULE
    return None


def check_segment(name: str, value: object) -> None:
    """Raise :class:`IdentityError` naming ``name`` unless ``value`` is a safe segment.

    ``name`` is an attribute (``job_name``) or an environment variable
    (``CLOUD_RUN_JOB``), whichever the value came from.
    """
    if not isinstance(value, str):
        raise IdentityError(f"{name}={value!r} is not a string: {_SEGMENT_RULE}")
    problem = _segment_problem(value)
    if problem is not None:
        raise IdentityError(
            f"{name}={value!r} is not safe as a path segment (it names the job's "
            f"rendezvous folder): {problem}"
        )
