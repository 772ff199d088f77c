"""Benchmark 4: shared prefix reuse.

Eight processes share a 500-token system prompt. Process 1 runs first; processes 2..8
then arrive together. Reported: their mean time to first token with prefix reuse (KV
copied from process 1's sequence) versus without (each evaluates the whole prompt).

    python benchmarks/bench_prefix.py [--system-tokens 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUESTIONS, chat_prompt, engine, isolated

from llmos.core.sampling import SamplingParams


async def ttft(reuse: bool, system: str) -> tuple[float, int]:
    core = engine(n_slots=8, prefix_min_tokens=32 if reuse else 10**9)
    try:
        p = SamplingParams(temperature=0, max_tokens=16)
        first = core.generate(chat_prompt(QUESTIONS[0], system), p)
        await first.result()  # process 1 finishes; its KV stays cached as a prefix
        if reuse:
            # process 1 still running when the others arrive is the common case: copy from a live slot
            live = core.generate(
                chat_prompt(QUESTIONS[0], system), SamplingParams(max_tokens=64, ignore_eos=True)
            )
            it = live.__aiter__()
            await it.__anext__()
        gens = [core.generate(chat_prompt(q, system), p) for q in QUESTIONS[1:]]
        await asyncio.gather(*(g.result() for g in gens))
        if reuse:
            core.kill(live.id)
        times = [g.stats.ttft for g in gens if g.stats.ttft is not None]
        return statistics.mean(times), min(g.stats.reused_tokens for g in gens)
    finally:
        core.close()


def ttft_sync(reuse: bool, system: str) -> tuple[float, int]:
    return asyncio.run(ttft(reuse, system))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system-tokens", type=int, default=500)
    a = ap.parse_args()
    sentence = "You are a meticulous assistant for an operating system of language model agents. "
    system = sentence * max(1, a.system_tokens // 15)
    without, _ = isolated(ttft_sync, False, system)
    with_, reused = isolated(ttft_sync, True, system)
    print(
        f"system prompt ~{a.system_tokens} tokens; processes 2..8 arrive together after process 1"
    )
    print(f"mean TTFT without reuse : {without * 1000:8.1f} ms")
    print(
        f"mean TTFT with reuse    : {with_ * 1000:8.1f} ms   ({reused} prompt tokens reused each)"
    )
    print(f"speed-up                : {without / with_:.1f}x (target >= 4x)")


if __name__ == "__main__":
    main()
