"""The ``icechunk-coop`` command line: options, help texts, examples, exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from icechunk_coop.cli._run_local import DEFAULT_BACKOFF_LIMIT, DEFAULT_GRACE, LOG_LEVEL_ENV

__all__ = ["EXIT_CODES", "STATUS_EXIT", "build_parser"]

EXIT_CODES = """\
exit codes:
  0    done
  1    failed, and running it again may help (a worker failed or timed out,
       storage did not answer, status/clean found no such job)
  2    not retryable until something changes (a usage error, a missing bucket,
       a worker that exited 2)
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM)"""

#: ``status --job``'s exit code for each state of the job (see ``_STATUS``).
STATUS_EXIT = {"committed": 0, "running": 3, "waiting for setup": 3, "failed": 4, "stopped": 5}

_MAIN_EXAMPLES = """\
examples:
  icechunk-coop demo
  icechunk-coop run-local --workers 4 --job-name backfill-1 -- \\
      python examples/synthetic_forecast.py backfill --end 2025-01-03T00:00Z \\
      --repo s3://bucket/forecast --rendezvous s3://bucket/rendezvous
  icechunk-coop status s3://bucket/rendezvous
  icechunk-coop clean s3://bucket/rendezvous --older-than 6h

-v and -q go before or after the command; run-local passes the level to
its workers as {env} (DEBUG, INFO or WARNING).
"""

_RUN_LOCAL = """\
Each worker gets the environment of a Kubernetes Indexed Job's pod
(JOB_COMPLETION_INDEX, WORKERS_TOTAL, JOB_NAME, JOB_UID, ICECHUNK_COOP_SECRET)
and {env}; its output lines are prefixed with its index. A
failed index is restarted up to --backoff-limit-per-index times; exit code 2
fails it at once. When an index fails for good, or --timeout passes, or on
Ctrl-C or SIGTERM, every worker is stopped (SIGTERM, then SIGKILL after
--grace-period).

The job's secret: --secret-file PATH, else ICECHUNK_COOP_SECRET, else a new
one written (mode 0600) to $XDG_STATE_HOME/icechunk-coop/secrets/JOB_ID.secret
(default ~/.local/state); only its path is printed. --resume JOB_ID runs the
job again under the same name, uid and secret: its workers reuse the setup
the first run published, and find the job done if it committed.

