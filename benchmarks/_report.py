"""What every benchmark script shares: where results go, the machine's state, a table.

Numbers on a shared 2-core machine move with whatever else runs there, so
every JSON file records the load averages at the start of the run beside
the versions that made it.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine(load: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Cores, load averages (1, 5, 15 min) and the versions that matter."""
    versions = {}
    for package in ("icechunk", "icechunk-coop", "zarr", "moto", "s3fs"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "?"
    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(load or os.getloadavg()),
        "loadavg_at_end": list(os.getloadavg()),
        "python": platform.python_version(),
        "versions": versions,
        "note": "a shared 2-core machine under other load; moto in its own process",
    }


def save_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]  # fmt: skip

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def cell(value: float | None, digits: int = 2) -> str:
    """A table cell: ``-`` for a value that was not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def write_results(
    name: str,
    meta: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    plot: Callable[[Sequence[dict[str, Any]], Path], None],
) -> None:
    """``results/<name>.json`` (meta and rows) and ``results/<name>.png``, and say where."""
    json_path = save_json(name, {"meta": meta, "rows": list(rows)})
    png_path = RESULTS / f"{name}.png"
    plot(rows, png_path)
    print(f"wrote {json_path} and {png_path}")
