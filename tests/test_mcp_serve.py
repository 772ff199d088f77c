"""`llmos mcp serve` as an MCP client sees it: a real server process on stdio, driven by the
official SDK's client (the initialize handshake, tools, resources, prompts), with this
test's isolated config and data dir. No model loads and nothing embeds: calc, fs writes
and reads, and template rendering need neither."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

SERVE = [sys.executable, "-m", "llmos", "mcp", "serve"]


@asynccontextmanager
async def serving(tmp_path: Path, *args: str) -> AsyncIterator[Client]:
    """A client connected to a fresh `llmos mcp serve` (initialized); the server's stderr
    is shown when the test fails."""
    params = StdioServerParameters(command=SERVE[0], args=[*SERVE[1:], *args], env=dict(os.environ))
    err = tmp_path / "server-stderr.txt"
    with err.open("w") as errlog:
        try:
            transport = stdio_client(params, errlog=errlog)
            async with Client(transport, mode="legacy", read_timeout_seconds=60) as client:
                yield client
        except BaseException:
            errlog.flush()
            sys.stderr.write(f"--- server stderr:\n{err.read_text()}")
            raise


def audit_rows(data_dir: Path | None = None) -> list[tuple[str, str]]:
    """(syscall, outcome) of every audited call, from the data dir's process table
    (default: the test's, `LLMOS_DATA_DIR`)."""
    db = sqlite3.connect((data_dir or Path(os.environ["LLMOS_DATA_DIR"])) / "kernel.db")
    try:
        return [tuple(r) for r in db.execute("SELECT syscall, outcome FROM audit ORDER BY id")]
    finally:
        db.close()


def text_of(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert len(content) == 1 and content[0].type == "text", content
    return str(content[0].text)


async def test_default_client_gets_safe_tools_and_tool_errors(tmp_path: Path) -> None:
    from llmos.tools.basic import calc

    async with serving(tmp_path) as client:
        assert client.server_info is not None and client.server_info.name == "llmos"
        caps = client.server_capabilities
        assert caps.tools is not None
        assert caps.resources is None and caps.prompts is None  # no fs.read, no prompt.render

        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["calc"].input_schema == calc.__syscall__.schema()
        assert tools["calc"].description == calc.__syscall__.doc
        assert "llm.chat" in tools and "time.now" in tools  # the default grants
        assert "shell.exec" not in tools and "python.exec" not in tools
        assert not any(name.startswith("fs.") for name in tools)

        ok = await client.call_tool("calc", {"expression": "17*23"})
        assert not ok.is_error and json.loads(text_of(ok)) == 391

        bad = await client.call_tool("calc", {"expr": "17*23"})
        assert bad.is_error
        assert "expression" in text_of(bad) and "\n" not in text_of(bad)

        denied = await client.call_tool("shell.exec", {"command": "echo hi"})
        assert denied.is_error and "lacks capability 'shell.exec'" in text_of(denied)

        unknown = await client.call_tool("no.such", {})
        assert unknown.is_error and "unknown syscall" in text_of(unknown)

        again = await client.call_tool("calc", {"expression": "(2+3)**2"})
        assert not again.is_error and json.loads(text_of(again)) == 25

    # Each call was a kernel process's syscall, audited as the REST server's calls are
    # (the server shut its kernel down when stdin closed, flushing the audit log).
    assert audit_rows() == [
        ("calc", "ok"),
        ("calc", "bad_arguments"),
        ("shell.exec", "permission_denied"),
        ("no.such", "unknown_syscall"),
        ("calc", "ok"),
    ]


@pytest.fixture
def notes_client() -> None:
    """A config file naming client `notes`, with python.exec approved but not shell.exec."""
    Path(os.environ["LLMOS_CONFIG"]).write_text(
        'approvals = { "python.exec" = "allow" }\n'
        "[mcp_clients]\n"
        'notes = ["calc", "fs.*", "prompt.render", "shell.exec", "python.exec"]\n'
    )


@pytest.mark.usefixtures("notes_client")
async def test_configured_client_gets_files_and_prompts(tmp_path: Path) -> None:
    async with serving(tmp_path, "--client", "notes") as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"calc", "fs.write", "fs.read", "prompt.render", "python.exec"} <= tools
        assert "llm.chat" not in tools  # a client's grants replace the defaults
        assert "shell.exec" not in tools  # granted, but `ask` with nobody to ask is a refusal

        for path, content in (
            ("/home/notes/todo.txt", "call Ada"),
            ("/etc/prompts/greet.txt", "Say hello to {who} in {lang}."),
            ("/etc/prompts/broken.txt", "a stray } brace"),
        ):
            wrote = await client.call_tool("fs.write", {"path": path, "content": content})
            assert not wrote.is_error, text_of(wrote)

        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"llmos://fs/home/notes/todo.txt", "llmos://fs/etc/prompts/greet.txt"} <= uris
        assert not any(u.startswith("llmos://fs/proc") for u in uris)
        (template,) = (await client.list_resource_templates()).resource_templates
        assert template.uri_template == "llmos://fs{+path}"

        read = await client.read_resource("llmos://fs/home/notes/todo.txt")
        assert [c.text for c in read.contents] == ["call Ada"]  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="no such file"):
            await client.read_resource("llmos://fs/home/notes/missing.txt")

        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert [a.name for a in prompts["greet"].arguments or []] == ["who", "lang"]
        assert [a.name for a in prompts["summarize"].arguments or []] == ["text"]  # shipped
        assert "broken" not in prompts  # not a template prompt.render could render
        got = await client.get_prompt("greet", {"who": "Ada", "lang": "French"})
        assert [m.content.text for m in got.messages] == ["Say hello to Ada in French."]  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="'lang'"):
            await client.get_prompt("greet", {"who": "Ada"})

    assert ("fs.write", "ok") in audit_rows() and ("prompt.render", "ok") in audit_rows()


