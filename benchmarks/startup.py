"""What a process pays before it does anything: imports, with and without bytecode.

A job of N workers starts N Python processes, and on two cores their
start-up is most of what an 8-worker job of short region jobs spends
(``e2e.py``). Two things decide it:

- **bytecode**: where ``.pyc`` files are not written on import
  (``PYTHONDONTWRITEBYTECODE``, a read-only image), every process compiles
  icechunk, zarr, numpy, s3fs and botocore from source. An image compiles
  them once when it is built (``UV_COMPILE_BYTECODE=1 uv sync``, or
  ``python -m compileall``); the "compiled" column has them (this script
  compiles the environment first, as an image build would), the "from
  source" column forces the other way (``PYTHONPYCACHEPREFIX`` at an empty
  folder, nothing written);
- **lazy imports**: ``import icechunk_coop`` and the command line load
  icechunk, zarr and numpy only when a step needs them. The "every name"
  row resolves every public name, which is what ``import icechunk_coop``
  cost when it imported everything at once.

Each cell is the best of ``--repeat`` runs of a fresh interpreter (wall
seconds, interpreter start included), so the numbers are what a pod pays.

    uv run python benchmarks/startup.py --quick   # 3 runs a cell (~1 min)
    uv run python benchmarks/startup.py           # 7 runs a cell
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import cell, machine, table, write_results

ROOT = Path(__file__).resolve().parents[1]

#: (label, argv after the interpreter)
CASES: list[tuple[str, list[str]]] = [
    ("python -c pass (the interpreter)", ["-c", "pass"]),
    ("import icechunk_coop", ["-c", "import icechunk_coop"]),
    ("import icechunk_coop, every name (the eager import)",
     ["-c", "import icechunk_coop as m; [getattr(m, n) for n in m.__all__]"]),
    ("icechunk-coop --help", ["-m", "icechunk_coop.cli", "--help"]),
    ("a worker: the job built (icechunk, zarr, s3fs)",
     ["-c", "import icechunk_coop, icechunk, zarr, s3fs, aiobotocore.session"]),
    ("the example worker: --help", [str(ROOT / "examples" / "synthetic_forecast.py"), "--help"]),
]  # fmt: skip


def best(argv: Sequence[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, *argv], env=env, check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        times.append(time.perf_counter() - started)
    return min(times)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [r["case"].split(" (")[0] for r in rows]
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["source_s"] for r in rows], height=0.4,
            label="from source (no .pyc)", color="tab:gray")  # fmt: skip
    ax.barh([i - 0.2 for i in y], [r["compiled_s"] for r in rows], height=0.4,
            label="compiled (.pyc written at install)", color="tab:blue")  # fmt: skip
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds, best run (a fresh interpreter)")
    ax.legend(fontsize=8)
    ax.set_title("Process start-up", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 runs a cell")
    parser.add_argument("--name", default="startup", help="file name under benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 3
        args.name = "startup-quick" if args.name == "startup" else args.name
    # The "compiled" column: what an image built with bytecode has. A development
    # environment writes .pyc files on first import; compile them all now instead.
    for path in {sysconfig.get_paths()["purelib"], str(ROOT / "src")}:
        compileall.compile_dir(path, quiet=1, workers=0)
    load = os.getloadavg()
    compiled = dict(os.environ)
    rows = []
    with tempfile.TemporaryDirectory(prefix="no-pyc-") as empty:
        source = {**compiled, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": empty}
        for label, argv in CASES:
            row = {"case": label, "compiled_s": best(argv, compiled, args.repeat),
                   "source_s": best(argv, source, args.repeat)}  # fmt: skip
            row["ratio"] = row["source_s"] / row["compiled_s"]
            rows.append(row)
            print(f"{label}: {row['compiled_s']:.2f} s compiled, {row['source_s']:.2f} s "
                  "from source", flush=True)  # fmt: skip
    print()
    print(table(["case", "compiled s", "from source s", "source / compiled"],
                [[r["case"], cell(r["compiled_s"]), cell(r["source_s"]), f"{r['ratio']:.1f}x"]
                 for r in rows]))  # fmt: skip
    meta = {"command": " ".join(["uv run python benchmarks/startup.py", *sys.argv[1:]]),
            "repeat": args.repeat, **machine(load)}  # fmt: skip
    write_results(args.name, meta, rows, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
