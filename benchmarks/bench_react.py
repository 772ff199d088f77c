"""ReAct reliability: how often the default 135M model solves an arithmetic task with `calc`.

A task counts as solved when the agent called `calc`, the last call returned the right
number, and the final answer contains that number. Baseline, measured in the same run: the
same agent with no grammar (the model's free text is parsed as JSON), as a plain local
tool-use loop would run it.

    python benchmarks/bench_react.py [--tasks 40] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (sets HF_HUB_OFFLINE)

FORMS = [
    ("What is {a}*{b}?", "*"),
    ("What is {a} times {b}?", "*"),
    ("Compute {a} + {b}.", "+"),
    ("What is {a} minus {b}?", "-"),
    ("Calculate {a} * {b}.", "*"),
]


def tasks(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        form, op = FORMS[i % len(FORMS)]
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        want = a * b if op == "*" else a + b if op == "+" else a - b
        out.append((form.format(a=a, b=b), want))
    return out


def solved(result: dict[str, Any] | None, want: int) -> bool:
    steps = (result or {}).get("steps", [])
    calls = [s for s in steps if s.get("action") and s["action"]["name"] == "calc"]
    if not calls or calls[-1]["observation"].get("result") != want:
        return False
    return str(want) in str((result or {}).get("answer"))


async def run(
    batch: list[tuple[str, int]], constrained: bool, model: str | None = None
) -> tuple[int, float]:
    from llmos.agents.react import react_program
    from llmos.config import load_settings
    from llmos.kernel.kernel import Kernel

    with tempfile.TemporaryDirectory() as tmp:
        # a model of the catalog (an adapter) needs the user's data dir; else a fresh one
        settings = load_settings() if model else load_settings(data_dir=Path(tmp))
        async with Kernel(settings) as k:
            t0 = time.perf_counter()
            procs = [
                await k.spawn(react_program, task, ["calc"], 6, 0, True, constrained, model=model)
                for task, _ in batch
            ]
            for p in procs:
                await k.wait(p.pid)
            dt = time.perf_counter() - t0
            return sum(
                solved(p.result, want) for (_, want), p in zip(batch, procs, strict=True)
            ), dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--model", default=None, help="a catalog model or BASE+ADAPTER (default: the default model)"
    )
    a = ap.parse_args()
    batch = tasks(a.tasks, a.seed)
    ok, dt = asyncio.run(run(batch, constrained=True, model=a.model))
    base, bdt = asyncio.run(run(batch, constrained=False, model=a.model))
    n = len(batch)
    print(f"{n} arithmetic tasks, model {a.model or 'default'}, temperature 0, tools=[calc]")
    print(f"llmos ReAct, grammar-constrained : {ok}/{n} solved ({ok / n:.0%}) in {dt:.1f} s")
    print(f"same agent, no grammar (baseline): {base}/{n} solved ({base / n:.0%}) in {bdt:.1f} s")
    ratio = f"{ok / base:.2f}x" if base else "baseline solved none"
    print(f"ratio {ratio} (target: grammar-constrained >= 90% solved)")


if __name__ == "__main__":
    main()
