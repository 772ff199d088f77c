"""MCP servers as syscalls (llmos as an MCP client), against real stdio servers: the
third-party reference server `mcp-server-time` (`python -m mcp_server_time`) and a
misbehaving one written with the SDK (tests/mcp_bad_server.py). No model loads: the calls
are `run_syscall`s, as a REST request or `llmos mcp serve` makes them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.config import McpServer, load_settings
from llmos.core.syscall import schema_spec
from llmos.errors import ApprovalDenied, BadArguments, PermissionDenied, ToolFailed, ToolTimeout
from llmos.kernel.kernel import Kernel
from llmos.kernel.oneshot import run_syscall
from tests.conftest import one_line_error, scripted_factory

TIME = [sys.executable, "-m", "mcp_server_time"]
BAD = [sys.executable, str(Path(__file__).with_name("mcp_bad_server.py"))]
runner = CliRunner()


@pytest.fixture
async def kernel(tmp_path: Path) -> AsyncIterator[Kernel]:
    """A kernel with three servers: time (its tools allowed, but convert_time asks), the
    same server with the default approval (ask), and the bad one (2 s timeout)."""
    servers = {
        "time": McpServer(command=TIME, approval="allow", tools={"convert_time": "ask"}),
        "asktime": McpServer(command=TIME),
        "bad": McpServer(command=BAD, approval="allow", timeout_s=2),
    }
    settings = load_settings(data_dir=tmp_path / "data", mcp_servers=servers)
    async with Kernel(settings, backend_factory=scripted_factory()) as k:
        yield k


async def test_a_servers_tools_are_syscalls_with_capabilities_and_approval(kernel: Kernel) -> None:
    names = [n for n in kernel.syscalls.names() if n.startswith("mcp.")]
    assert {"mcp.time.get_current_time", "mcp.time.convert_time"} <= set(names)
    assert {"mcp.asktime.get_current_time", "mcp.bad.hang"} <= set(names)
    spec = kernel.syscalls.get("mcp.time.get_current_time")
    assert spec.capability == "mcp.time.get_current_time"
    assert spec.schema()["required"] == ["timezone"]  # the tool's own JSON schema
    assert spec.signature() == "mcp.time.get_current_time(timezone: string)"

    got = await run_syscall(
        kernel, "mcp.time.get_current_time", {"timezone": "UTC"}, caps=["mcp.time.*"]
    )
    assert got["timezone"] == "UTC" and got["datetime"].endswith("+00:00")

    with pytest.raises(PermissionDenied, match=r"mcp\.time\.get_current_time"):
        await run_syscall(kernel, "mcp.time.get_current_time", {"timezone": "UTC"}, caps=["calc"])
    with pytest.raises(BadArguments, match="'timezone' is a required property"):
        await run_syscall(kernel, "mcp.time.get_current_time", {}, caps=["mcp.*"])
    with pytest.raises(BadArguments, match="timezone: 3 is not of type 'string'"):
        await run_syscall(kernel, "mcp.time.get_current_time", {"timezone": 3}, caps=["mcp.*"])
    # approval `ask` (the default, or one tool's override) with nobody to ask: denied
    with pytest.raises(ApprovalDenied):
        await run_syscall(
            kernel, "mcp.asktime.get_current_time", {"timezone": "UTC"}, caps=["mcp.*"]
        )
    args = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    with pytest.raises(ApprovalDenied):
        await run_syscall(kernel, "mcp.time.convert_time", args, caps=["mcp.*"])


async def test_an_approver_is_asked_for_an_ask_tool(kernel: Kernel) -> None:
    asked: list[str] = []

    async def approve(ctx: Any, spec: Any, values: dict[str, Any]) -> bool:
        asked.append(spec.name)
        return True

    kernel.syscalls.approver = approve
    got = await run_syscall(
        kernel, "mcp.asktime.get_current_time", {"timezone": "UTC"}, caps=["mcp.asktime.*"]
    )
    assert got["timezone"] == "UTC" and asked == ["mcp.asktime.get_current_time"]


async def test_a_misbehaving_server_costs_calls_never_the_kernel(kernel: Kernel) -> None:
    caps = ["mcp.bad.*"]
    first = await run_syscall(kernel, "mcp.bad.ok", {"word": "a"}, caps=caps)

    with pytest.raises(ToolFailed, match=r"^mcp\.bad\.fails: no such note$"):
        await run_syscall(kernel, "mcp.bad.fails", {}, caps=caps)
    with pytest.raises(ToolFailed, match=r"'bad' crashed during mcp\.bad\.crash.*restarted"):
        await run_syscall(kernel, "mcp.bad.crash", {}, caps=caps)
    after = await run_syscall(kernel, "mcp.bad.ok", {"word": "b"}, caps=caps)
    assert after.endswith(": b") and after.split(":")[0] != first.split(":")[0]  # a new pid

    t0 = time.monotonic()
    with pytest.raises(ToolTimeout, match=r"mcp\.bad\.hang did not answer within 2 s"):
        await run_syscall(kernel, "mcp.bad.hang", {}, caps=caps)
    assert 1.9 < time.monotonic() - t0 < 5

    with pytest.raises(ToolFailed, match="malformed result") as info:
        await run_syscall(kernel, "mcp.bad.malformed", {}, caps=caps)
    assert "\n" not in str(info.value)

    assert (await run_syscall(kernel, "mcp.bad.ok", {"word": "c"}, caps=caps)).endswith(": c")
    assert await run_syscall(kernel, "calc", {"expression": "6*7"}) == 42
    outcomes = [
        r["outcome"] for r in kernel.proctable.audit_rows() if r["syscall"].startswith("mcp.bad")
    ]  # type: ignore[union-attr]
    assert outcomes == [
        "ok",
        "tool_failed",
        "tool_failed",
        "ok",
        "tool_timeout",
        "tool_failed",
        "ok",
    ]


async def test_the_react_agent_sees_them_as_tools(kernel: Kernel) -> None:
    from llmos.agents.react import action_schema, permitted_tools

    specs = permitted_tools(kernel.syscalls, frozenset({"mcp.time.*", "calc"}))
    assert [s.name for s in specs] == ["calc", "mcp.time.convert_time", "mcp.time.get_current_time"]
    schema = action_schema(specs)
    variant = next(
        v
        for v in schema["anyOf"]
        if v["properties"]["action"] == {"const": "mcp.time.get_current_time"}
    )
    assert variant["properties"]["args"]["required"] == ["timezone"]
    from llmos.kernel.llama_backend import json_schema_grammar

    assert "mcp.time.get_current_time" in json_schema_grammar(schema)


def test_a_schema_no_grammar_can_express_is_named() -> None:
    from llmos.mcp.client import grammar_problem

    async def handler(ctx: Any, **args: Any) -> None:
        return None

    odd = {"type": "object", "properties": {"x": {"type": "frobnicate"}}}
    spec = schema_spec("mcp.odd.tool", handler, odd, doc="odd")
    problem = grammar_problem(spec)
    assert problem is not None and "cannot become a grammar" in problem


async def test_servers_stop_at_shutdown_and_their_syscalls_go(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", mcp_servers={"t": McpServer(command=TIME)})
    kernel = Kernel(settings, backend_factory=scripted_factory())
    async with kernel:
        assert "mcp.t.get_current_time" in kernel.syscalls.names()
    assert not any(n.startswith("mcp.") for n in kernel.syscalls.names())
    async with kernel:  # booted again: registered again
        assert "mcp.t.get_current_time" in kernel.syscalls.names()


async def test_a_server_that_cannot_start_costs_only_its_tools(tmp_path: Path) -> None:
    servers = {
        "gone": McpServer(command=[str(tmp_path / "no-such-server")]),
        "t": McpServer(command=TIME),
    }
    settings = load_settings(data_dir=tmp_path / "data", mcp_servers=servers)
    async with Kernel(settings, backend_factory=scripted_factory()) as kernel:
        names = kernel.syscalls.names()
        assert "mcp.t.get_current_time" in names
        assert not any(n.startswith("mcp.gone.") for n in names)


# -- the CLI ------------------------------------------------------------------------------
def test_import_a_host_config_and_list(tmp_path: Path) -> None:
    host = tmp_path / "claude_desktop_config.json"
    host.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "time": {"command": TIME[0], "args": TIME[1:], "env": {"TZ": "UTC"}},
                    "remote": {"type": "sse", "url": "https://example.invalid/sse"},
                }
            }
        )
    )
    r = runner.invoke(app, ["mcp", "import", str(host)])
    assert r.exit_code == 0, r.output
    assert "imported time" in r.output and "skipped remote" in r.output
    stored = json.loads((load_settings().data_dir / "mcp.json").read_text())
    assert stored == {"time": {"command": TIME, "env": {"TZ": "UTC"}}}

    r = runner.invoke(app, ["mcp", "list"])
    assert r.exit_code == 0, r.output
    assert "time  running" in r.output
    assert "mcp.time.get_current_time(timezone: string)  [ask]" in r.output

    rows = json.loads(runner.invoke(app, ["mcp", "list", "--json"]).output)
    assert [t["syscall"] for t in rows[0]["tools"]] == [
        "mcp.time.get_current_time",
        "mcp.time.convert_time",
    ]


def test_add_writes_the_server_and_refuses_a_missing_executable(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["mcp", "add", "clock", "--approval", "allow", "--", *TIME, "--local-timezone", "UTC"]
    )
    assert r.exit_code == 0, r.output
    stored = json.loads((load_settings().data_dir / "mcp.json").read_text())
    assert stored["clock"] == {"command": [*TIME, "--local-timezone", "UTC"], "approval": "allow"}

    missing = str(tmp_path / "nowhere" / "server")
    line = one_line_error(runner.invoke(app, ["mcp", "add", "gone", "--", missing]))
    assert "no executable" in line and "'gone'" in line
    assert one_line_error(runner.invoke(app, ["mcp", "add", "a.b", "--", *TIME])).startswith(
        "error: bad MCP server name 'a.b'"
    )
