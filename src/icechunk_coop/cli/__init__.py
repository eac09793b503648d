"""``icechunk-coop``: run a local indexed job, inspect and clean rendezvous, the demo.

Only the public API is used here; everything the CLI does, a script can do.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from icechunk_coop import CoopError
from icechunk_coop.cli._demo import cmd_demo, demo
from icechunk_coop.cli._run_local import cmd_run_local, run_local
from icechunk_coop.cli._status import clean, cmd_clean, cmd_status, parse_age, status

__all__ = ["build_parser", "clean", "demo", "main", "parse_age", "run_local", "status"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icechunk-coop",
        description="Many workers, one atomic Icechunk commit.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("run-local", help="run COMMAND as N local workers of an indexed job")
    p.add_argument("--workers", type=int, required=True, metavar="N")
    p.add_argument("--job-name", help="JOB_NAME for every worker (default: local-<time>)")
    p.add_argument("--job-uid", help="JOB_UID (default: fresh)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra variable")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    p.set_defaults(func=cmd_run_local)

    p = sub.add_parser("status", help="which workers of a job arrived, failed or are missing")
    p.add_argument("url", help="rendezvous URL")
    p.add_argument("--job", help="job id (name-uid), or a job's name; omit to list jobs")
    p.add_argument("--workers", type=int, help="the job's WORKERS_TOTAL (default: the setup's)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("clean", help="remove leftovers of crashed or finished jobs")
    p.add_argument("url", help="rendezvous URL")
    p.add_argument("--job", help="job id (name-uid), or a job's name, to remove")
    p.add_argument("--older-than", metavar="AGE", help="remove jobs idle this long (6h, 2d)")
    p.add_argument("--repo", action="append", default=[], help="also delete temporary branches")
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("demo", help="backfill and update the example dataset locally")
    p.add_argument("--dir", help="where to put the data (default: a temp folder)")
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; libraries (botocore's credential chatter) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("icechunk_coop").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        code: int = args.func(args)
    except CoopError as exc:
        print(f"icechunk-coop: {exc}", file=sys.stderr)
        return 2
    return code
