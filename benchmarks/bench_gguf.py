"""GGUF header reading: llmos's reader against the `gguf` package's `GGUFReader`.

Why llmos keeps its own reader (issue 12 asked to replace it unless a measurement says
otherwise): the library lists models and `/v1/models` describes them through this header.
Baseline: `gguf.GGUFReader` on the same file in the same run, when the package is importable
(it is not a dependency of llmos; install it anywhere on PYTHONPATH to measure). Files: the
packaged SmolLM2 (49k-token vocabulary) and gemma3-270m (262k), if installed.

Usage: python benchmarks/bench_gguf.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_path

from llmos.kernel.gguf import read_gguf
from llmos.kernel.models import gemma3_path


def median_s(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    files = [("SmolLM2-135M Q4_1", model_path())]
    data = Path(os.environ.get("LLMOS_DATA_DIR", tempfile.gettempdir())) / "bench-gguf"
    gemma = gemma3_path(data)
    if gemma is not None:
        files.append(("gemma3-270m Q4_K_M", gemma))
    try:
        from gguf import GGUFReader
    except ImportError:
        GGUFReader = None
    for label, path in files:
        ours = median_s(lambda p=path: read_gguf(p), a.runs)
        line = f"{label:20} llmos read_gguf {ours * 1000:8.1f} ms"
        if GGUFReader is None:
            print(line + "   gguf.GGUFReader: skipped (the gguf package is not importable)")
            continue
        theirs = median_s(lambda p=path: GGUFReader(p), max(1, a.runs // 2))
        print(f"{line}   gguf.GGUFReader {theirs * 1000:8.1f} ms   ratio {theirs / ours:.0f}x")


if __name__ == "__main__":
    main()
