"""An MCP server's tool called as a kernel syscall (llmos as an MCP client), against the
same call made directly with the SDK's own stdio client.

    python benchmarks/bench_mcp_client.py [--n 300]

The server is the reference `mcp-server-time` (`python -m mcp_server_time`); the call is
`get_current_time` with {"timezone": "UTC"}. Three sides, each with a server of its own
started once, taking turns call by call so the machine's drift falls on all of them:

- SDK direct: `Client(stdio_client(...), mode="legacy").call_tool(...)`, as llmos's own
  session makes it, with nothing around it: the baseline.
- syscall in a process: one kernel process calling `mcp.time.get_current_time` in a loop
  (`ctx.call`), each call timed: capability check, argument validation against the tool's
  schema, approval, audit, the session's lock and timeout, the result's unwrapping.
- run_syscall: each call a short process of its own (`run_syscall`, what a REST call, a
  shell command or `llmos mcp serve` makes): the above plus a process spawn and reap.

The kernel gets a fresh data dir, no config file, and the server with approval `allow`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import pct  # the script's folder is on sys.path

SYSCALL = "mcp.time.get_current_time"
ARGS = {"timezone": "UTC"}


def check(got: Any) -> None:
    assert isinstance(got, dict) and got["timezone"] == "UTC", got


async def bench(n: int) -> None:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from llmos.config import McpServer, load_settings
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.oneshot import run_syscall

    command = [sys.executable, "-m", "mcp_server_time"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LLMOS_CONFIG"] = str(Path(tmp) / "absent.toml")  # defaults only
        servers = {"time": McpServer.model_validate({"command": command, "approval": "allow"})}
        settings = load_settings(data_dir=Path(tmp) / "data", mcp_servers=servers)
        params = StdioServerParameters(command=command[0], args=command[1:])
        t0 = time.perf_counter()
        async with Client(stdio_client(params, errlog=sys.stderr), mode="legacy") as client:
            sdk_start = time.perf_counter() - t0
            t0 = time.perf_counter()
            async with Kernel(settings) as kernel:
                boot = time.perf_counter() - t0  # includes starting the server, listing
                times = await measure(kernel, client, run_syscall, n)

    print(f"{SYSCALL} {ARGS}, n={n} each, the sides taking turns call by call")
    for label, xs in times.items():
        print(
            f"  {label:22s} p50 {pct(xs, 0.5) * 1e6:7.0f} us  p90 {pct(xs, 0.9) * 1e6:7.0f} us"
            f"  mean {statistics.fmean(xs) * 1e6:7.0f} us"
        )
    base = times["SDK direct"]
    for label in ("syscall in a process", "run_syscall"):
        xs = times[label]
        d50, d90 = pct(xs, 0.5) - pct(base, 0.5), pct(xs, 0.9) - pct(base, 0.9)
        print(
            f"  overhead of {label}: p50 {d50 * 1e6:+.0f} us ({pct(xs, 0.5) / pct(base, 0.5):.2f}x)"
            f"  p90 {d90 * 1e6:+.0f} us   target: p50 <= 1000 us"
        )
    print(f"  SDK client start to initialized: {sdk_start * 1e3:.0f} ms")
    print(f"  kernel boot with the server (start, initialize, list tools): {boot * 1e3:.0f} ms")


async def measure(
    kernel: Any, client: Any, run_syscall: Callable[..., Awaitable[Any]], n: int
) -> dict[str, list[float]]:
    """Seconds per call of each side, measured inside one kernel process so that its own
    calls are syscalls; the other two sides are awaited from there in turn."""
    caps = [SYSCALL]
    times: dict[str, list[float]] = {
        "SDK direct": [],
        "syscall in a process": [],
        "run_syscall": [],
    }

    async def direct() -> Any:
        r = await client.call_tool("get_current_time", ARGS)
        assert not r.is_error, r
        return r.structured_content

    async def program(ctx: Any) -> int:
        sides: dict[str, Callable[[], Awaitable[Any]]] = {
            "SDK direct": direct,
            "syscall in a process": lambda: ctx.call(SYSCALL, ARGS),
            "run_syscall": lambda: run_syscall(kernel, SYSCALL, ARGS, caps=caps, label="bench"),
        }
        for fn in sides.values():
            check(await fn())
        for _ in range(max(10, n // 10)):  # warm-up
            for fn in sides.values():
                await fn()
        for _ in range(n):
            for label, fn in sides.items():
                t = time.perf_counter()
                await fn()
                times[label].append(time.perf_counter() - t)
        return 0

    proc = await kernel.spawn(program, name="bench-mcp-client", caps=caps)
    code = await kernel.wait(proc.pid)
    if code != 0:
        raise SystemExit(f"the benchmark process ended {code}: {proc.error or proc.exit_reason}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    asyncio.run(bench(ap.parse_args().n))


if __name__ == "__main__":
    main()
