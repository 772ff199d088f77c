"""A misbehaving MCP server for tests/test_mcp_client.py, written with the SDK's low-level
`Server`: `ok` answers, `fails` reports a tool error, `crash` kills the server process mid-call, `hang` never answers, and
`malformed` returns a result that breaks its own declared output schema.

Run as `python tests/mcp_bad_server.py` (a stdio server)."""

from __future__ import annotations

import os
from typing import Any

import anyio
from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
TOOLS = [
    types.Tool(
        name="ok",
        description="echo a word",
        input_schema={"type": "object", "properties": {"word": {"type": "string"}}},
    ),
    types.Tool(name="fails", description="report a tool error", input_schema=OBJECT),
    types.Tool(name="crash", description="exit the server mid-call", input_schema=OBJECT),
    types.Tool(name="hang", description="never answer", input_schema=OBJECT),
    types.Tool(
        name="malformed",
        description="a result against its own output schema",
        input_schema=OBJECT,
        output_schema={
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        },
    ),
]


async def list_tools(ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name == "fails":
        return types.CallToolResult(
            content=[types.TextContent(text="no such\nnote")], is_error=True
        )
    if params.name == "crash":
        os._exit(3)
    if params.name == "hang":
        await anyio.sleep_forever()
    if params.name == "malformed":
        return types.CallToolResult(
            content=[types.TextContent(text="n is a word")], structured_content={"n": "many"}
        )
    return types.CallToolResult(
        content=[types.TextContent(text=f"pid {os.getpid()}: {args.get('word')}")]
    )


async def main() -> None:
    server = Server("bad", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
