"""Benchmark 5: fairness and preemption on the real engine.

(a) 8 equal-priority processes: ratio of most to least tokens served over a window,
    with 8 slots (all batched) and with 4 slots (round-robin by quantum, swapping).
    Baseline: the ideal, 1.00. Target <= 1.25.
(b) A high-priority process arriving under load: engine steps until its first token,
    in quanta. Target <= 2 quanta.

    python benchmarks/bench_fairness.py [--window 256] [--quantum 16]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUESTIONS, chat_prompt, engine, isolated

from llmos.core.sampling import SamplingParams


async def window(n_slots: int, quantum: int, tokens: int) -> tuple[float, list[int], int]:
    core = engine(n_slots=n_slots, quantum=quantum, prefix_min_tokens=10**9)
    try:
        p = SamplingParams(temperature=0.8, seed=3, max_tokens=1500, ignore_eos=True)
        gens = [core.generate(chat_prompt(q), p) for q in QUESTIONS]
        counts = [0] * len(gens)

        enough = asyncio.Event()

        async def pump(i: int) -> None:
            async for _ in gens[i]:
                counts[i] += 1
                if sum(counts) >= tokens * len(gens):
                    enough.set()

        tasks = [asyncio.create_task(pump(i)) for i in range(len(gens))]
        await enough.wait()
        served = list(counts)
        for g in gens:
            core.kill(g.id)
        await asyncio.gather(*tasks, return_exceptions=True)
        return max(served) / max(1, min(served)), served, core.stats.swaps_out
    finally:
        core.close()


async def preempt(quantum: int) -> tuple[float, int]:
    core = engine(n_slots=4, quantum=quantum, prefix_min_tokens=10**9)
    try:
        p = SamplingParams(temperature=0.8, seed=3, max_tokens=1500, ignore_eos=True)
        gens = [core.generate(chat_prompt(q), p) for q in QUESTIONS]
        its = [g.__aiter__() for g in gens[:4]]
        await asyncio.gather(*(it.__anext__() for it in its))  # load is running
        start = core.stats.steps
        hi = core.generate(chat_prompt("Urgent: say OK."), SamplingParams(max_tokens=4), nice=-10)
        await hi.__aiter__().__anext__()
        steps = core.stats.steps - start
        for g in gens:
            core.kill(g.id)
        return steps / quantum, steps
    finally:
        core.close()


def window_sync(n_slots: int, quantum: int, tokens: int) -> tuple[float, list[int], int]:
    return asyncio.run(window(n_slots, quantum, tokens))


def preempt_sync(quantum: int) -> tuple[float, int]:
    return asyncio.run(preempt(quantum))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=128, help="mean tokens per process in the window")
    ap.add_argument("--quantum", type=int, default=16)
    a = ap.parse_args()
    for slots in (8, 4):
        ratio, served, swaps = isolated(window_sync, slots, a.quantum, a.window)
        print(
            f"8 equal processes, {slots} slots: most/least tokens = {ratio:.2f} (ideal 1.00, target <= 1.25) served={served} swaps={swaps}"
        )
    q, steps = isolated(preempt_sync, a.quantum)
    print(
        f"high-priority arrival under load: first token after {steps} steps = {q:.2f} quanta (target <= 2)"
    )


if __name__ == "__main__":
    main()
