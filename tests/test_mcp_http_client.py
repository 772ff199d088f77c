"""Streamable HTTP MCP servers as syscalls: another llmos's `/mcp` (a real uvicorn on an
ephemeral loopback port, behind an API key) is the server. No model loads: calc needs none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.config import McpServer, load_settings
from llmos.errors import BadArguments, ToolFailed
from llmos.kernel.kernel import Kernel
from llmos.kernel.oneshot import run_syscall
from llmos.server import BackgroundServer, create_app
from tests.conftest import one_line_error, scripted_factory
from tests.test_mcp_serve import audit_rows

runner = CliRunner()


async def test_an_http_servers_tools_are_syscalls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = load_settings(data_dir=tmp_path / "peer", api_key="sekret")
    monkeypatch.setenv("PEER_KEY", "Bearer sekret")
    server = BackgroundServer(create_app(peer))
    url = server.start()
    servers = {
        "peer": McpServer(
            url=f"{url}/mcp", headers={"Authorization": "$PEER_KEY"}, approval="allow", timeout_s=5
        ),
        "nokey": McpServer(url=f"{url}/mcp", approval="allow", timeout_s=5),
    }
    settings = load_settings(data_dir=tmp_path / "data", mcp_servers=servers)
    try:
        async with Kernel(settings, backend_factory=scripted_factory()) as k:
            names = set(k.syscalls.names())
            assert {"mcp.peer.calc", "mcp.peer.time.now"} <= names
            assert not any(n.startswith("mcp.nokey.") for n in names)  # 401: no tools
            spec = k.syscalls.get("mcp.peer.calc")
            assert spec.signature().startswith("mcp.peer.calc(expression: string")
            got = await run_syscall(k, "mcp.peer.calc", {"expression": "17*23"}, caps=["mcp.*"])
            assert json.loads(got) == 391  # llmos serves text content
            with pytest.raises(BadArguments, match="'expression' is a required property"):
                await run_syscall(k, "mcp.peer.calc", {"expr": "1"}, caps=["mcp.*"])
            # the peer's own refusal comes back as the tool's error
            with pytest.raises(ToolFailed, match="calc"):
                await run_syscall(k, "mcp.peer.calc", {"expression": "1/0"}, caps=["mcp.*"])
            # the server goes away: a call fails with a clear error, the kernel goes on
            server.stop()
            with pytest.raises(ToolFailed, match="peer"):
                await run_syscall(k, "mcp.peer.calc", {"expression": "1+1"}, caps=["mcp.*"])
            assert await run_syscall(k, "calc", {"expression": "1+1"}, caps=["calc"]) == 2
    finally:
        server.stop()
    # the peer audited the calls it served, as from any MCP client
    assert ("calc", "ok") in audit_rows(peer.data_dir)


def test_add_and_import_http_servers(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["mcp", "add", "docs", "--url", "http://127.0.0.1:9/mcp", "-H", "Authorization=$K"]
    )
    assert r.exit_code == 0, r.output
    stored = json.loads((load_settings().data_dir / "mcp.json").read_text())
    assert stored["docs"] == {"url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "$K"}}
    assert "not both" in one_line_error(
        runner.invoke(app, ["mcp", "add", "x", "--url", "http://127.0.0.1:9/mcp", "--", "ls"])
    )
    assert "--url" in one_line_error(runner.invoke(app, ["mcp", "add", "x", "--url", "ftp://a"]))

    host = tmp_path / "mcp.json"
    host.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "web": {"type": "http", "url": "http://127.0.0.1:9/mcp", "headers": {"X": "1"}},
                    "old": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
                }
            }
        )
    )
    r = runner.invoke(app, ["mcp", "import", str(host)])
    assert r.exit_code == 0, r.output
    assert "imported web" in r.output and "skipped old: an SSE server" in r.output
    stored = json.loads((load_settings().data_dir / "mcp.json").read_text())
    assert stored["web"] == {"url": "http://127.0.0.1:9/mcp", "headers": {"X": "1"}}
