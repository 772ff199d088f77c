"""`eval run` of 64 prompts against the same prompts one after another with `Llama`.

llmos's side: `run_tasks` (what `llmos eval run` runs) over a task file of 64 raw prompts,
each a kernel process making one `llm.complete` syscall, batched on the engine as many at
once as it has slots (`n_seq_max`, 8 by default). Baseline: one `llama_cpp.Llama` answering
the same prompts with `create_completion`, one after another. Same model (the packaged
SmolLM2), threads and flash-attention mode; temperature 0; every answer exactly `--tokens`
tokens on both sides (llmos's `ignore_eos`, the baseline's EOS logit pushed to -1e9), so
both do the same work. Scoring is included on llmos's side (it is part of `eval run`);
loading the model is excluded on both. Each run is its own process; the sides take turns.
Target: >= 1.4x the baseline's speed.

    python benchmarks/bench_eval_run.py [--prompts 64] [--tokens 32] [--turns 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, chat_prompt, flash_attn, fmt_runs, llama_baseline, model_path, paired
from _common import threads as n_threads


def prompts(n: int) -> list[str]:
    """`n` distinct arithmetic questions, as the shipped arithmetic set asks them."""
    return [
        chat_prompt(f"What is {12 + i}*{7 + (i * 5) % 31}? Answer with the number only.")
        for i in range(n)
    ]


def baseline(n: int, tokens: int) -> float:
    """Seconds for the `n` prompts one after another through `Llama.create_completion`."""
    llm = llama_baseline()
    no_eos = {int(llm.token_eos()): -1e9}
    llm.create_completion(chat_prompt("warm up"), max_tokens=8, temperature=0.0)
    made, t0 = 0, time.perf_counter()
    for p in prompts(n):
        r = llm.create_completion(p, max_tokens=tokens, temperature=0.0, logit_bias=no_eos)
        made += r["usage"]["completion_tokens"]
    dt = time.perf_counter() - t0
    assert made == n * tokens, made  # the same work as llmos's side
    del llm
    return dt


async def _ours(n: int, tokens: int) -> float:
    from llmos.config import load_settings
    from llmos.kernel.kernel import Kernel
    from llmos.ops.taskeval import run_tasks

    with tempfile.TemporaryDirectory() as d:
        tasks = Path(d) / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"prompt": p, "references": ["0"]}) + "\n" for p in prompts(n)))  # fmt: skip
        warm = Path(d) / "warm.jsonl"
        warm.write_text(json.dumps({"prompt": chat_prompt("warm up"), "references": ["0"]}) + "\n")
        settings = load_settings(
            data_dir=Path(d) / "data", default_model=str(model_path()), n_threads=n_threads(),
            flash_attn=flash_attn(),
        )  # fmt: skip
        async with Kernel(settings) as k:
            await run_tasks(k, None, warm, max_tokens=8, store=False)  # loads the model
            t0 = time.perf_counter()
            out = await run_tasks(k, None, tasks, max_tokens=tokens, ignore_eos=True, store=False)
            dt = time.perf_counter() - t0
        assert out["tokens"] == n * tokens and out["scores"]["errors"] == 0, out["scores"]
        return dt


def ours(n: int, tokens: int) -> float:
    """Seconds for the `n` prompts through `run_tasks` (`llmos eval run`'s path)."""
    return asyncio.run(_ours(n, tokens))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per prompt, both sides")
    ap.add_argument("--turns", type=int, default=3, help="runs per side, taking turns")
    a = ap.parse_args()
    runs = alternate({"base": (baseline, (a.prompts, a.tokens)), "ours": (ours, (a.prompts, a.tokens))}, a.turns)  # fmt: skip
    med = {k: statistics.median(v) for k, v in runs.items()}
    total = a.prompts * a.tokens
    # speed = 1 / seconds: the paired ratio of speeds is theirs/ours of the seconds
    print(
        f"threads={n_threads()} prompts={a.prompts} new_tokens={a.tokens} "
        f"flash_attn={flash_attn()} ({a.turns} runs per side taking turns, median)"
    )
    print(
        f"baseline Llama one after another : {med['base']:6.2f} s  {total / med['base']:6.1f} tok/s"
        f"   runs {fmt_runs(runs['base'])} s"
    )
    print(
        f"llmos eval run (run_tasks)       : {med['ours']:6.2f} s  {total / med['ours']:6.1f} tok/s"
        f"   runs {fmt_runs(runs['ours'])} s\n"
        f"speed ratio {med['base'] / med['ours']:.2f}x (target >= 1.4x); "
        f"{paired(runs['base'], runs['ours'])}"
    )


if __name__ == "__main__":
    main()
