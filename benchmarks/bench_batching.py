"""Benchmark 1: 8 concurrent processes x 128 new tokens, aggregate tokens/s.

llmos's side: 8 kernel processes, each one `llm.complete` syscall (`--engine-too` adds the
same 8 requests straight on the engine, to show what processes and syscalls cost).
Baseline: one `llama_cpp.Llama` answering the same 8 requests one after another.
Peer (optional): llama.cpp's own `llama-server -np 8` on the same 8 concurrent requests
(`--llama-server PATH`; the row is skipped without one).

    python benchmarks/bench_batching.py [--tokens 128] [--turns 3] [--engine-too]
                                        [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    QUESTIONS,
    alternate,
    chat_prompt,
    engine,
    flash_attn,
    fmt_runs,
    llama_baseline,
    model_path,
    paired,
    threads,
)

from llmos.core.sampling import SamplingParams


def params(n: int) -> SamplingParams:
    # fixed length: the same work on every side (no early stop)
    return SamplingParams(temperature=0.8, seed=1, max_tokens=n, ignore_eos=True)


def baseline(n: int) -> float:
    llm = llama_baseline()
    llm.create_completion(chat_prompt("warm up"), max_tokens=8)
    total, t0 = 0, time.perf_counter()
    for q in QUESTIONS:
        llm.reset()
        r = llm.create_completion(
            chat_prompt(q), max_tokens=n, temperature=0.8, seed=1, logit_bias=_no_eos(llm)
        )
        total += r["usage"]["completion_tokens"]
    dt = time.perf_counter() - t0
    del llm
    return total / dt


def _no_eos(llm: object) -> dict[int, float]:
    return {int(llm.token_eos()): -1e9}  # type: ignore[attr-defined]


async def processes(n: int) -> float:
    """8 kernel processes, each one `llm.complete` syscall: what the issue names."""
    import tempfile

    from llmos.config import load_settings
    from llmos.kernel.kernel import Kernel

    async def prog(ctx: Any, prompt: str, n: int) -> dict[str, int]:  # (an int is an exit code)
        r = await ctx.sys.llm.complete(
            prompt=prompt, max_tokens=n, temperature=0.8, seed=1, ignore_eos=True
        )
        return {"tokens": r.tokens}

    with tempfile.TemporaryDirectory() as d:
        settings = load_settings(
            data_dir=Path(d), default_model=str(model_path()), n_threads=threads(),
            flash_attn=flash_attn(), n_seq_max=8, n_ctx=8 * 2048, n_batch=512,
            prefix_min_tokens=10**9,  # each evaluates its prompt, as elsewhere
        )  # fmt: skip
        async with Kernel(settings) as k:
            warm = await k.spawn(prog, chat_prompt("warm up"), 8)  # loads the model
            assert await k.wait(warm.pid) == 0, warm.error
            t0 = time.perf_counter()
            procs = [await k.spawn(prog, chat_prompt(q), n) for q in QUESTIONS]
            for p in procs:
                assert await k.wait(p.pid) == 0, p.error
            dt = time.perf_counter() - t0
            return sum(int(p.result["tokens"]) for p in procs) / dt


async def engine_alone(n: int) -> float:
    """The same 8 requests straight on the engine: no processes, no syscalls."""
    core = engine(n_slots=8)
    try:
        await core.generate(chat_prompt("warm up"), params(8)).result()  # the same settings
        core.prefix_min = 10**9  # every request evaluates its own prompt, as the baseline does
        t0 = time.perf_counter()
        gens = [core.generate(chat_prompt(q), params(n)) for q in QUESTIONS]
        await asyncio.gather(*(g.result() for g in gens))
        dt = time.perf_counter() - t0
        return sum(g.stats.generated for g in gens) / dt
    finally:
        core.close()


def processes_rate(n: int) -> float:
    return asyncio.run(processes(n))


def engine_rate(n: int) -> float:
    return asyncio.run(engine_alone(n))


def peer(server: str, n: int, flash_attn: str = "off") -> float:
    port = 18931
    proc = subprocess.Popen(
        [server, "-m", str(model_path()), "-np", "8", "-c", str(8 * 2048), "-t", str(threads()),
         "--port", str(port), "--host", "127.0.0.1", "-cb", "--no-webui", "-fa", flash_attn],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except Exception:
                time.sleep(0.1)

        def one(q: str) -> int:
            body = json.dumps({"prompt": chat_prompt(q), "n_predict": n, "temperature": 0.8, "seed": 1,
                               "ignore_eos": True, "cache_prompt": False}).encode()  # fmt: skip
            req = urllib.request.Request(
                url + "/completion", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=600) as r:
                return int(json.loads(r.read())["tokens_predicted"])

        one("warm up")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as ex:
            total = sum(ex.map(one, QUESTIONS))
        return total / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--turns", type=int, default=3, help="runs per side, taking turns")
    ap.add_argument("--llama-server", default=None, help="path of a llama-server binary (peer row)")
    ap.add_argument(
        "--engine-too", action="store_true", help="also the engine alone, without processes"
    )
    a = ap.parse_args()
    sides: dict[str, tuple[Any, tuple[Any, ...]]] = {
        "base": (baseline, (a.tokens,)),
        "ours": (processes_rate, (a.tokens,)),
    }
    if a.engine_too:
        sides["engine"] = (engine_rate, (a.tokens,))
    if a.llama_server:  # the same flash-attention mode as llmos's side
        sides["peer"] = (peer, (a.llama_server, a.tokens, flash_attn()))
    runs = alternate(sides, a.turns)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"threads={threads()} requests=8 new_tokens={a.tokens} flash_attn={flash_attn()} "
        f"({a.turns} runs per side taking turns, median)"
    )
    print(f"baseline Llama sequential : {med['base']:7.1f} tok/s   runs {fmt_runs(runs['base'])}")
    print(
        f"llmos 8 kernel processes  : {med['ours']:7.1f} tok/s   runs {fmt_runs(runs['ours'])}"
        f"   ratio {med['ours'] / med['base']:.2f}x (target >= 1.9x)\n"
        f"llmos/baseline {paired(runs['ours'], runs['base'])}"
    )
    if a.engine_too:
        print(
            f"llmos engine alone        : {med['engine']:7.1f} tok/s   runs "
            f"{fmt_runs(runs['engine'])}   processes/engine "
            f"{paired(runs['ours'], runs['engine'])}"
        )
    if a.llama_server:
        print(
            f"peer llama-server -np 8   : {med['peer']:7.1f} tok/s   runs {fmt_runs(runs['peer'])}"
            f"   llmos/peer {med['ours'] / med['peer']:.2f}x (target >= 1.0x); "
            f"peer/baseline {med['peer'] / med['base']:.2f}x\n"
            f"llmos/peer {paired(runs['ours'], runs['peer'])}"
        )
    else:
        print("peer llama-server -np 8   : skipped (no --llama-server PATH)")


if __name__ == "__main__":
    main()
