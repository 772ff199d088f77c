"""Perplexity: `llmos eval perplexity` against llama.cpp's own `llama-perplexity`.

Same model (the packaged SmolLM2), same file (the shipped English text unless --file),
same context and threads; each side runs as a whole command in its own process, taking
turns, and the wall time includes loading the model and tokenizing on both sides. The
value must agree within 0.5% and llmos should run at >= 0.9x llama-perplexity's speed.

llama-perplexity is built by hand from the llama.cpp that llama-cpp-python vendors, and
never committed; pass its path:

    python benchmarks/bench_perplexity.py --llama-perplexity PATH [--ctx 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_path, paired, threads

from llmos.ops.perplexity import shipped_text


def run_llmos(model: Path, text: Path, ctx: int, n_threads: int, data_dir: str) -> dict:
    env = {**os.environ, "LLMOS_DATA_DIR": data_dir, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "llmos", "eval", "perplexity", str(model), str(text)]
    cmd += ["--ctx", str(ctx), "--threads", str(n_threads), "--json", "--no-progress"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    run = json.loads(out)
    return {"ppl": run["scores"]["ppl"], "err": run["scores"]["ppl_error"], "wall": wall}


def run_peer(binary: str, model: Path, text: Path, ctx: int, n_threads: int) -> dict:
    cmd = [binary, "-m", str(model), "-f", str(text), "-c", str(ctx), "-t", str(n_threads)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", res.stdout + res.stderr)
    if m is None:
        raise SystemExit(f"no final estimate in llama-perplexity's output:\n{res.stderr[-2000:]}")
    return {"ppl": float(m.group(1)), "err": float(m.group(2)), "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-perplexity", required=True, metavar="PATH")
    ap.add_argument("--file", type=Path, default=None, help="default: the shipped text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model, text, n = model_path(), args.file or shipped_text(), threads()
    ours: list[dict] = []
    theirs: list[dict] = []
    with tempfile.TemporaryDirectory() as data_dir:
        for i in range(args.rounds):  # taking turns spreads the shared machine's drift
            ours.append(run_llmos(model, text, args.ctx, n, data_dir))
            theirs.append(run_peer(args.llama_perplexity, model, text, args.ctx, n))
            print(f"turn {i + 1}: llmos {ours[-1]['wall']:.1f} s, "
                  f"llama-perplexity {theirs[-1]['wall']:.1f} s", flush=True)  # fmt: skip
    o, t = ours[0], theirs[0]
    walls_o, walls_t = [r["wall"] for r in ours], [r["wall"] for r in theirs]
    print(f"file {text.name}, ctx {args.ctx}, threads {n}")
    print(f"llmos            PPL {o['ppl']:.4f} ± {o['err']:.5f}  wall "
          f"{statistics.median(walls_o):.1f} s (" + " ".join(f"{w:.1f}" for w in walls_o) + ")")  # fmt: skip
    print(f"llama-perplexity PPL {t['ppl']:.4f} ± {t['err']:.5f}  wall "
          f"{statistics.median(walls_t):.1f} s (" + " ".join(f"{w:.1f}" for w in walls_t) + ")")  # fmt: skip
    print(f"value: llmos/llama-perplexity {o['ppl'] / t['ppl']:.5f} "
          f"({abs(o['ppl'] / t['ppl'] - 1) * 100:.3f}% apart; target within 0.5%)")  # fmt: skip
    speed = [b / a for a, b in zip(walls_o, walls_t, strict=True)]
    print(f"speed: llmos at {statistics.median(speed):.2f}x llama-perplexity's "
          f"({paired(walls_t, walls_o)}; target >= 0.9x)")  # fmt: skip


if __name__ == "__main__":
    main()
