"""Benchmark 2: one process alone, tokens/s versus `Llama.create_completion`.

Same prompt, same sampling settings, same number of new tokens (EOS ignored on both sides).

    python benchmarks/bench_single.py [--tokens 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    QUESTIONS,
    alternate,
    chat_prompt,
    engine,
    flash_attn,
    fmt_runs,
    llama_baseline,
    paired,
)

from llmos.core.sampling import SamplingParams


def baseline(n: int, rounds: int) -> float:
    llm = llama_baseline()
    eos = {int(llm.token_eos()): -1e9}
    rates = []
    for i in range(rounds + 1):
        llm.reset()
        t0 = time.perf_counter()
        r = llm.create_completion(
            chat_prompt(QUESTIONS[0]), max_tokens=n, temperature=0.8, seed=1, logit_bias=eos
        )
        if i:  # the first round warms up
            rates.append(r["usage"]["completion_tokens"] / (time.perf_counter() - t0))
    return statistics.median(rates)


async def ours(n: int, rounds: int) -> float:
    core = engine(n_slots=8)
    core.prefix_min = 10**9  # evaluate the prompt every time, as the baseline does
    rates = []
    try:
        for i in range(rounds + 1):
            t0 = time.perf_counter()
            g = core.generate(
                chat_prompt(QUESTIONS[0]),
                SamplingParams(temperature=0.8, seed=1, max_tokens=n, ignore_eos=True),
            )
            await g.result()
            if i:
                rates.append(g.stats.generated / (time.perf_counter() - t0))
    finally:
        core.close()
    return statistics.median(rates)


def ours_sync(n: int, rounds: int) -> float:
    return asyncio.run(ours(n, rounds))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2, help="timed generations per process")
    ap.add_argument("--turns", type=int, default=3, help="processes per side, taking turns")
    a = ap.parse_args()
    runs = alternate(
        {"base": (baseline, (a.tokens, a.rounds)), "ours": (ours_sync, (a.tokens, a.rounds))},
        a.turns,
    )
    base, mine = statistics.median(runs["base"]), statistics.median(runs["ours"])
    print(
        f"new_tokens={a.tokens} flash_attn={flash_attn()} {a.turns} turns x {a.rounds} rounds "
        "(median of the turns' medians, prompt evaluation included on both sides)"
    )
    print(f"baseline Llama.create_completion : {base:7.1f} tok/s   turns {fmt_runs(runs['base'])}")
    print(
        f"llmos one process                : {mine:7.1f} tok/s   turns {fmt_runs(runs['ours'])}"
        f"   ratio {mine / base:.2f}x (target >= 1.0x); {paired(runs['ours'], runs['base'])}"
    )


if __name__ == "__main__":
    main()
