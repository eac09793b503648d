"""A MkDocs hook: serve the benchmarks' plots from where the benchmarks write them.

``benchmarks/results/*.png`` stay the one copy; the site gets them under the
same path, so ``benchmarks.md`` links ``benchmarks/results/commits.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def on_files(files: Files, config: Any) -> Files:
    for plot in sorted(RESULTS.glob("*.png")):
        uri = f"benchmarks/results/{plot.name}"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(plot)))
    return files
