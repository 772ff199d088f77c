"""Step costs behind two targets issue 14 and 17 missed on this machine (`RESULTS.md`).

1. **Adapters** (`--what adapter`): the median time of a 1-token decode step on the base,
   with a rank-8 adapter on all 7 projections applied, and with the adapter set changed
   before every step (three sets in turn).
2. **Speculation** (`--what verify`): at `bench_speculation.py`'s ~1,400-token context, the
   median time of a verify batch of 1 + k tokens with logits at every position, for
   k = 0, 1, 2, 4, 8; then, on `bench_speculation.py`'s four copying prompts, the decoding
   speed (first token to last) with drafting forced on and off, and how many of the four
   answers are the same text.

3. **Fast-forward** (`--what ff`): one ReAct step (the action schema of `calc`, the agent's
   143-token prompt), greedy, token by token and fast-forwarded: the prompt's prefill, each
   decode step's size and time; and the time of one greedy sample under the grammar with
   the grammar first in the chain (as plain llama.cpp) and checked last (llmos).

    python benchmarks/probe_costs.py [--what adapter|verify|ff|all] [--flash-attn auto]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import model_path, threads
from bench_adapters import random_adapter
from bench_speculation import questions


def adapter_steps() -> None:
    from llmos.kernel.backend import BatchEntry
    from llmos.kernel.llama_backend import LlamaBackend

    base = model_path()
    with tempfile.TemporaryDirectory() as d:
        paths = [str(Path(d) / f"lora{i}.gguf") for i in (1, 2)]
        for i, p in enumerate(paths, 1):
            random_adapter(Path(p), base, seed=i)
        b = LlamaBackend(base, n_slots=1, n_ctx=512, n_batch=64, n_threads=threads())
        try:
            prompt = b.tokenize("hello there, how are you")
            b.decode([BatchEntry(0, prompt, 0, True)])
            pos = len(prompt)

            def step(adapter: str | None) -> float:
                b.set_adapter(adapter)
                t = time.perf_counter()
                b.decode([BatchEntry(0, [100], pos, True)])
                dt = time.perf_counter() - t
                b.seq_rm(0, pos, -1)
                return dt

            cases: dict[str, list[str | None]] = {
                "base": [None] * 30,
                "one adapter, no switch": [paths[0]] * 30,
                "adapter set changed every step": [None, paths[0], paths[1]] * 10,
            }
            print(f"1-token decode step, threads={threads()} (median of 30)")
            for label, seq in cases.items():
                print(f"  {label:32}: {statistics.median(step(a) for a in seq) * 1e3:6.2f} ms")
        finally:
            b.close()


async def verify_costs(flash_attn: str) -> None:
    from llmos.core.sampling import SamplingParams
    from llmos.kernel.backend import BatchEntry
    from llmos.kernel.engine import EngineCore
    from llmos.kernel.llama_backend import LlamaBackend
    from llmos.kernel.scheduler import Policy

    b = LlamaBackend(model_path(), n_slots=1, n_ctx=4096, n_batch=512, n_threads=threads(), flash_attn=flash_attn)  # fmt: skip
    qs = questions(4)
    prompt = b.tokenize(qs[0], add_special=False)
    for s in range(0, len(prompt), 512):
        b.decode([BatchEntry(0, prompt[s : s + 512], s, s + 512 >= len(prompt))])
    pos = len(prompt)
    print(f"verify batch at a {pos}-token context, flash_attn={flash_attn} (median of 10)")
    for k in (0, 1, 2, 4, 8):
        ts = []
        for _ in range(10):
            t = time.perf_counter()
            b.decode([BatchEntry(0, [100] * (k + 1), pos, True, draft=k)])
            ts.append(time.perf_counter() - t)
            b.seq_rm(0, pos, -1)
        print(f"  1 + {k} tokens: {statistics.median(ts) * 1e3:6.2f} ms")
    b.seq_rm(0, -1, -1)
    core = EngineCore(b, policy=Policy(), n_batch=512, prefix_min_tokens=100_000, spec_batch_tokens=64)  # fmt: skip
    core.start()
    try:
        made = {False: 0, True: 0}
        spent = {False: 0.0, True: 0.0}
        same = drafted = accepted = 0
        for q in qs:
            ids = b.tokenize(q, add_special=False)
            texts = {}
            for spec in (False, True):
                gen = core.generate(ids, SamplingParams(temperature=0, max_tokens=150, speculate=spec))  # fmt: skip
                texts[spec] = await gen.result()
                st = gen.stats
                made[spec] += st.generated
                spent[spec] += (st.finished or 0.0) - (st.first_token or 0.0)
                if spec:
                    drafted += st.drafted
                    accepted += st.accepted
            same += texts[False] == texts[True]
    finally:
        core.close()
    print(f"decoding {len(qs)} copying answers, drafting forced (speculate=true)")
    for spec in (False, True):
        print(f"  drafting {'on ' if spec else 'off'}: {made[spec] / spent[spec]:6.1f} tok/s")
    print(f"  drafted {drafted}, accepted {accepted}; same text {same} of {len(qs)}")


def ff_steps() -> None:
    from llmos.agents.react import EXAMPLE, SYSTEM, action_schema
    from llmos.core.sampling import SamplingParams
    from llmos.core.syscall import SyscallTable
    from llmos.kernel.backend import BatchEntry
    from llmos.kernel.engine import EngineCore, SeqState
    from llmos.kernel.llama_backend import LlamaBackend
    from llmos.tools.basic import calc

    specs = [SyscallTable().register(calc)]
    schema = action_schema(specs, finish=False)
    system = SYSTEM.format(tools="\n".join(f"- {s.signature()}: {s.doc}" for s in specs))
    shots = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in EXAMPLE)
    prompt = (
        f"<|im_start|>system\n{system}<|im_end|>\n{shots}"
        "<|im_start|>user\nWhat is 17*23?<|im_end|>\n<|im_start|>assistant\n"
    )
    b = LlamaBackend(model_path(), n_slots=1, n_ctx=2048, n_threads=threads())
    print(f"fast-forward, one ReAct step ({len(b.tokenize(prompt))}-token prompt)")
    orig = b.decode
    for grammar_last in (False, True):  # the cost of one sample under the grammar
        b.grammar_last = grammar_last
        sampler = b.new_sampler(SamplingParams(temperature=0, json_schema=schema))
        idx = orig([BatchEntry(0, b.tokenize(prompt), 0, True)])[0]
        t0 = time.perf_counter()
        b.sample(sampler, idx)
        dt = time.perf_counter() - t0
        b.free_sampler(sampler)
        b.seq_rm(0)
        print(f"  first sample, grammar {'last' if grammar_last else 'first'}: {dt * 1e3:.2f} ms")
    for ff in (False, True, False, True):
        core = EngineCore(b, fast_forward=ff)
        steps: list[tuple[int, float]] = []

        def timed(entries: list[Any], steps: list[tuple[int, float]] = steps) -> list[int]:
            t0 = time.perf_counter()
            out = orig(entries)
            steps.append((sum(len(e.tokens) for e in entries), time.perf_counter() - t0))
            return out

        b.decode = timed  # type: ignore[method-assign]
        params = SamplingParams(temperature=0, max_tokens=100, json_schema=schema)
        seq = core.submit(prompt, params, sink=lambda e: None)
        t0 = time.perf_counter()
        while seq.state is not SeqState.DONE:
            core.step()
        total = time.perf_counter() - t0
        b.decode = orig  # type: ignore[method-assign]
        b.seq_rm(0)
        ones = [x for n, x in steps[1:] if n == 1]
        multi = ", ".join(f"{n} tokens {x * 1e3:.1f} ms" for n, x in steps[1:] if n > 1)
        print(
            f"  fast-forward {'on ' if ff else 'off'}: {total * 1e3:.0f} ms; prefill "
            f"{steps[0][1] * 1e3:.0f} ms; {len(ones)} one-token steps, median "
            f"{statistics.median(ones) * 1e3:.1f} ms; {multi or 'no bigger steps'}; {seq.text}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", choices=["adapter", "verify", "ff", "all"], default="all")
    ap.add_argument("--flash-attn", default="auto")
    a = ap.parse_args()
    if a.what in ("adapter", "all"):
        adapter_steps()
    if a.what in ("verify", "all"):
        asyncio.run(verify_costs(a.flash_attn))
    if a.what in ("ff", "all"):
        ff_steps()


if __name__ == "__main__":
    main()
