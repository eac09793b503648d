"""``python -m icechunk_coop.cli``: the ``icechunk-coop`` command."""

import sys

from icechunk_coop.cli import main

sys.exit(main())
