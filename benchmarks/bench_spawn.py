"""Spawn and reap 1,000 scripted processes, against creating 1,000 bare asyncio tasks.

    python benchmarks/bench_spawn.py [--n 1000] [--rounds 3]

Each process runs a program that makes one syscall and returns; the kernel gives it a PCB,
a context, a log path, rows in the SQLite process table (at spawn and at exit), and the
parent reaps it with `kernel.wait`. The baseline creates and gathers the same number of
asyncio tasks running the same coroutine body minus the syscall. Target: <= 2 s for 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any


async def program(ctx: Any) -> int:
    await ctx.sys.sys.echo(text="hi")
    return 0


async def bare() -> int:
    await asyncio.sleep(0)
    return 0


async def bench(n: int, rounds: int) -> None:
    from llmos.config import load_settings
    from llmos.kernel.kernel import Kernel

    best_bare = best_spawn = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(bare()) for _ in range(n)]
        await asyncio.gather(*tasks)
        best_bare = min(best_bare, time.perf_counter() - t0)

        with tempfile.TemporaryDirectory() as tmp:
            async with Kernel(load_settings(data_dir=Path(tmp))) as k:
                t0 = time.perf_counter()
                procs = [await k.spawn(program, caps=["sys.echo"]) for _ in range(n)]
                codes = [await k.wait(p.pid) for p in procs]
                best_spawn = min(best_spawn, time.perf_counter() - t0)
                assert codes == [0] * n
                assert k.proctable is not None and len(k.history(limit=n + 1)) == n
    ok = "met" if best_spawn <= 2.0 else "NOT met"
    print(f"spawn + reap {n} processes (best of {rounds})")
    print(f"  bare asyncio tasks     {best_bare * 1e3:8.1f} ms")
    print(f"  kernel processes       {best_spawn * 1e3:8.1f} ms")
    print(f"  ratio kernel/bare: {best_spawn / best_bare:.1f}x; target <= 2 s: {ok}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    asyncio.run(bench(a.n, a.rounds))


if __name__ == "__main__":
    main()
