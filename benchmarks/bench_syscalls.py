"""No-op syscall dispatch, everything included, against awaiting the handler directly.

    python benchmarks/bench_syscalls.py [--n 20000]

The measured path is what an agent's `await ctx.sys.sys.echo(text=...)` costs: the proxy,
the syscall budget check, argument validation (pydantic), the capability check, the
approval policy, the audit row (buffered into SQLite, flushes included), and the handler.
The baseline awaits the same handler coroutine directly in the same process.
Target: p50 <= 50 us.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import pct  # the script's folder is on sys.path


async def bench(n: int) -> None:
    from llmos.config import load_settings
    from llmos.kernel.kernel import Kernel
    from llmos.tools.basic import echo

    with tempfile.TemporaryDirectory() as tmp:
        async with Kernel(load_settings(data_dir=Path(tmp))) as k:
            out: dict[str, list[float]] = {}

            async def prog(ctx: Any) -> None:
                call = ctx.sys.sys.echo
                for label, fn in (
                    ("direct handler await", lambda: echo(ctx, text="x")),
                    ("syscall dispatch", lambda: call(text="x")),
                ):
                    for _ in range(n // 10):  # warm up
                        await fn()
                    times = []
                    for _ in range(n):
                        t0 = time.perf_counter()
                        await fn()
                        times.append(time.perf_counter() - t0)
                    out[label] = times

            p = await k.spawn(prog, caps=["sys.echo"])
            assert await k.wait(p.pid) == 0, p.error
            assert k.proctable is not None
            rows = len(k.proctable.audit_rows(pid=p.pid))
    base, disp = out["direct handler await"], out["syscall dispatch"]
    print(f"no-op syscall (sys.echo), n={n} each; audit rows written: {rows}")
    for label, xs in out.items():
        print(
            f"  {label:22s} p50 {pct(xs, 0.5) * 1e6:7.2f} us  p99 {pct(xs, 0.99) * 1e6:7.2f} us"
            f"  mean {statistics.fmean(xs) * 1e6:7.2f} us"
        )
    ratio = pct(disp, 0.5) / pct(base, 0.5)
    ok = "met" if pct(disp, 0.5) <= 50e-6 else "NOT met"
    print(f"  ratio dispatch/direct (p50): {ratio:.1f}x; target p50 <= 50 us: {ok}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    asyncio.run(bench(ap.parse_args().n))


if __name__ == "__main__":
    main()
