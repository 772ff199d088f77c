"""`llmos mcp ...`: llmos and the Model Context Protocol, both ways (docs/MCP.md).

`serve` offers a kernel's syscalls, memory files and prompt templates to an MCP client over
stdio. `add`, `import` and `list` manage third-party MCP servers whose tools the kernel
offers as syscalls `mcp.NAME.TOOL`; they are kept in the data dir's mcp.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmos.cli.common import fail, run_async, settings
from llmos.errors import LlmosError

if TYPE_CHECKING:
    from llmos.config import McpServer

mcp_app = typer.Typer(
    help="llmos and the Model Context Protocol: serve llmos to MCP clients, and use MCP "
    "servers' tools as syscalls.",
    no_args_is_help=True,
)


@mcp_app.command("serve")
def serve(
    client: Annotated[
        str | None,
        typer.Option(
            "--client", metavar="NAME",
            help="the client's name in the mcp_clients setting, which grants its "
            "capabilities (default: a process's default grants)",
        ),
    ] = None,
) -> None:  # fmt: skip
    """Serve llmos over MCP on stdin/stdout until stdin closes (logs go to stderr)."""
    from llmos.mcp.server import serve_stdio

    run_async(serve_stdio(settings(), client))


def _check_command(name: str, command: list[str]) -> None:
    """A command whose executable cannot be found fails now, not at the kernel's boot."""
    exe = command[0]
    found = shutil.which(exe) if os.sep not in exe else (exe if os.access(exe, os.X_OK) else None)
    if found is None:
        raise fail(f"MCP server {name!r}: no executable {exe!r} (give a full path or one on PATH)")


def _store(servers: dict[str, McpServer]) -> Path:
    from llmos.mcp.store import store_servers

    try:
        return store_servers(settings(), servers)
    except LlmosError as exc:
        raise fail(str(exc)) from None


@mcp_app.command("add", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def add(
    name: Annotated[str, typer.Argument(help="the server's name: its tools are mcp.NAME.TOOL")],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="after --: a stdio server's command line", metavar="-- COMMAND..."),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="a Streamable HTTP server's URL (no command)")
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            metavar="KEY=VALUE",
            help="an HTTP header for --url (repeat); VALUE $NAME reads the variable NAME at start",
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="KEY=VALUE", help="an environment variable (repeat)"),
    ] = None,
    approval: Annotated[
        str, typer.Option(help="approval for its tools: ask, allow or deny")
    ] = "ask",
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="seconds a start or call may take")
    ] = 30.0,
) -> None:
    """Add (or replace) an MCP server: a stdio one, `llmos mcp add time -- uvx
    mcp-server-time`, or a Streamable HTTP one, `llmos mcp add docs --url URL`."""
    from pydantic import ValidationError

    from llmos.config import McpServer
    from llmos.mcp.store import check_name

    try:
        check_name(name)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    if bool(command) == (url is not None):
        raise fail("give the server's command after --, or --url, not both")
    pairs = [e.partition("=") for e in env or []]
    heads = [h.partition("=") for h in header or []]
    if any(not k or not sep for k, sep, _ in [*pairs, *heads]):
        raise fail("--env and --header take KEY=VALUE")
    if heads and url is None:
        raise fail("--header is for a --url server")
    if url is not None and not url.startswith(("http://", "https://")):
        raise fail(f"--url must be an http:// or https:// URL, not {url!r}")
    if command:
        _check_command(name, command)
    try:
        server = McpServer.model_validate(
            {"command": command or None, "url": url, "env": {k: v for k, _, v in pairs},
             "headers": {k: v for k, _, v in heads}, "approval": approval, "timeout_s": timeout}
        )  # fmt: skip
    except ValidationError as exc:
        raise fail(f"bad MCP server {name!r}: {exc.errors()[0]['msg']}") from None
    path = _store({name: server})
    typer.echo(f"added MCP server {name} to {path}; its tools are syscalls mcp.{name}.*")


def _from_host_config(name: str, entry: Any) -> McpServer | str:
    """One entry of a Claude Desktop / Cursor `mcpServers` table, or why it is skipped."""
    from llmos.config import McpServer

    if not isinstance(entry, dict):
        return "not an object"
    if "command" not in entry:
        kind = str(entry.get("type") or entry.get("transport") or "http").lower()
        if "url" not in entry:
            return "neither a command nor a url"
        if kind == "sse":
            return "an SSE server: only stdio and Streamable HTTP servers are supported"
        headers = entry.get("headers") or {}
        if not isinstance(entry["url"], str) or not isinstance(headers, dict):
            return "url must be a string and headers an object"
        try:
            return McpServer.model_validate(
                {"url": entry["url"], "headers": {k: str(v) for k, v in headers.items()}}
            )
        except ValueError as exc:
            return f"bad url: {' '.join(str(exc).split())[:200]}"
    args = entry.get("args") or []
    env = entry.get("env") or {}
    if not isinstance(entry["command"], str) or not isinstance(args, list):
        return "command must be a string and args a list"
    if not isinstance(env, dict):
        return "env must be an object"
    command = [entry["command"], *map(str, args)]
    return McpServer.model_validate(
        {"command": command, "env": {k: str(v) for k, v in env.items()}}
    )


@mcp_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="a Claude Desktop or Cursor MCP config file")],
) -> None:
    """Add the servers of a `{"mcpServers": {...}}` file (Claude Desktop, Cursor, llama-server):
    stdio ones (`command`) and Streamable HTTP ones (`url`)."""
    from llmos.mcp.store import NAME

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read {file}: {' '.join(str(exc).split())}") from None
    table = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise fail(f'{file} has no "mcpServers" object')
    found: dict[str, McpServer] = {}
    for name, entry in table.items():
        server = _from_host_config(name, entry)
        if not NAME.fullmatch(name):
            server = "a name of letters, digits, '-' and '_' only is needed"
        if isinstance(server, str):
            typer.echo(f"skipped {name}: {server}", err=True)
        else:
            found[name] = server
    if not found:
        raise fail(f"{file}: no stdio or HTTP MCP server to import")
    path = _store(found)
    typer.echo(f"imported {', '.join(sorted(found))} to {path}")


@mcp_app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the MCP servers, starting each to show its state and tools."""
    from llmos.mcp.client import survey

    rows = run_async(survey(settings()))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no MCP servers (add one: llmos mcp add NAME -- COMMAND ...)")
        return
    for row in rows:
        typer.echo(
            f"{row['name']}  {row['state']}  {' '.join(row['command'] or [row['url'] or ''])}"
        )
        if row.get("error"):
            typer.echo(f"  error: {row['error']}")
        for tool in row["tools"]:
            note = f"  (unusable: {tool['problem']})" if tool["problem"] else ""
            typer.echo(f"  {tool['signature']}  [{tool['approval']}]  {tool['doc']}{note}")


def register(app: typer.Typer) -> None:
    app.add_typer(mcp_app, name="mcp")
