"""Benchmarks: what waiting and writing cost, measured on a local S3 (moto).

One command, no cloud::

    uv run python benchmarks/run.py            # ~3.5 min on 2 cores
    uv run python benchmarks/run.py --quick    # ~1.5 min
    uv run python benchmarks/run.py --json results.json --workers 1,4,8,16 --poll-seconds 120

It starts moto's S3 server and a counting reverse proxy in front of it (both
subprocesses), points ``AWS_ENDPOINT_URL`` at the proxy and measures:

1. polling: requests per waiting worker per minute while nobody arrives, for
   icechunk_coop's waits and the alternatives (see ``_polling.py``), and the
   S3 bill per 1000 waiting-worker-hours;
2. writes: N worker processes appending the same rows with icechunk_coop
   (one commit), the production "uncooperative" pattern (a commit per
   worker on a temporary branch, rebased) and one serial process (see
   ``write_worker.py``): wall time, requests, commits, snapshots on main.

Numbers are printed, never asserted: timings on a shared laptop are noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _polling
import _servers
import _writes

from icechunk_coop import WaitPolicy


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Polling and write-strategy benchmarks on a local moto S3.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smaller, shorter run (~1.5 min)")
    p.add_argument("--only", choices=("polling", "writes"), help="run one part only")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number here")
    p.add_argument(
        "--s3-latency-ms",
        type=float,
        default=0.0,
        help="delay the proxy adds to every request (real S3: ~10-30 ms)",
    )
    g = p.add_argument_group("polling")
    g.add_argument("--poll-n", type=_ints, default=None, help="results waited for [8,64,256]")
    g.add_argument(
        "--poll-seconds", type=float, default=None, help="length of each polling window [30]"
    )
    g.add_argument(
        "--waiters", type=int, default=None, help="waiters averaged per jittered strategy [8]"
    )
    g.add_argument(
        "--group-budget",
        type=float,
        default=150.0,
        help="rough requests/s allowed per concurrent polling group (moto tops out near 350)",
    )
    g = p.add_argument_group("writes")
    g.add_argument("--workers", type=_ints, default=None, help="worker counts [1,4,8]")
    g.add_argument("--rows", type=int, default=64, help="rows (= chunks of temp) appended")
    g.add_argument("--cols", type=int, default=256, help="float64 values per row (one chunk)")
    g.add_argument(
        "--row-seconds",
        type=float,
        default=0.1,
        help="simulated source I/O per row (a sleep), so total work is fixed",
    )
    g.add_argument(
        "--write-max-interval",
        type=float,
        default=1.0,
        help="WaitPolicy.max_interval of the workers' waits, for both multi-worker strategies",
    )
    return p


def _settle(args: argparse.Namespace) -> None:
    quick = args.quick
    if args.poll_n is None:
        args.poll_n = [8, 64] if quick else [8, 64, 256]
    if args.poll_seconds is None:
        args.poll_seconds = 12.0 if quick else 30.0
    if args.waiters is None:
        args.waiters = 4 if quick else 8
    if args.workers is None:
        args.workers = [1, 4] if quick else [1, 4, 8]
    if args.rows < max(args.workers):
        raise SystemExit(f"--rows {args.rows} must be >= the largest --workers")


# ---- formatting -----------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    right = [i > 0 and all(_numeric(r[i]) for r in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _numeric(cell: str) -> bool:
    return cell.replace(".", "", 1).replace("x", "").replace("$", "").replace(",", "").strip(
        "-"
    ).isdigit() or cell in {"-", "n/a"}


def _f(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: dict[str, Any] | None, key: str) -> str:
    """``value`` as a multiple of ``base[key]`` (the icechunk_coop row it is compared with)."""
    reference = None if base is None else base.get(key)
    if value is None or not reference:
        return "n/a"
    return f"{value / reference:,.1f}x"


# ---- polling --------------------------------------------------------------------------------


def run_polling(s3: _servers.S3, args: argparse.Namespace) -> list[dict[str, Any]]:
    catalog = _polling.strategies(args.waiters)
    tasks = [
        _polling.PollTask(catalog[key], n)
        for n in args.poll_n
        for key in ("coop", "exists-5s", "head-1s", "ls-10s")
    ]
    tasks += [_polling.PollTask(catalog[key], None) for key in ("coop-setup", "ls-setup-5s")]
    warmup = _polling.warmup_seconds(WaitPolicy())
    results: list[dict[str, Any]] = []
    plan = _polling.groups(tasks, args.group_budget)
    for number, group in enumerate(plan, 1):
        names = ", ".join(f"{t.strategy.key}@{t.n or '-'}" for t in group)
        print(
            f"  polling group {number}/{len(plan)} ({args.poll_seconds:.0f} s): {names}",
            flush=True,
        )
        start_at = _polling.run_group(s3, group, args.poll_seconds)
        results += [_polling.account(s3, t, start_at, args.poll_seconds, warmup) for t in group]
    order = {t.bucket: i for i, t in enumerate(tasks)}
    results.sort(key=lambda r: order[r["bucket"]])
    return results


def polling_table(results: Sequence[dict[str, Any]]) -> str:
    base: dict[int | None, dict[str, Any]] = {}
    for r in results:
        if r["strategy"] in {"coop", "coop-setup"}:
            base[r["n"]] = r
    rows = []
    for r in results:
        ours = base.get(r["n"])
        steady = r["steady_per_worker_per_minute_total"]
        per_min = r["per_worker_per_minute"]
        notes = []
        sweeps = r.get("sweeps")
        if sweeps:
            notes.append(f"{sweeps['sweeps']} sweeps, mean {sweeps['sweep_seconds_mean']:.2f} s")
            if sweeps["overruns"]:
                notes.append(f"{sweeps['overruns']} overran the interval")
        lib = r.get("library_counter_per_worker")
        if lib:
            notes.append("lib counter " + " ".join(f"{k}={v:.1f}" for k, v in sorted(lib.items())))
        if r["errors"]:
            notes.append(f"ERRORS: {r['errors'][0][:80]}")
        rows.append(
            [
                r["label"],
                "-" if r["n"] is None else str(r["n"]),
                _f(r["per_worker_per_minute_total"]),
                _f(per_min.get("LIST", 0.0)),
                _f(per_min.get("GET", 0.0) + per_min.get("HEAD", 0.0)),
                _f(steady),
                "$" + _f(r["usd_per_1000_worker_hours"], 2),
                _ratio(
                    r["basis_per_worker_per_minute_total"],
                    ours,
                    "basis_per_worker_per_minute_total",
                ),
                _ratio(r["usd_per_1000_worker_hours"], ours, "usd_per_1000_worker_hours"),
                "; ".join(notes),
            ]
        )
    headers = [
        "waiting strategy",
        "N",
        "req/min",
        "LIST/min",
        "GET+HEAD/min",
        "steady req/min",
        "$/1000 worker-h",
        "x ours req",
        "x ours $",
        "notes",
    ]
    return _table(headers, rows)


# ---- writes ---------------------------------------------------------------------------------


def run_writes(s3: _servers.S3, args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = _writes.WriteConfig(
        rows=args.rows,
        cols=args.cols,
        row_seconds=args.row_seconds,
        max_interval=args.write_max_interval,
    )
    results = []
    for n in args.workers:
        for strategy in _writes.STRATEGIES:
            print(f"  writes: {strategy} with {n} worker(s)", flush=True)
            results.append(_writes.run_write(s3, strategy, n, cfg))
    return results


def writes_table(results: Sequence[dict[str, Any]]) -> str:
    coop = {r["workers"]: r for r in results if r["strategy"] == "coop"}
    rows = []
    for r in results:
        base = coop.get(r["workers"])
        req = r["requests"]
        rows.append(
            [
                str(r["workers"]),
                r["strategy"] + (" (1 process)" if r["strategy"] == "serial" else ""),
                _f(r["wall_seconds"]),
                _ratio(r["wall_seconds"], base, "wall_seconds"),
                _f(r["slowest_worker_after_imports"]),
                _ratio(r["slowest_worker_after_imports"], base, "slowest_worker_after_imports"),
                _f(r["commit_seconds_max"], 2),
                str(r["requests_total"]),
                _ratio(r["requests_total"], base, "requests_total"),
                str(req.get("LIST", 0)),
                str(req.get("GET", 0) + req.get("HEAD", 0)),
                str(sum(req.get(k, 0) for k in ("PUT", "POST", "COPY"))),
                str(req.get("DELETE", 0)),
                str(r["commits"]),
                str(r["rebases"]),
                "-" if "snapshots_on_main" not in r else str(r["snapshots_on_main"]),
                "FAILED"
                if r["failures"]
                else ("ok" if r.get("data_ok") else "WRONG DATA")
                + (f", left {','.join(r['branches_left'])}" if r.get("branches_left") else ""),
            ]
        )
    headers = [
        "N",
        "strategy",
        "wall s",
        "x coop",
        "worker s",
        "x coop",
        "commit s",
        "requests",
        "x coop",
        "LIST",
        "GET+HEAD",
        "PUT+POST",
        "DELETE",
        "commits",
        "rebases",
        "snapshots on main",
        "check",
    ]
    return _table(headers, rows)


# ---- main -----------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("icechunk", "zarr", "s3fs", "moto", "icechunk-coop"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _settle(args)
    started = time.monotonic()
    versions = _versions()
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(
        f"icechunk-coop benchmarks, {meta['date']}, {meta['cores']} cores, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        flush=True,
    )
    polling: list[dict[str, Any]] = []
    writes: list[dict[str, Any]] = []
    with _servers.s3_servers(args.s3_latency_ms) as s3:
        print(
            f"moto at {s3.direct_url}, counting proxy at {s3.proxy_url} "
            f"(+{args.s3_latency_ms:g} ms per request)",
            flush=True,
        )
        if args.only in (None, "polling"):
            polling = run_polling(s3, args)
        if args.only in (None, "writes"):
            writes = run_writes(s3, args)
    policy = WaitPolicy()
    if polling:
        print()
        print(
            f"1. Polling while nobody arrives: requests per waiting worker per minute "
            f"({args.poll_seconds:.0f} s windows; jittered strategies averaged over "
            f"{args.waiters} waiters)."
        )
        print(
            f"   'steady' excludes the first {_polling.warmup_seconds(policy):.1f} s of backoff "
            f"warm-up (model at the cap: {_polling.steady_polls_per_minute(policy):.1f} "
            "polls/min); $ uses steady rates at LIST $0.005/1k, GET/HEAD $0.0004/1k."
        )
        print(polling_table(polling))
    if writes:
        print()
        print(
            f"2. Write strategies: {args.rows} rows x {args.cols} float64 appended "
            f"({args.rows} chunks of {args.cols * 8} B), {args.row_seconds} s simulated "
            f"source I/O per row; waits use WaitPolicy(max_interval={args.write_max_interval})."
        )
        print(writes_table(writes))
    elapsed = time.monotonic() - started
    print(f"\ndone in {elapsed:.0f} s")
    if args.json:
        payload = {**meta, "elapsed_seconds": elapsed, "polling": polling, "writes": writes}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    failed = any(r["failures"] for r in writes) or any(r["errors"] for r in polling)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
