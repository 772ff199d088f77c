"""`llmos mcp ...`: llmos and the Model Context Protocol. `serve` offers a kernel's
syscalls, memory files and prompt templates to an MCP client over stdio (docs/MCP.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmos.cli.common import run_async, settings

mcp_app = typer.Typer(
    help="llmos and the Model Context Protocol: serve llmos to MCP clients.",
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


def register(app: typer.Typer) -> None:
    app.add_typer(mcp_app, name="mcp")
