"""Benchmark: 8 concurrent API clients' aggregate tokens/s through `llmos serve`, versus the
same load on llama.cpp's `llama-server -np 8` with the same GGUF (`--llama-server PATH`;
the row is skipped without one).

Both servers run as their own processes on loopback with the same threads, slots and
context; the same client streams `/v1/chat/completions` (fixed-length answers: ignore_eos)
and counts the completion tokens each server reports.

    python benchmarks/bench_server.py [--tokens 128] [--rounds 2] [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUESTIONS, model_path, threads

MODEL = "smollm2-135m-instruct"
CLIENTS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} not ready after {timeout}s")


async def one_request(http: httpx.AsyncClient, question: str, n: int, seed: int) -> int:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": n,
        "temperature": 0.8,
        "seed": seed,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage, chunks = None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            data = json.loads(line[5:])
            if data.get("usage"):
                usage = data["usage"]
            if any((c.get("delta") or {}).get("content") for c in data.get("choices") or []):
                chunks += 1
    return int(usage["completion_tokens"]) if usage else chunks


async def load(url: str, n: int, rounds: int) -> tuple[float, int, float]:
    """(tokens/s, tokens, seconds) for CLIENTS clients each sending `rounds` requests."""
    # a fresh connection per request: llama-server closes kept-alive connections after a
    # few requests, and a request racing that close fails; loopback connects cost ~nothing
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await one_request(http, "warm up", 8, 0)

        async def client(i: int) -> int:
            total = 0
            for r in range(rounds):
                q = QUESTIONS[(i + r) % len(QUESTIONS)]
                total += await one_request(http, q, n, seed=i * 100 + r)
            return total

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        dt = time.perf_counter() - t0
    total = sum(counts)
    return total / dt, total, dt


def run_server(
    cmd: list[str], url: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_healthy(url, proc)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc


def llama_server(
    server: str, slots: int, ctx_per_slot: int, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """llama-server on the packaged model, loopback, this machine's threads, `slots`
    parallel slots of `ctx_per_slot` cells (and `extra` flags), started and healthy:
    (its process, its URL)."""
    port = free_port()
    cmd = [
        server, "-m", str(model_path()), "-np", str(slots), "-c", str(slots * ctx_per_slot),
        "-t", str(threads()), "-tb", str(threads()), "--port", str(port), "--host", "127.0.0.1",
        "--no-webui", *extra,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return run_server(cmd, url), url


def measure(
    cmd: list[str], url: str, n: int, rounds: int, repeat: int, env: dict[str, str] | None = None
) -> tuple[float, int, float]:
    proc = run_server(cmd, url, env)
    try:
        runs = [asyncio.run(load(url, n, rounds)) for _ in range(repeat)]
    finally:
        proc.terminate()
        proc.wait()
    return max(runs)  # best of `repeat`: the machine is shared, noise only slows a run


def ours(n: int, rounds: int, repeat: int, flash_attn: str) -> tuple[float, int, float]:
    port = free_port()
    data = tempfile.mkdtemp(prefix="llmos-bench-")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LLMOS_DATA_DIR": data,
        "LLMOS_N_THREADS": str(threads()),
        "LLMOS_N_SEQ_MAX": str(CLIENTS),
        "LLMOS_N_CTX": str(CLIENTS * 2048),
        "LLMOS_SERVER_QUEUE_LIMIT": "64",
        "LLMOS_FLASH_ATTN": flash_attn,
    }
    cmd = [sys.executable, "-m", "llmos", "serve", "--port", str(port)]
    return measure(cmd, f"http://127.0.0.1:{port}", n, rounds, repeat, env)


async def _engine_load(n: int, rounds: int, flash_attn: str) -> tuple[float, int, float]:
    from llmos.config import load_settings
    from llmos.core.sampling import SamplingParams
    from llmos.kernel.kernel import Kernel

    data = tempfile.mkdtemp(prefix="llmos-bench-")
    settings = load_settings(
        data_dir=Path(data),
        n_threads=threads(),
        n_seq_max=CLIENTS,
        n_ctx=CLIENTS * 2048,
        flash_attn=flash_attn,
    )
    async with Kernel(settings) as k:
        engine = await k.engine()

        async def ask(q: str, seed: int, tokens: int) -> int:
            prompt = await k.render_chat([{"role": "user", "content": q}])
            params = SamplingParams(temperature=0.8, seed=seed, max_tokens=tokens, ignore_eos=True)
            gen = engine.generate(prompt, params)
            await gen.result()
            return gen.stats.generated

        await ask("warm up", 0, 8)

        async def client(i: int) -> int:
            return sum(
                [
                    await ask(QUESTIONS[(i + r) % len(QUESTIONS)], i * 100 + r, n)
                    for r in range(rounds)
                ]
            )

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        dt = time.perf_counter() - t0
    return sum(counts) / dt, sum(counts), dt


def engine_direct(n: int, rounds: int, repeat: int, flash_attn: str) -> tuple[float, int, float]:
    """The same load on the engine in-process, no HTTP: what the API layer costs."""
    return max(asyncio.run(_engine_load(n, rounds, flash_attn)) for _ in range(repeat))


def peer(
    server: str, n: int, rounds: int, repeat: int, flash_attn: str
) -> tuple[float, int, float]:
    port = free_port()
    cmd = [
        server, "-m", str(model_path()), "-np", str(CLIENTS), "-c", str(CLIENTS * 2048),
        "-t", str(threads()), "-tb", str(threads()), "--port", str(port), "--host", "127.0.0.1",
        "-cb", "--no-webui", "-fa", flash_attn,
    ]  # fmt: skip
    return measure(cmd, f"http://127.0.0.1:{port}", n, rounds, repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    ap.add_argument("--rounds", type=int, default=2, help="requests each client sends in turn")
    ap.add_argument("--repeat", type=int, default=2, help="runs per server (best is kept)")
    ap.add_argument("--llama-server", default=None, help="path of a llama-server binary (peer row)")
    ap.add_argument(
        "--flash-attn", choices=("auto", "on", "off"), default="auto",
        help="flash attention on both servers (auto: both servers' default)",
    )  # fmt: skip
    a = ap.parse_args()
    fa = a.flash_attn
    print(
        f"threads={threads()} clients={CLIENTS} rounds={a.rounds} new_tokens={a.tokens} flash_attn={a.flash_attn} (streaming chat completions)"
    )
    mine, tokens, dt = ours(a.tokens, a.rounds, a.repeat, fa)
    print(f"llmos serve (8 slots)     : {mine:7.1f} tok/s   ({tokens} tokens in {dt:.2f} s)")
    direct, dtok, ddt = engine_direct(a.tokens, a.rounds, a.repeat, fa)
    print(
        f"llmos engine in-process   : {direct:7.1f} tok/s   ({dtok} tokens in {ddt:.2f} s; API/engine {mine / direct:.2f}x)"
    )
    if a.llama_server:
        p, ptok, pdt = peer(a.llama_server, a.tokens, a.rounds, a.repeat, fa)
        print(f"llama-server -np 8        : {p:7.1f} tok/s   ({ptok} tokens in {pdt:.2f} s)")
        print(f"ratio llmos/llama-server  : {mine / p:.2f}x (target >= 0.9x)")
    else:
        print("llama-server -np 8        : skipped (no --llama-server PATH)")


if __name__ == "__main__":
    main()
