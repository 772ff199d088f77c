"""Self-distillation of tool use: teach the default 135M model to emit ReAct actions without
the grammar that it needs today.

1. **traces**: the default model solves arithmetic tasks as a ReAct agent *under the action
   grammar* (the teacher: the same model, constrained). Tasks come from this script's own
   generator (its own phrasings and number ranges, and no task that `bench_react` asks);
   only traces whose answer is right are kept. Each becomes a chat example whose trained
   turns are the agent's own actions (the worked example in the prompt has weight 0).
2. **finetune**: a LoRA adapter for the default model on those traces
   (`llmos models finetune`).
3. **evaluate**: `benchmarks/bench_react.py` with the adapter, with and without the grammar.

    python examples/self_distill_react.py traces --tasks 400 --out traces.jsonl
    llmos models finetune smollm2-135m-instruct traces.jsonl --name react-lora --epochs 2
    python benchmarks/bench_react.py --model smollm2-135m-instruct+react-lora

`benchmarks/RESULTS.md` records the figures of the last run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_react  # the benchmark's tasks (to leave out) and its notion of "solved"

# This generator's own phrasings: different words from the benchmark's five where it can,
# since the adapter must learn the action format, not the benchmark's sentences.
FORMS = [
    ("Multiply {a} by {b}.", "*"), ("What is {a} plus {b}?", "+"),
    ("Subtract {b} from {a}.", "-"), ("How much is {a}*{b}?", "*"),
    ("Add {a} and {b}.", "+"), ("What do you get for {a} - {b}?", "-"),
    ("Find the product of {a} and {b}.", "*"), ("Work out {a} + {b}.", "+"),
    ("What is {a}*{b}?", "*"), ("Compute {a} - {b}.", "-"),
    ("Calculate {a} plus {b}.", "+"), ("What is {a} times {b}?", "*"),
]  # fmt: skip


def tasks(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    held = {t for t, _ in bench_react.tasks(200, 7)}  # never the benchmark's own tasks
    out: list[tuple[str, int]] = []
    while len(out) < n:
        form, op = rng.choice(FORMS)
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        want = a * b if op == "*" else a + b if op == "+" else a - b
        text = form.format(a=a, b=b)
        if text not in held:
            out.append((text, want))
    return out


def example(messages: list[dict[str, str]]) -> dict[str, Any]:
    """A trace as a training example: the prompt's worked example stays context only."""
    n_prompt = 1 + len(bench_react_example())  # system + worked example
    return {
        "messages": [
            {**m, "weight": 0} if i < n_prompt and m["role"] == "assistant" else dict(m)
            for i, m in enumerate(messages)
        ]
    }


def bench_react_example() -> list[dict[str, str]]:
    from llmos.agents.react import EXAMPLE

    return EXAMPLE


async def make_traces(n: int, seed: int, model: str | None) -> tuple[list[dict[str, Any]], int]:
    from llmos.agents.react import react_program
    from llmos.config import Settings
    from llmos.kernel.kernel import Kernel

    batch = tasks(n, seed)
    kept: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with Kernel(Settings(data_dir=Path(tmp))) as k:
            procs = [
                await k.spawn(react_program, task, ["calc"], 6, 0, True, True, model=model)
                for task, _ in batch
            ]
            for p in procs:
                await k.wait(p.pid)
    for (_, want), p in zip(batch, procs, strict=True):
        if bench_react.solved(p.result, want):
            kept.append(example(p.result["messages"]))
    return kept, len(batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("traces", help="generate training traces under the grammar")
    tr.add_argument("--tasks", type=int, default=400)
    tr.add_argument("--seed", type=int, default=1234)
    tr.add_argument("--model", default=None)
    tr.add_argument("--out", type=Path, default=Path("traces.jsonl"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    kept, n = asyncio.run(make_traces(a.tasks, a.seed, a.model))
    a.out.write_text("".join(json.dumps(x) + "\n" for x in kept))
    print(f"{len(kept)}/{n} traces solved under the grammar, kept in {a.out} "
          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
