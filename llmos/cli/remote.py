"""Commands that run or talk to the daemon: `serve`, and `ps`, `kill`, `logs` against a
running `llmos serve` (the URL comes from --url, else the server settings). The `fs` and `qa`
commands, which also work without a daemon, live in `llmos.cli.fs`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from llmos.cli.common import fail
from llmos.errors import LlmosError

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="daemon URL (default: from server_host/server_port)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


@contextmanager
def connect(url: str | None) -> Iterator[Any]:
    """A `Client` for the daemon at `url` (default: the configured one); an unreachable
    daemon or an error it answers becomes one `error:` line and exit code 2."""
    import httpx

    from llmos.client import Client, default_url

    target = url or default_url()
    try:
        with Client(target) as c:
            yield c
    except httpx.TransportError as exc:
        raise fail(
            f"cannot reach the llmos daemon at {target} ({exc}); start it with `llmos serve`"
        ) from None
    except LlmosError as exc:
        message = str(exc)
        if getattr(exc, "code", None) == "approval_denied":
            message += " (the daemon has nobody to ask: its `approvals` setting decides)"
        raise fail(message) from None


def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="address to bind (default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", "-p")] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="bearer token clients must send", envvar="LLMOS_API_KEY"),
    ] = None,
    no_preload: Annotated[
        bool, typer.Option("--no-preload", help="load the model on first use")
    ] = False,
) -> None:
    """Run the kernel as a local daemon with an OpenAI-compatible REST API."""
    from llmos.config import load_settings
    from llmos.errors import UserError

    try:
        overrides = {"api_key": api_key} if api_key else {}
        settings = load_settings(**overrides)
        from llmos.server.run import serve as run_server
        from llmos.server.security import check_bind

        bind = host or settings.server_host
        check_bind(bind, settings.api_key)
        typer.echo(
            f"llmos serving on http://{bind}:{settings.server_port if port is None else port}",
            err=True,
        )
        run_server(settings, host=bind, port=port, preload=not no_preload)
    except UserError as exc:
        raise fail(str(exc)) from None


def ps(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List the daemon's processes."""
    with connect(url) as c:
        procs = c.ps()
    if as_json:
        typer.echo(json.dumps(procs, indent=2))
        return
    typer.echo(f"{'PID':>5}  {'STATE':8}  {'TOKENS':>6}  {'EXIT':>5}  NAME")
    for p in procs:
        code = "" if p["exit_code"] is None else str(p["exit_code"])
        typer.echo(f"{p['pid']:>5}  {p['state']:8}  {p['tokens']:>6}  {code:>5}  {p['name']}")


def kill(
    pid: int,
    signal: Annotated[
        str, typer.Option("--signal", "-s", help="TERM, KILL, STOP or CONT")
    ] = "TERM",
    url: UrlOpt = None,
) -> None:
    """Send a signal to one of the daemon's processes."""
    with connect(url) as c:
        info = c.kill(pid, signal)
    typer.echo(f"{pid}: {info['state']}")


def logs(
    pid: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until it exits")] = False,
    url: UrlOpt = None,
) -> None:
    """Print a daemon process's output."""
    with connect(url) as c:
        if not follow:
            typer.echo(c.logs(pid), nl=False)
            return
        for text in c.follow(pid):
            sys.stdout.write(text)
            sys.stdout.flush()


def register(app: typer.Typer) -> None:
    commands: list[tuple[str, Callable[..., None]]] = [
        ("serve", serve), ("ps", ps), ("kill", kill), ("logs", logs),
    ]  # fmt: skip
    for name, fn in commands:
        app.command(name)(fn)
