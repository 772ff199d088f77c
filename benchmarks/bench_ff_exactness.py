"""Fast-forward exactness on 200 random JSON schemas and prompts (issue 17), 8 at a time.

Each case is decoded greedily twice by the real engine, with fast-forward and without;
the figure is how many of the texts are identical, with the share of output tokens that
were fast-forwarded and the decode steps each side needed.

    python benchmarks/bench_ff_exactness.py [--cases 200] [--tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chat_prompt, flash_attn, model_path, threads

from tests.random_schemas import cases


def side(ff: bool, jobs: list[tuple[dict[str, Any], str]], tokens: int) -> tuple[list[str], dict[str, Any], float]:  # fmt: skip
    from llmos.core.sampling import SamplingParams
    from llmos.kernel.engine import EngineCore, SeqState
    from llmos.kernel.llama_backend import LlamaBackend

    backend = LlamaBackend(model_path(), n_slots=8, n_ctx=8 * 2048, n_threads=threads(), flash_attn=flash_attn())  # fmt: skip
    core = EngineCore(backend, fast_forward=ff)  # stepped here, not on a thread of its own
    t0 = time.perf_counter()
    texts: list[str] = []
    for i in range(0, len(jobs), 8):
        seqs = [
            core.submit(
                chat_prompt(msg),
                SamplingParams(temperature=0, max_tokens=tokens, json_schema=schema),
                sink=lambda e: None,
            )
            for schema, msg in jobs[i : i + 8]
        ]
        while any(s.state is not SeqState.DONE for s in seqs):
            core.step()
        texts.extend(s.text for s in seqs)
    backend.close()
    return texts, core.stats.as_dict(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    jobs = cases(args.cases, args.seed)
    plain, ps, pt = side(False, jobs, args.tokens)
    fast, fs, ft = side(True, jobs, args.tokens)
    same = sum(a == b for a, b in zip(plain, fast, strict=True))
    print(f"identical texts: {same}/{len(jobs)}")
    print(f"token by token: {ps['steps']} steps, {ps['tokens_decoded']} tokens decoded, {pt:.1f} s")
    print(f"fast-forward:   {fs['steps']} steps, {fs['tokens_decoded']} tokens decoded, {ft:.1f} s")
    kept = fs["forced_kept"]
    print(f"forced {fs['forced']} tokens, kept {kept} ({kept / max(1, fs['forced']):.0%}); "
          f"{kept / max(1, fs['tokens_decoded']):.0%} of decoded tokens fast-forwarded; "
          f"steps {ps['steps'] / max(1, fs['steps']):.2f}x fewer, time {pt / ft:.2f}x")  # fmt: skip
    for a, b in zip(plain, fast, strict=True):
        if a != b:
            print(f"differs:\n  plain {a!r}\n  fast  {b!r}")


if __name__ == "__main__":
    main()