async def test_a_scoped_read_grant_lists_the_files_under_it(scripted_kernel: Any) -> None:
    """In process, below the protocol: a client granted only its own home lists the files
    there, walking from that home (it may not list `/`), and reads nothing outside it."""
    from llmos.kernel.oneshot import run_syscall
    from llmos.mcp.server import McpFront

    grants = frozenset({"fs.read:/home/self/**", "fs.write:/home/self/**"})
    front = McpFront(scripted_kernel, grants, "mcp-notes")
    wrote = await front.call("fs.write", {"path": "/home/mcp-notes/todo.txt", "content": "hi"})
    assert not wrote.is_error, wrote
    await run_syscall(scripted_kernel, "fs.write", {"path": "/tmp/other.txt", "content": "x"})

    assert [f["path"] for f in await front.files()] == ["/home/mcp-notes/todo.txt"]
    read = await front.read("llmos://fs/home/mcp-notes/todo.txt")
    assert [c.text for c in read.contents] == ["hi"]  # type: ignore[union-attr]
    with pytest.raises(MCPError, match=r"may not fs\.read /tmp/other\.txt"):
        await front.read("llmos://fs/tmp/other.txt")


def test_stdout_carries_only_the_protocol_and_eof_ends_the_server() -> None:
    """Raw JSON-RPC over pipes: every line on stdout is a protocol message, and closing
    stdin ends the server with exit code 0."""
    proc = subprocess.Popen(
        SERVE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None

    def send(message: dict[str, object]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        proc.stdin.flush()

    try:
        send({"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        }})  # fmt: skip
        assert json.loads(proc.stdout.readline())["result"]["serverInfo"]["name"] == "llmos"
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/call", "params": {"name": "calc", "arguments": {"expression": "6*7"}}})  # fmt: skip
        reply = json.loads(proc.stdout.readline())
        assert reply["id"] == 2 and reply["result"]["content"][0]["text"] == "42"
        proc.stdin.close()
        rest, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
        assert proc.wait(timeout=30) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rest == ""  # nothing after the last reply: no banner, no log line


def test_unknown_client_is_one_line_and_exit_2() -> None:
    r = subprocess.run(
        [*SERVE, "--client", "nobody"], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith("error: unknown MCP client 'nobody'") and r.stderr.count("\n") == 1
