"""Remote model backends (issue 16): llmos in front of llama-server, and failover.

1. **Proxying overhead**: 8 concurrent streams of `--tokens` tokens (raw prompts,
   `ignore_eos`, greedy) straight at llama-server (`-np 8`, the packaged model), against
   the same load through llmos: 8 kernel processes calling `llm.complete` on a remote
   model entry for that server. Figure: completion tokens per second of wall time, each
   side `--turns` times in turn.
2. **Failover**: two llama-servers behind a route `auto = [a, b]`; `--requests` requests
   from 8 processes, one after another each; server a is killed `--kill-after` seconds in.
   Every request must be answered or fail with a typed error that says why; "lost" counts
   any that did neither within the time limit.

    python benchmarks/bench_remote.py --llama-server PATH [--tokens 64] [--turns 3]
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import llama_server

PROMPT = "Story {i}: Once upon a time in a small town by the sea,"


async def direct(url: str, tokens: int, n: int = 8) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:

        async def one(i: int) -> int:
            body = {"prompt": PROMPT.format(i=i), "max_tokens": tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True}  # fmt: skip
            made = 0
            async with http.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:") and "[DONE]" not in line and '"text"' in line:
                        made += 1
            return made

        await one(99)
        t0 = time.perf_counter()
        made = sum(await asyncio.gather(*(one(i) for i in range(n))))
        return time.perf_counter() - t0, made


def kernel_settings(tmp: Path, **kw: Any) -> Any:
    from llmos.config import load_settings

    return load_settings(data_dir=tmp, **kw)


async def through_llmos(url: str, tokens: int, n: int = 8) -> tuple[float, int]:
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models import ModelLibrary
    from llmos.kernel.remote import remote_meta

    with tempfile.TemporaryDirectory() as tmp:
        settings = kernel_settings(Path(tmp))
        ModelLibrary(settings.data_dir).add_remote(
            "peer", remote_meta(url, "m", key_env=None, parallel=8, n_ctx=1024)
        )

        async def prog(ctx: Any, i: int) -> int:
            r = await ctx.sys.llm.complete(
                prompt=PROMPT.format(i=i), model="peer", temperature=0, max_tokens=tokens,
                ignore_eos=True,
            )  # fmt: skip
            return int(r.tokens)

        async with Kernel(settings) as k:
            warm = await k.spawn(prog, 99, caps=["llm.*"])
            await k.wait(warm.pid)
            t0 = time.perf_counter()
            procs = [await k.spawn(prog, i, caps=["llm.*"]) for i in range(n)]
            for p in procs:
                await k.wait(p.pid)
            dt = time.perf_counter() - t0
            return dt, sum(int(p.result or 0) for p in procs)


async def failover(a: str, b: str, proc_a: Any, requests: int, tokens: int, kill_after: float) -> dict[str, Any]:  # fmt: skip
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.models import ModelLibrary
    from llmos.kernel.remote import remote_meta

    outcomes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = kernel_settings(Path(tmp), routes={"auto": ["a", "b"]}, remote_retries=1)
        lib = ModelLibrary(settings.data_dir)
        for name, url in (("a", a), ("b", b)):
            lib.add_remote(name, remote_meta(url, "m", key_env=None, parallel=8, n_ctx=1024))

        async def client(ctx: Any, c: int, count: int) -> None:
            for i in range(count):
                try:
                    await ctx.sys.llm.complete(
                        prompt=PROMPT.format(i=c * 100 + i), model="auto", temperature=0,
                        max_tokens=tokens,
                    )  # fmt: skip
                    outcomes.append(f"answered by {ctx.process.info()['served_by']}")
                except Exception as exc:  # a typed syscall error, with its reason
                    outcomes.append(f"failed: {type(exc).__name__}: {str(exc)[:120]}")

        async with Kernel(settings) as k:
            per = requests // 8
            procs = [await k.spawn(client, c, per, caps=["llm.*"]) for c in range(8)]
            await asyncio.sleep(kill_after)
            proc_a.kill()
            proc_a.wait()
            deadline = time.monotonic() + 600
            for p in procs:
                await asyncio.wait_for(k.wait(p.pid), max(1.0, deadline - time.monotonic()))
            sent = per * 8
    counts: dict[str, int] = {}
    for o in outcomes:
        key = o if o.startswith("answered") else o.split(":")[0] + ": " + o.split(": ", 2)[-1][:80]
        counts[key] = counts.get(key, 0) + 1
    return {
        "sent": sent,
        "accounted": len(outcomes),
        "lost": sent - len(outcomes),
        "outcomes": counts,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--kill-after", type=float, default=4.0)
    ap.add_argument("--only", default="proxy,failover")
    args = ap.parse_args()
    if "proxy" in args.only:
        proc, url = llama_server(args.llama_server, 8, 1024)
        try:
            ours, theirs = [], []
            for _ in range(args.turns):
                dt, made = asyncio.run(direct(url, args.tokens))
                theirs.append(made / dt)
                dt, made = asyncio.run(through_llmos(url, args.tokens))
                ours.append(made / dt)
        finally:
            proc.terminate()
            proc.wait()
        print(f"8 streams of {args.tokens} tokens, straight at llama-server: "
              f"{' '.join(f'{x:.1f}' for x in theirs)} tok/s")  # fmt: skip
        print(f"the same through llmos (remote model):          "
              f"{' '.join(f'{x:.1f}' for x in ours)} tok/s")  # fmt: skip
        print(
            f"llmos / direct: {statistics.median(ours) / statistics.median(theirs):.3f}x (medians)"
        )
    if "failover" in args.only:
        pa, a = llama_server(args.llama_server, 8, 1024)
        pb, b = llama_server(args.llama_server, 8, 1024)
        try:
            out = asyncio.run(failover(a, b, pa, args.requests, args.tokens, args.kill_after))
        finally:
            for p in (pa, pb):
                if p.poll() is None:
                    p.terminate()
                    p.wait()
        print(
            f"failover: {out['sent']} requests, {out['accounted']} accounted for, {out['lost']} lost"
        )
        for k, v in sorted(out["outcomes"].items()):
            print(f"  {v:3d}  {k}")


if __name__ == "__main__":
    main()
