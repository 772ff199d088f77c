"""Adapters per process: 8 processes split across the base model and two LoRA adapters,
against 8 processes on the base alone, in the same run (issue 14's target: >= 0.8x the
aggregate tokens per second).

llama.cpp applies a context's adapters to every token of a batch, so the engine runs one
adapter set per decode step and rotates between sets (kernel/engine.py `_group`): the
split workload decodes in three smaller batches where the base-only one decodes in one.
The two adapters are rank-8 LoRAs on all seven projections of every block (what `llmos
models finetune` trains by default), with random weights: their values don't change the
work, only the text. Each process completes a distinct prompt for exactly `--tokens`
tokens (`ignore_eos`); both sides run in one kernel with the model loaded, taking turns.

    python benchmarks/bench_adapters.py [--tokens 128] [--turns 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import chat_prompt, model_path, paired
from _common import threads as n_threads

MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}  # fmt: skip


def random_adapter(path: Path, base: Path, seed: int, rank: int = 8) -> None:
    """A rank-`rank` LoRA over every projection of `base`, small random weights."""
    import numpy as np

    from llmos.kernel.gguf import read_gguf
    from llmos.ops.lora_gguf import write_adapter

    header = read_gguf(base)
    arch = header.architecture
    rng = np.random.default_rng(seed)
    layers: dict[str, tuple[Any, Any]] = {}
    for t in header.tensors:
        parts = t.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in MODULES:
            n_in, n_out = t.shape[0], t.shape[1]
            a = rng.normal(0, 0.02, (rank, n_in)).astype(np.float32)
            b = rng.normal(0, 0.02, (n_out, rank)).astype(np.float32)
            layers[f"model.layers.{parts[1]}.{MODULES[parts[2]]}"] = (a, b)
    md = header.metadata
    write_adapter(
        path, architecture=arch, alpha=16.0, layers=layers,
        n_head=int(md[f"{arch}.attention.head_count"]),
        n_head_kv=int(md.get(f"{arch}.attention.head_count_kv", md[f"{arch}.attention.head_count"])),
    )  # fmt: skip


async def _side(k: Any, models: list[str], tokens: int, turn: int) -> tuple[float, int]:
    async def one(ctx: Any, prompt: str, model: str) -> None:
        await ctx.sys.llm.complete(
            prompt=prompt, model=model, max_tokens=tokens, temperature=0.0,
            ignore_eos=True, stream=False,
        )  # fmt: skip

    t0 = time.perf_counter()
    procs = [
        await k.spawn(one, chat_prompt(f"Write about topic {turn}-{i}."), m, name=f"p{i}")
        for i, m in enumerate(models)
    ]
    for p in procs:
        await k.wait(p.pid)
    dt = time.perf_counter() - t0
    assert all(p.exit_code == 0 for p in procs), [p.error for p in procs]
    return dt, sum(p.tokens for p in procs)


async def main_async(tokens: int, turns: int) -> dict[str, list[float]]:
    from llmos.config import load_settings
    from llmos.kernel.kernel import Kernel

    runs: dict[str, list[float]] = {"base": [], "split": []}
    with tempfile.TemporaryDirectory() as d:
        base = model_path()
        settings = load_settings(
            data_dir=Path(d) / "data", default_model=str(base), n_threads=n_threads()
        )
        async with Kernel(settings) as k:
            name = k.library.add(base, "bench-base").name
            for i in (1, 2):
                path = Path(d) / f"lora{i}.gguf"
                random_adapter(path, base, seed=i)
                k.library.add_adapter(path, f"lora{i}", base=name)
            warm = [name, f"{name}+lora1", f"{name}+lora2"]
            await _side(k, warm, 8, -1)  # loads the model and both adapters
            base_only = [name] * 8
            split = [name] * 3 + [f"{name}+lora1"] * 3 + [f"{name}+lora2"] * 2
            for turn in range(turns):
                for label, models in (("base", base_only), ("split", split)):
                    dt, made = await _side(k, models, tokens, turn)
                    assert made == 8 * tokens, made
                    runs[label].append(dt)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per process")
    ap.add_argument("--turns", type=int, default=3)
    a = ap.parse_args()
    runs = asyncio.run(main_async(a.tokens, a.turns))
    total = 8 * a.tokens
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"threads={n_threads()} 8 processes x {a.tokens} tokens, {a.turns} turns (median)")
    for label, what in (("base", "8 on the base"), ("split", "3 base + 3 lora1 + 2 lora2")):
        runs_s = ", ".join(f"{x:.2f}" for x in runs[label])
        print(f"{what:28}: {med[label]:6.2f} s  {total / med[label]:6.1f} tok/s   runs {runs_s} s")
    print(
        f"aggregate tok/s ratio split/base {med['base'] / med['split']:.2f}x (target >= 0.8x); "
        f"{paired(runs['base'], runs['split'])}"
    )


if __name__ == "__main__":
    main()