In a terminal the job is shown live: each worker's process (pid, attempt,
how it ended), region jobs done (from run_region_jobs' lines), the time
elapsed and left before --timeout; with --rendezvous URL (the workers' own)
also each worker's step (setup, work, wait, commit). Piped, it writes a
line each time the job's state changes instead (with --rendezvous).

examples:
  icechunk-coop run-local --workers 4 --job-name backfill-1 -- python job.py
  icechunk-coop run-local --workers 4 --rendezvous s3://bucket/rendezvous -- \\
      python job.py --rendezvous s3://bucket/rendezvous
  icechunk-coop run-local --workers 4 --timeout 600 --backoff-limit-per-index 2 \\
      --secret-file ./job.secret -- python job.py
  icechunk-coop run-local --resume backfill-1-3f2a9c1d7e4b --workers 4 -- python job.py
"""

_STATUS = """\
The worker total comes from --workers, else the committed marker, else the
setup's authenticated header (with ICECHUNK_COOP_SECRET set), else it is
inferred. Nothing of the user's is unpickled, and nothing at all without
the secret or before its frame authenticates.

With --job, what a Job controller cannot say: the indexes never seen (no
result, no failure marker), naming the committer (the last index) when it
is among them, and a hint when the indexes seen stop short of the total
(the Job's completions may disagree with WORKERS_TOTAL). The job's state,
from its blobs alone (workers do not report that they are alive):
  committed  the committed marker is there
  failed     a worker left a failure marker (its error is shown)
  stopped    nobody is left to act and it did not commit: the job's deadline
             passed, or every failure marker is a worker that gave up waiting
  running    nothing of the above (also while waiting for the setup)

status --job exit codes (a script's answer; 1 and 2 as below):
  0    committed
  3    running (or waiting for the setup)
  4    failed
  5    stopped without committing

--watch follows one job until it commits (exit 0), fails or stops (exit 1):
in a terminal a live table of its workers (step, region jobs, time),
otherwise a line each time its state changes. A job not there yet is waited for. With
the secret it also opens the setup and the results (authenticated first),
for the worker total and the region jobs each worker did.

examples:
  icechunk-coop status s3://bucket/rendezvous
  icechunk-coop status s3://bucket/rendezvous --job backfill-1
  icechunk-coop status s3://bucket/rendezvous --job backfill-1 --watch
  icechunk-coop status s3://bucket/rendezvous --job backfill-1; echo $?  # 0: committed
"""

_REPORT = """Prints the critical path (which worker's which steps the job's end waited
for, and how long each took) and the overhead (the job's time minus the
slowest worker's own work), and draws every worker's steps as a PNG. The
steps come from the committed marker, or for a job still running (or
failed) from its results; both are sealed: set ICECHUNK_COOP_SECRET to the
job's secret.

examples:
  icechunk-coop report s3://bucket/rendezvous backfill-1
  icechunk-coop report s3://bucket/rendezvous backfill-1-3f2a9c1d7e4b -o timeline.png
"""

_CLEAN = """\
A job cleans up after its commit; this removes what crashed jobs left.
Remove only jobs that are finished or dead.

examples:
  icechunk-coop clean s3://bucket/rendezvous --job backfill-1-3f2a9c1d7e4b
  icechunk-coop clean s3://bucket/rendezvous --older-than 2d --repo s3://bucket/forecast
"""


def _number(kind: Callable[[str], Any], minimum: float, text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number of at least {minimum:g}, got {text!r}")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    return lambda text: int(_number(int, minimum, text))


def _seconds(minimum: float) -> Callable[[str], float]:
    return lambda text: float(_number(float, minimum, text))


def _positive_seconds(text: str) -> float:
    value = _seconds(0)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _env_item(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def _output_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Defaults only on the top parser: a subcommand's would overwrite a -v given before it.
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="DEBUG",
        default=default,
        help="debug logging, here and in run-local's workers",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const="WARNING",
        default=default,
        help="only warnings and errors, here and in run-local's workers",
    )


def _sub(sub: Any, name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text[:1].upper() + help_text[1:] + ".",
        epilog=f"{epilog}\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _output_options(parser, top=False)
    return parser


def _add_run_local(sub: Any) -> None:
    p = _sub(
        sub,
        "run-local",
        "run COMMAND as N local workers of an indexed job",
        _RUN_LOCAL.format(env=LOG_LEVEL_ENV),
    )
    p.add_argument(
        "--workers",
        type=_count(1),
        required=True,
        metavar="N",
        help="how many workers (WORKERS_TOTAL)",
    )
    p.add_argument("--job-name", help="JOB_NAME for every worker (default: local-<time>)")
    p.add_argument("--job-uid", help="JOB_UID (default: a fresh one, so a fresh job)")
    p.add_argument(
        "--resume",
        metavar="JOB_ID",
        help="run the job JOB_ID (NAME-UID, as printed) again: same name, uid, secret",
    )
    p.add_argument(
        "--secret-file",
        metavar="PATH",
        help="read the job's secret from PATH (a new job: created there, mode 0600)",
    )
    p.add_argument(
        "--backoff-limit-per-index",
        type=_count(0),
        default=DEFAULT_BACKOFF_LIMIT,
        metavar="N",
        help="restarts of a failed index before the job fails "
        f"(default {DEFAULT_BACKOFF_LIMIT}; exit code 2 is never restarted)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="the job's deadline: then stop every worker and fail (default: none)",
    )
    p.add_argument(
        "--grace-period",
        type=_seconds(0),
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"from SIGTERM to SIGKILL when stopping workers (default {DEFAULT_GRACE:g})",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        type=_env_item,
        help="an extra variable for every worker (repeatable)",
    )
    p.add_argument(
        "--rendezvous",
        metavar="URL",
        help="the workers' rendezvous URL: the live view then shows each worker's step",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")


def build_parser(
    commands: dict[str, Callable[[argparse.Namespace], int]],
) -> argparse.ArgumentParser:
    """The parser; ``commands`` maps each subcommand to the function that runs it."""
    try:
        ours = version("icechunk-coop")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        ours = "unknown"
    parser = argparse.ArgumentParser(
        prog="icechunk-coop",
        description="Many workers, one atomic Icechunk commit: run, inspect and clean up jobs.",
        epilog=_MAIN_EXAMPLES.format(env=LOG_LEVEL_ENV) + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {ours}")
    _output_options(parser, top=True)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    _add_run_local(sub)
    p = _sub(sub, "status", "show which workers of a job arrived, failed or are missing", _STATUS)
    p.add_argument("url", help="the rendezvous URL (s3://, gs://, a path)")
    p.add_argument("--job", help="a job id (NAME-UID) or a job's name; omit to list every job")
    p.add_argument(
        "--workers",
        type=_count(1),
        metavar="N",
        help="the job's WORKERS_TOTAL (default: from the setup or the commit)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="follow the job (--job) until it commits, fails or stops",
    )
    p.add_argument(
        "--interval",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="with --watch: how often to read the rendezvous (default 2)",
    )

    p = _sub(sub, "report", "show where a job's time went, and draw its timeline", _REPORT)
    p.add_argument("url", help="the rendezvous URL (s3://, gs://, a path)")
    p.add_argument("job", help="a job id (NAME-UID) or a job's name")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="where to write the timeline picture (default: ./JOB_ID-timeline.png)",
    )

    p = _sub(sub, "clean", "remove what crashed or finished jobs left behind", _CLEAN)
    p.add_argument("url", help="the rendezvous URL (s3://, gs://, a path)")
    p.add_argument("--job", help="remove this job: an id (NAME-UID), or a name matching one")
    p.add_argument(
        "--older-than", metavar="AGE", help="remove every job idle this long (90s, 15m, 6h, 2d)"
    )
    p.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="URL",
        help="also delete the jobs' temporary branches in this repository (repeatable)",
    )

    p = _sub(
        sub,
        "demo",
        "backfill and update the example dataset with local workers",
        "examples:\n  icechunk-coop demo --workers 8 --dir /tmp/coop-demo\n",
    )
    p.add_argument("--dir", help="where to put the data (default: a folder in the temp dir)")
    p.add_argument(
        "--workers", type=_count(1), default=4, metavar="N", help="how many workers (default 4)"
    )
    for name, func in commands.items():
        sub.choices[name].set_defaults(func=func)
    return parser
