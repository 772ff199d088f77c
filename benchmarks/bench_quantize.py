"""Benchmark: `llmos models quantize` against llama.cpp's `llama-quantize`, same file, same type.

Both sides run the same C function (`llama_model_quantize`) with the same threads (every
core), so the figure measures what llmos adds around it: the worker process, the checks
before (GGUF header, disk), the header read after, and registering the model. Each turn
runs every type on both sides, taking turns which side goes first (the machine's speed
drifts over minutes); the ratio is their time over ours, per turn, then the median.

The outputs are also compared byte for byte: the same bytes mean the same quantization.

    python benchmarks/bench_quantize.py --llama-quantize PATH [--types Q8_0 Q4_K_M] \
        [--turns 5] [--from-f16] [--cli]

PATH: the `llama-quantize` built from the llama.cpp that llama-cpp-python vendors (see
DESIGN.md, peer tools; never committed). `--from-f16` quantizes an F16 copy of the default
model (made first, by llmos) instead of the packaged Q4_1, as one would from an original.
`--cli` also times the whole `llmos models quantize` command (Python start-up included).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_path

from llmos.kernel.gguf import read_gguf
from llmos.kernel.models import ModelLibrary
from llmos.ops.quantize import quantize


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_theirs(binary: str, src: Path, dst: Path, type_name: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        [binary, "--allow-requantize", str(src), str(dst), type_name],
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"llama-quantize failed: {r.stderr.strip().splitlines()[-1:]}")
    return took


def run_ours(library: ModelLibrary, src: Path, type_name: str) -> tuple[float, Path]:
    t0 = time.perf_counter()
    done = quantize(library, str(src), type_name, name=f"bench-{type_name.lower()}", force=True)
    return time.perf_counter() - t0, done.entry.path


def run_cli(data_dir: Path, src: Path, type_name: str) -> float:
    env = {**os.environ, "LLMOS_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "llmos", "models", "quantize", str(src), "--type", type_name]
    cmd += ["--name", f"cli-{type_name.lower()}", "--force", "--no-progress"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"llmos models quantize failed: {r.stderr.strip()}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-quantize", default=shutil.which("llama-quantize"))
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_K_M", "Q6_K"])
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--from-f16", action="store_true")
    ap.add_argument("--cli", action="store_true")
    a = ap.parse_args()
    if not a.llama_quantize:
        print("skipped: no llama-quantize (pass --llama-quantize PATH)")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    try:
        library = ModelLibrary(work / "data")
        src = model_path()
        if a.from_f16:
            src = quantize(library, str(src), "F16", name="bench-source-f16").entry.path
        info = read_gguf(src)
        print(
            f"source: {src.name} ({info.quantization}, {info.file_size / 1e6:.1f} MB), "
            f"{os.cpu_count()} cores, {a.turns} turns, sides alternate who goes first"
        )
        times: dict[tuple[str, str], list[float]] = {}
        same: dict[str, bool] = {}
        for turn in range(a.turns):
            for type_name in a.types:
                theirs_out = work / f"theirs-{type_name}.gguf"
                sides = ["ours", "theirs"] + (["cli"] if a.cli else [])
                if turn % 2:
                    sides.reverse()
                for side in sides:
                    if side == "ours":
                        took, ours_out = run_ours(library, src, type_name)
                    elif side == "theirs":
                        took = run_theirs(a.llama_quantize, src, theirs_out, type_name)
                    else:
                        took = run_cli(work / "data", src, type_name)
                    times.setdefault((type_name, side), []).append(took)
                if turn == 0:
                    same[type_name] = sha256(ours_out) == sha256(theirs_out)
        print(f"{'type':8} {'llama-quantize s':>17} {'llmos s':>9} {'ratio':>7}  per turn")
        for type_name in a.types:
            ours, theirs = times[type_name, "ours"], times[type_name, "theirs"]
            ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
            print(
                f"{type_name:8} {statistics.median(theirs):17.3f} {statistics.median(ours):9.3f} "
                f"{statistics.median(ratios):6.2f}x  "
                + " ".join(f"{r:.2f}" for r in ratios)
                + f"  (same bytes: {'yes' if same[type_name] else 'NO'})"
            )
            if a.cli:
                cli = times[type_name, "cli"]
                r = [t / c for c, t in zip(cli, theirs, strict=True)]
                print(
                    f"{'':8} {'whole CLI':>17} {statistics.median(cli):9.3f} "
                    f"{statistics.median(r):6.2f}x  " + " ".join(f"{x:.2f}" for x in r)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
