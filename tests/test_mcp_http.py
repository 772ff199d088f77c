"""`llmos serve`'s /mcp as an MCP client sees it: the REST app on a real uvicorn (a thread,
an ephemeral loopback port), driven by the official SDK's streamable-HTTP client. No model
loads: calc needs none."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from llmos.config import Settings, load_settings
from llmos.server import BackgroundServer, create_app
from tests.test_mcp_serve import audit_rows, text_of

INIT = {  # an initialize request, as a client's first POST carries it
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def make_settings(tmp: Path, **kw: Any) -> Settings:
    return load_settings(data_dir=tmp / "data", **kw)


@asynccontextmanager
async def connected(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """An initialized SDK client on `{url}/mcp`."""
    http = create_mcp_http_client(headers=headers)
    async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        yield client


async def test_http_client_gets_default_tools_and_tool_errors(tmp_path: Path) -> None:
    from llmos.tools.basic import calc

    settings = make_settings(tmp_path)
    with BackgroundServer(create_app(settings)) as url:
        async with connected(url) as client:
            assert client.server_info is not None and client.server_info.name == "llmos"
            assert client.server_capabilities.tools is not None
            assert client.server_capabilities.resources is None  # the default grants

            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["calc"].input_schema == calc.__syscall__.schema()
            assert "time.now" in tools
            assert "shell.exec" not in tools and "python.exec" not in tools
            assert not any(name.startswith("fs.") for name in tools)

            ok = await client.call_tool("calc", {"expression": "17*23"})
            assert not ok.is_error and json.loads(text_of(ok)) == 391

            bad = await client.call_tool("calc", {"expr": "17*23"})
            assert bad.is_error and "expression" in text_of(bad)

            denied = await client.call_tool("shell.exec", {"command": "echo hi"})
            assert denied.is_error

    # audited as any other call (the kernel flushed its log when the app shut down)
    assert audit_rows(settings.data_dir) == [
        ("calc", "ok"),
        ("calc", "bad_arguments"),
        ("shell.exec", "permission_denied"),
    ]


async def test_the_api_key_guards_mcp_too(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_key="sekret")
    with BackgroundServer(create_app(settings)) as url:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{url}/mcp", json=INIT, headers=ACCEPT)
            assert r.status_code == 401
            r = await http.post(f"{url}/mcp", json=INIT, headers={**ACCEPT, "Authorization": "x"})
            assert r.status_code == 401

        async with connected(url, {"Authorization": "Bearer sekret"}) as client:
            ok = await client.call_tool("calc", {"expression": "2+2"})
            assert json.loads(text_of(ok)) == 4


def test_without_a_key_only_loopback_hosts_reach_mcp(tmp_path: Path) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own Host."""
    settings = make_settings(tmp_path)
    with BackgroundServer(create_app(settings)) as url:
        headers = {**ACCEPT, "Host": "evil.example"}
        r = httpx.post(f"{url}/mcp", json=INIT, headers=headers, timeout=30)
        assert r.status_code in (403, 421), r.text
        headers["Host"] = url.removeprefix("http://")
        with httpx.stream("POST", f"{url}/mcp", json=INIT, headers=headers, timeout=30) as r:
            assert r.status_code == 200


async def test_an_mcp_key_names_a_client_and_opens_mcp_only(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        api_key="sekret",
        mcp_clients={"reader": ["calc", "fs.read", "fs.ls"]},
        mcp_keys={"reader-key": "reader"},
    )
    with BackgroundServer(create_app(settings)) as url:
        async with connected(url, {"Authorization": "Bearer reader-key"}) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"calc", "fs.read", "fs.ls"} <= tools and "time.now" not in tools
            assert client.server_capabilities.resources is not None  # it may read files
            denied = await client.call_tool("time.now", {})
            assert denied.is_error
        async with connected(url, {"Authorization": "Bearer sekret"}) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "time.now" in tools and "fs.read" not in tools  # the default grants
        async with httpx.AsyncClient(timeout=30) as http:  # the MCP key opens /mcp alone
            r = await http.get(
                f"{url}/v1/processes", headers={"Authorization": "Bearer reader-key"}
            )
            assert r.status_code == 401


def test_an_mcp_key_for_an_unknown_client_fails_at_startup(tmp_path: Path) -> None:
    import pytest

    from llmos.errors import UserError

    settings = make_settings(tmp_path, mcp_keys={"k": "nobody"})
    with pytest.raises(UserError, match="unknown MCP client 'nobody'"):
        create_app(settings)
