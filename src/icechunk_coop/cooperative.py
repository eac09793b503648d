"""Deprecated: this module moved to :mod:`icechunk_coop.protocol`.

Import its names from ``icechunk_coop`` (or ``icechunk_coop.protocol``); this
path goes in the next release.
"""

import warnings

from icechunk_coop.protocol import *  # noqa: F403
from icechunk_coop.protocol import __all__  # noqa: F401

warnings.warn(
    "icechunk_coop.cooperative moved to icechunk_coop.protocol; import its names from "
    "icechunk_coop (the old path goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)
