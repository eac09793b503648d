"""``icechunk-coop``: run a local indexed job, inspect and clean rendezvous, the demo.

Only the public API is used here; everything the CLI does, a script can do.
Exit codes: 0 done, 1 a failure that running again may fix, 2 one that it
cannot (usage, configuration, a worker that exited 2), 128 + N stopped by
signal N.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from icechunk_coop import ConfigurationError, CoopError
from icechunk_coop._lazy import lazy_attributes
from icechunk_coop.cli._parser import EXIT_CODES
from icechunk_coop.cli._parser import build_parser as _build_parser
from icechunk_coop.cli._run_local import LOG_LEVEL_ENV

if TYPE_CHECKING:
    from icechunk_coop.cli._controller import JobResult, LocalJob
    from icechunk_coop.cli._demo import demo
    from icechunk_coop.cli._report import report
    from icechunk_coop.cli._run_local import run_local
    from icechunk_coop.cli._status import clean, parse_age, status

# Each command's module is imported when that command runs: ``--help`` and
# ``run-local``'s controller never load icechunk, zarr or numpy.
_LAZY: dict[str, str] = {
    "JobResult": "icechunk_coop.cli._controller",
    "LocalJob": "icechunk_coop.cli._controller",
    "demo": "icechunk_coop.cli._demo",
    "report": "icechunk_coop.cli._report",
    "run_local": "icechunk_coop.cli._run_local",
    "clean": "icechunk_coop.cli._status",
    "parse_age": "icechunk_coop.cli._status",
    "status": "icechunk_coop.cli._status",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"icechunk_coop.cli.{module}"), name
        )
        return func(args)

    return run


__all__ = [
    "EXIT_CODES",
    "LOG_LEVEL_ENV",
    "JobResult",
    "LocalJob",
    "build_parser",
    "clean",
    "demo",
    "main",
    "parse_age",
    "report",
    "run_local",
    "status",
]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(
        {
            "run-local": _command("_run_local", "cmd_run_local"),
            "status": _command("_status", "cmd_status"),
            "report": _command("_report", "cmd_report"),
            "clean": _command("_status", "cmd_clean"),
            "demo": _command("_demo", "cmd_demo"),
        }
    )


def _log_level(given: str | None) -> str:
    """-v/-q, else ``ICECHUNK_COOP_LOG_LEVEL``, else INFO."""
    level = (given or os.environ.get(LOG_LEVEL_ENV) or "INFO").strip().upper()
    if level not in _LEVELS:
        raise ConfigurationError(f"{LOG_LEVEL_ENV}={level!r}: expected one of {', '.join(_LEVELS)}")
    return level


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error: argparse said why
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        args.log_level = _log_level(args.log_level)
        # Our own progress at INFO; libraries (botocore's credential chatter) only when they warn.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("icechunk_coop").setLevel(args.log_level)
        code: int = args.func(args)
    except CoopError as exc:
        print(f"icechunk-coop {args.cmd}: {exc}", file=sys.stderr)
        return 1 if exc.retryable else 2
    except KeyboardInterrupt:
        print(f"icechunk-coop {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return code
