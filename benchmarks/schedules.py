"""Randomised schedules and every crash point x role, with real processes; the report.

::

    uv run python benchmarks/schedules.py --matrix --schedules 500   # what docs/schedules.md shows
    uv run python benchmarks/schedules.py --quick                    # 10 schedules, a minute or two
    uv run python benchmarks/schedules.py --report-only              # re-render from the JSON lines
    uv run python benchmarks/schedules.py --replay '<schedule JSON>' # one schedule again

It starts moto and the fault proxy (both subprocesses) and plays each
schedule of ``tests/schedules.py`` with worker processes of
``tests/coop_worker.py``: ``--matrix`` every crash point x every role it can
reach (a kill there, then the same index started again), then
``--schedules`` schedules drawn by Hypothesis (``--seed``). Every verdict is
appended to ``--out`` (JSON lines, so a long run can be stopped and
continued), and the report (``--report``, markdown) is rendered from all of
them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import icechunk
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from icechunk_coop.testing import CRASH_POINTS, FaultProxy, LocalS3, fault_proxy, local_s3
from schedules import (
    FAULT_KINDS,
    ROLE_POINTS,
    Schedule,
    Verdict,
    crash_matrix,
    run_schedule,
    schedules,
)

OUT = ROOT / "benchmarks" / "results" / "schedules.jsonl"
REPORT = ROOT / "docs" / "schedules.md"
ROLES = ("first", "middle", "last", "only")
#: The run the committed report shows (a fresh --out gives it from scratch).
CANONICAL = "uv run python benchmarks/schedules.py --matrix --schedules 500"


def code_version() -> str:
    """The commit the schedules ran against, ``+changes`` if the package differs from it."""
    git = ["git", "-C", str(ROOT)]
    sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "src", "tests"], check=False)
    return (sha.stdout.strip() or "?") + ("+changes" if dirty.returncode else "")


CODE = code_version()


def play(schedule: Schedule, kind: str, proxy: FaultProxy, moto: LocalS3, out: Path) -> Verdict:
    verdict = run_schedule(schedule, proxy, moto)
    line = json.loads(verdict.to_json())
    line["kind"] = kind
    line["icechunk"] = icechunk.__version__
    line["code"] = CODE
    line["load"] = round(os.getloadavg()[0], 1)  # the machine's, at the end of the schedule
    with out.open("a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    mark = "VIOLATED" if verdict.outcome == "violated" else verdict.outcome
    print(f"{kind:7} {mark:15} {verdict.seconds:6.1f}s  crashes={list(verdict.crashes)} "
          f"kills={verdict.kills} faults={verdict.faults}", flush=True)  # fmt: skip
    for violation in verdict.violations:
        print(f"    {violation}\n    replay: --replay '{schedule.to_json()}'", flush=True)
    return verdict


def run_random(n: int, seed: int, proxy: FaultProxy, moto: LocalS3, out: Path) -> None:
    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(schedule=schedules())
    def one(schedule: Schedule) -> None:
        play(schedule, "random", proxy, moto, out)

    one()


# ---- the report --------------------------------------------------------------------------


def render(lines: list[dict[str, Any]], command: str, note: str = "") -> str:
    outcomes = Counter(line["outcome"] for line in lines)
    by_kind = Counter(line["kind"] for line in lines)
    cover: Counter[tuple[str, str]] = Counter()
    for line in lines:
        for point, role in line["crashes"]:
            cover[(point, role)] += 1
    faults: Counter[str] = Counter()
    for line in lines:
        faults.update(line["faults"])
    sched = [line["schedule"] for line in lines if line["kind"] == "random"]
    reachable = {(p, r) for r, points in ROLE_POINTS.items() for p in points}
    covered = {pr for pr in reachable if cover[pr]}
    seconds = [line["seconds"] for line in lines]
    violated = [line for line in lines if line["outcome"] == "violated"]
    versions = sorted({line.get("icechunk", "?") for line in lines})
    codes = sorted({line.get("code", "?") for line in lines})
    loads = [line["load"] for line in lines if "load" in line]
    load_row = [
        f"| machine load, 1-min average at the end of a schedule (median, max) | "
        f"{statistics.median(loads):.1f}, {max(loads):.1f} |"
    ] if loads else []  # fmt: skip

    out = [
        "# Schedules under crashes, restarts, twins, stragglers and storage faults",
        "",
        f"Regenerate: `{command}` (appends to `benchmarks/results/schedules.jsonl`",
        "and renders this file from every line there; `--report-only` renders only).",
        "What is drawn and what is checked: `tests/schedules.py`. Every schedule is",
        "real worker processes (`tests/coop_worker.py`, started with an Indexed Job's",
        "environment) against a moto S3 server behind the fault proxy, with a reader",
        "polling `main` the whole time.",
        "",
        *([note, ""] if note else []),
        "| | |",
        "|---|---|",
        f"| schedules run | {len(lines)} ({by_kind['random']} random, "
        f"{by_kind['matrix']} crash point x role) |",
        f"| **violations** | **{outcomes['violated']}** |",
        f"| committed exactly once | {outcomes['committed']} |",
        "| stopped clearly, nothing half-visible (under faults, or a repository whose "
        f"creator was killed) | {outcomes['failed-clearly']} |",
        f"| crash points x roles covered | {len(covered)} of {len(reachable)} reachable |",
        f"| temporary branches a killed pod left, no pod of the job after it "
        f"(removed by `icechunk-coop clean`) | {sum(line.get('left', 0) for line in lines)} |",
        f"| pods killed at a crash point | {sum(cover.values())} |",
        f"| pods SIGKILLed at a random moment | {sum(line['kills'] for line in lines)} |",
        f"| restarts of an index | {sum(line['restarts'] for line in lines)} |",
        f"| second live copies of an index | {sum(line['twins'] for line in lines)} |",
        f"| pods that arrived late (1-12 s) | "
        f"{sum(1 for s in sched for p in s['pods'] if p['at'] > 0)} |",
        f"| schedules with another writer committing meanwhile | "
        f"{sum(1 for s in sched if s['interloper'] is not None)} |",
        f"| schedules that create the repository | {sum(1 for s in sched if s['fresh'])} |",
        f"| schedules with a replica | {sum(1 for s in sched if s['replica'])} |",
        f"| workers per schedule | {dict(sorted(Counter(s['workers'] for s in sched).items()))} |",
        f"| reader's reads of `main` | {sum(line['reads'] for line in lines)} |",
        f"| seconds per schedule (median, max) | {statistics.median(seconds):.1f}, "
        f"{max(seconds):.1f} |",
        *load_row,
        f"| icechunk | {', '.join(versions)} |",
        f"| code (commit) | {', '.join(codes)} |",
        "",
        "## Faults injected, by kind",
        "",
        "Nominal rates per schedule: "
        f"{dict(sorted(Counter(s['faults'] for s in sched).items()))} (rate: schedules),",
        "split as 30% resets, 30% 503 SlowDown, 20% 500, 20% lost replies of writes,",
        "plus half the rate of replies delayed by 100 ms.",
        "",
        "| kind | injected |",
        "|---|---|",
        *[f"| {kind} | {faults.get(kind, 0)} |" for kind in FAULT_KINDS],
        "",
        "## Crash points x roles",
        "",
        "Pods that died at each point (random schedules and the matrix together);",
        "`-`: the role never reaches it (the setup is worker 0's, the merge the",
        "last worker's).",
        "",
        "| point | " + " | ".join(ROLES) + " |",
        "|---|" + "---|" * len(ROLES),
    ]
    for point in CRASH_POINTS:
        cells = [str(cover[(point, role)]) if (point, role) in reachable else "-" for role in ROLES]
        out.append(f"| `{point}` | " + " | ".join(cells) + " |")
    out += ["", "## Violations", ""]
    if not violated:
        out.append("None.")
    for line in violated:
        out += [f"- {v}" for v in line["violations"]]
        out.append(f"  replay: `--replay '{json.dumps(line['schedule'], sort_keys=True)}'`")
    out += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; rendered {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--schedules", type=int, default=0, help="random schedules to run")
    parser.add_argument("--matrix", action="store_true", help="every crash point x role too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 random schedules")
    parser.add_argument("--replay", default=None, help="one schedule's JSON, run again")
    parser.add_argument("--logs", type=Path, default=None,
                        help="with --replay: keep every pod's output in this folder")  # fmt: skip
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--note", default="", help="a paragraph for the report (how it was run)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    if args.quick:
        args.schedules = args.schedules or 10
    if not (args.schedules or args.matrix or args.replay or args.report_only):
        parser.error("nothing to do: give --schedules N, --matrix, --quick or --replay")
    if not args.report_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with local_s3() as moto, fault_proxy(moto.endpoint_url) as proxy:
            os.environ.update(moto.env)  # the driver judges straight from moto
            if args.replay:
                verdict = run_schedule(Schedule.from_json(args.replay), proxy, moto, args.logs)
                print(verdict.to_json())
                return 1 if verdict.outcome == "violated" else 0
            if args.matrix:
                for schedule in crash_matrix():
                    play(schedule, "matrix", proxy, moto, args.out)
            if args.schedules:
                run_random(args.schedules, args.seed, proxy, moto, args.out)
        print(f"done in {time.monotonic() - started:.0f} s", flush=True)
    lines = [json.loads(t) for t in args.out.read_text().splitlines() if t.strip()]
    args.report.write_text(render(lines, CANONICAL, args.note))
    print(f"{args.report}: {len(lines)} schedules, "
          f"{sum(1 for x in lines if x['outcome'] == 'violated')} violations")  # fmt: skip
    return 1 if any(x["outcome"] == "violated" for x in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
