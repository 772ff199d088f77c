"""A `calc` tool call through `llmos mcp serve` over stdio, against the same syscall made
in-process through the kernel.

    python benchmarks/bench_mcp.py [--n 300]

In-process is `run_syscall(kernel, "calc", ...)`: the call in a short process of its own,
with capabilities, approval and audit; the MCP server makes exactly that call for each
`tools/call`. So the difference is what MCP adds: the SDK client, JSON-RPC framing both
ways, two pipes, and the server's dispatch. The two sides take turns call by call, so the
machine's drift falls on both. Each kernel gets a fresh data dir and no config file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from _common import pct  # the script's folder is on sys.path

CALL = {"expression": "17*23"}


async def measure(
    sides: Mapping[str, Callable[[], Awaitable[object]]], n: int
) -> dict[str, list[float]]:
    """Seconds per call of each side, the sides taking turns call by call, after a check
    of the answer and a warm-up."""
    for fn in sides.values():
        assert await fn() == 391
    for _ in range(max(10, n // 10)):
        for fn in sides.values():
            await fn()
    times: dict[str, list[float]] = {label: [] for label in sides}
    for _ in range(n):
        for label, fn in sides.items():
            t = time.perf_counter()
            await fn()
            times[label].append(time.perf_counter() - t)
    return times


async def bench(n: int) -> None:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from llmos.config import load_settings
    from llmos.kernel.kernel import DEFAULT_CAPS, Kernel
    from llmos.kernel.oneshot import run_syscall

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LLMOS_CONFIG"] = str(Path(tmp) / "absent.toml")  # both sides: defaults
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMOS_DATA_DIR": str(Path(tmp) / "mcp")}
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "llmos", "mcp", "serve"], env=env
        )
        t0 = time.perf_counter()
        async with Client(stdio_client(params, errlog=sys.stderr), mode="legacy") as client:
            started = time.perf_counter() - t0  # spawn, imports, kernel boot, initialize
            async with Kernel(load_settings(data_dir=Path(tmp) / "inproc")) as kernel:

                async def over_mcp() -> object:
                    r = await client.call_tool("calc", CALL)
                    assert not r.is_error, r
                    return json.loads(r.content[0].text)  # type: ignore[union-attr]

                async def in_process() -> object:
                    return await run_syscall(kernel, "calc", CALL, caps=DEFAULT_CAPS, label="mcp")

                sides = {"in-process run_syscall": in_process, "MCP tools/call, stdio": over_mcp}
                times = await measure(sides, n)

    print(f"calc tool call, n={n} each, the two sides taking turns")
    for label, xs in times.items():
        print(
            f"  {label:24s} p50 {pct(xs, 0.5) * 1e6:8.0f} us  p90 {pct(xs, 0.9) * 1e6:8.0f} us"
            f"  mean {statistics.fmean(xs) * 1e6:8.0f} us"
        )
    base, mcp = (pct(xs, 0.5) for xs in times.values())
    print(f"  MCP overhead (p50): {(mcp - base) * 1e6:.0f} us per call, ratio {mcp / base:.1f}x")
    print(f"  server start to initialized: {started * 1e3:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    asyncio.run(bench(ap.parse_args().n))


if __name__ == "__main__":
    main()
