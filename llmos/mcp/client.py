"""llmos as an MCP client: third-party MCP servers' tools as kernel syscalls `mcp.NAME.TOOL`.

    McpClients      the kernel service (`kernel.service(open_mcp)`) that owns one session
                    per configured server, and stops them all at kernel shutdown
    McpSession      one server (stdio, or Streamable HTTP at a URL): started (connected)
                    on first use, restarted after a crash or a lost connection (on
                    the next call, after a short backoff), each call cut at `timeout_s`
    register_tools  the boot-time provider's work: list each server's tools and register
                    them, with their JSON schemas, capability `mcp.NAME.TOOL` and approval
                    from the server's config (`ask` unless it says otherwise)

A session lives in a task of its own because the SDK's stdio transport (anyio) must be
entered and left by one task, while the kernel boots, calls and shuts down from others.
Every failure is a `SyscallError` the calling agent reads: a server that cannot start or
crashed, or a malformed result, is `ToolFailed`; a call past its time, `ToolTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp import Client, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from llmos import __version__
from llmos.config import McpServer, Settings
from llmos.core.syscall import SyscallSpec, schema_spec
from llmos.errors import GenerationError, SyscallError, ToolFailed, ToolTimeout
from llmos.mcp.store import configured_servers

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

log = logging.getLogger("llmos.mcp")
STOP_GRACE_S = 10.0  # how long a session may take to close its server before it is cancelled


def one_line(exc: BaseException | str) -> str:
    """A message on one line; an exception group's first leaf speaks for it."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, str):
        return " ".join(exc.split())
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def backoff_s(crashes: int) -> float:
    """The wait before restarting a server after `crashes` failures in a row."""
    return min(0.25 * 2 ** max(crashes - 1, 0), 5.0)


class ServerState(enum.Enum):
    STOPPED = "stopped"  # not started yet, or stopped at shutdown
    RUNNING = "running"
    CRASHED = "crashed"  # its connection closed mid-session: restarted on the next call
    FAILED = "failed"  # could not start (no such executable, no handshake in time)


class McpSession:
    """One MCP server, over stdio (its stderr goes to `errlog_path`) or Streamable HTTP,
    connected on first use."""

    def __init__(self, name: str, config: McpServer, errlog_path: Path) -> None:
        self.name = name
        self.config = config
        self.errlog_path = errlog_path
        self.state = ServerState.STOPPED
        self.error: str | None = None  # why it crashed or failed, for `llmos mcp list`
        self.restarts = 0
        self._failures = 0  # in a row: sets the backoff
        self._not_before = 0.0  # time.monotonic() before which it is not started again
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------
    async def client(self) -> Client:
        """The connected client, starting (or restarting) the server if need be."""
        async with self._lock:
            if self._client is not None and self.state is ServerState.RUNNING:
                return self._client
            await self._reap()
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.state in (ServerState.CRASHED, ServerState.FAILED):
                self.restarts += 1
            return await self._start()

    async def _start(self) -> Client:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Client] = loop.create_future()
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._run(ready), name=f"mcp-{self.name}")
        waiters: set[asyncio.Future[Any]] = {ready, self._task}
        done, _ = await asyncio.wait(
            waiters, timeout=self.config.timeout_s, return_when="FIRST_COMPLETED"
        )
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            self._client = ready.result()
            self.state, self.error = ServerState.RUNNING, None
            return self._client
        if not done:
            await self._reap()
            raise self._failed(f"did not start within {self.config.timeout_s:g} s", ToolTimeout)
        exc = ready.exception() if ready.done() and not ready.cancelled() else None
        await self._reap()
        raise self._failed(f"could not start: {one_line(exc or 'it exited')}")

    async def _run(self, ready: asyncio.Future[Client]) -> None:
        info = types.Implementation(name="llmos", version=__version__)
        try:
            self.errlog_path.parent.mkdir(parents=True, exist_ok=True)
            with self.errlog_path.open("a", encoding="utf-8") as errlog:
                async with contextlib.AsyncExitStack() as stack:
                    if self.config.url is not None:  # Streamable HTTP
                        http = await stack.enter_async_context(
                            create_mcp_http_client(headers=self._headers())
                        )
                        transport: Any = streamable_http_client(self.config.url, http_client=http)
                    else:
                        command = self.config.command or []
                        params = StdioServerParameters(
                            command=command[0], args=command[1:], env=dict(self.config.env) or None
                        )
                        transport = stdio_client(params, errlog=errlog)
                    client = await stack.enter_async_context(
                        Client(transport, mode="legacy", client_info=info)
                    )
                    if not ready.done():
                        ready.set_result(client)
                    await self._stop.wait()
        except Exception as exc:  # not BaseException: a cancellation must end the task
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.info("MCP server %s closed: %s", self.name, one_line(exc))

    def _headers(self) -> dict[str, str]:
        """The configured headers, a `$NAME` value read from the environment now (a key
        stays out of the config file); a variable that is not set fails the start."""
        out = {}
        for key, value in self.config.headers.items():
            if value.startswith("$"):
                found = os.environ.get(value[1:])
                if found is None:
                    raise ValueError(f"header {key} needs the environment variable {value[1:]}")
                value = found
            out[key] = value
        return out

    async def _reap(self) -> None:
        """End the session's task (closing the server's pipes; the SDK terminates it)."""
        task, self._task, self._client = self._task, None, None
        if task is None:
            return
        self._stop.set()
        await asyncio.wait({task}, timeout=STOP_GRACE_S)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        async with self._lock:
            await self._reap()
            self.state = ServerState.STOPPED

    def _failed(self, why: str, kind: type[ToolFailed] = ToolFailed) -> ToolFailed:
        self.state, self.error = ServerState.FAILED, why
        self._failures += 1
        self._not_before = time.monotonic() + backoff_s(self._failures)
        return kind(f"MCP server {self.name!r} {why}{self._stderr_tail()}")

    def _crashed(self, during: str, client: Client) -> ToolFailed:
        if client is self._client:  # not a session another call has restarted since
            self.state = ServerState.CRASHED
            self.error = f"crashed during {during}"
            self._client = None
            self._failures += 1
            self._not_before = time.monotonic() + backoff_s(self._failures)
        return ToolFailed(
            f"MCP server {self.name!r} crashed during {during} (its connection closed)"
            f"{self._stderr_tail()}; it is restarted on the next call"
        )

    def _stderr_tail(self) -> str:
        try:
            lines = self.errlog_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return f" (its stderr: {last[:200]})" if last else ""

    # -- requests -----------------------------------------------------------------------
    async def _request(self, what: str, make: Any) -> Any:
        """Run `make(client)` within timeout_s, a closed connection counting as a crash."""
        client = await self.client()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                result = await make(client)
        except TimeoutError:
            raise ToolTimeout(
                f"{what} did not answer within {self.config.timeout_s:g} s (timeout_s); cut"
            ) from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                raise self._crashed(what, client) from None
            raise ToolFailed(f"{what} failed: {one_line(exc)}") from None
        except SyscallError:
            raise
        except Exception as exc:  # the SDK's checks of what the server sent back
            first = (str(exc).strip().splitlines() or [""])[0]  # the SDK's reason, no dump
            raise ToolFailed(
                f"{what} returned a malformed result: {type(exc).__name__}: {first}"
            ) from None
        self._failures = 0
        return result

    async def tools(self) -> list[types.Tool]:
        async def listing(client: Client) -> list[types.Tool]:
            out: list[types.Tool] = []
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                out.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    return out

        result: list[types.Tool] = await self._request(f"MCP server {self.name!r}", listing)
        return result

    async def call(self, tool: str, args: dict[str, Any]) -> Any:
        name = f"mcp.{self.name}.{tool}"
        result = await self._request(name, lambda c: c.call_tool(tool, args))
        if not isinstance(result, types.CallToolResult):
            raise ToolFailed(f"{name} returned a malformed result: {type(result).__name__}")
        return tool_result(name, result)


def tool_result(name: str, result: types.CallToolResult) -> Any:
    """What a call returns to its caller: the structured content when the server gave one,
    else the content as text (non-text parts described in brackets). A tool's own error
    (`isError`) is ToolFailed with its text."""
    parts: list[str] = []
    for c in result.content:
        if isinstance(c, types.TextContent):
            parts.append(c.text)
        elif isinstance(c, types.ImageContent | types.AudioContent):
            parts.append(f"[{c.type} {c.mime_type}, {len(c.data)} base64 characters]")
        elif isinstance(c, types.EmbeddedResource):
            parts.append(str(getattr(c.resource, "text", None) or f"[resource {c.resource.uri}]"))
        elif isinstance(c, types.ResourceLink):
            parts.append(f"[resource {c.uri}]")
        else:
            parts.append(f"[{getattr(c, 'type', type(c).__name__)}]")
    if result.is_error:
        raise ToolFailed(f"{name}: {one_line(chr(10).join(parts)) or 'the tool failed'}")
    if result.structured_content is not None:
        return result.structured_content
    return "\n".join(parts)


class McpClients:
    """The kernel service owning every configured server's session."""

    def __init__(self, settings: Settings, servers: dict[str, McpServer] | None = None) -> None:
        servers = configured_servers(settings) if servers is None else servers
        logs = settings.data_dir / "logs"
        self.sessions = {
            name: McpSession(name, cfg, logs / f"mcp-{name}.err.log")
            for name, cfg in sorted(servers.items())
        }
        self.unusable: dict[str, str] = {}  # syscall name -> why it is not registered
        self._registered: list[str] = []
        self._table: Any = None  # the SyscallTable they are registered in

    def session(self, server: str) -> McpSession:
        return self.sessions[server]

    async def call(self, server: str, tool: str, args: dict[str, Any]) -> Any:
        return await self.sessions[server].call(tool, args)

    async def aclose(self) -> None:
        """Stop every server and take their syscalls out of the table (a kernel started
        again registers them anew)."""
        if self._table is not None:
            for name in self._registered:
                self._table.unregister(name)
                self._table.policy.pop(name, None)
        self._registered.clear()
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))


def open_mcp(kernel: Kernel) -> McpClients:
    return McpClients(kernel.settings)


def tool_spec(clients: McpClients, server: str, tool: types.Tool) -> SyscallSpec:
    name = f"mcp.{server}.{tool.name}"

    async def handler(ctx: Any, **args: Any) -> Any:
        return await clients.call(server, tool.name, args)

    text = tool.description or tool.title or f"tool {tool.name} of MCP server {server}"
    doc = " ".join(text.strip().split("\n\n")[0].split())
    # risk high: a third-party tool's effects are unknown (its approval is set explicitly)
    return schema_spec(name, handler, dict(tool.input_schema), doc=doc, risk="high")


def grammar_problem(spec: SyscallSpec) -> str | None:
    """Why an agent could not call `spec` under a grammar (llama.cpp's JSON-schema converter
    refuses its argument schema), or None."""
    from llmos.agents.react import action_schema
    from llmos.kernel.llama_backend import json_schema_grammar

    try:
        json_schema_grammar(action_schema([spec], finish=False))
    except GenerationError as exc:
        return f"its input schema cannot become a grammar: {one_line(str(exc))}"
    return None


async def register_tools(kernel: Kernel) -> McpClients:
    """Start every configured server (at once, each within its timeout_s), list its tools,
    and register each as syscall `mcp.SERVER.TOOL`, approval as the server's config says. A
    server that fails costs its own tools, with a warning, never the kernel's boot."""
    clients = kernel.service(open_mcp)
    clients._table = kernel.syscalls

    async def listing(session: McpSession) -> list[types.Tool]:
        try:
            return await session.tools()
        except SyscallError as exc:
            log.warning("MCP server %s: %s; its tools are left out", session.name, exc)
            return []

    found = await asyncio.gather(*(listing(s) for s in clients.sessions.values()))
    for session, tools in zip(clients.sessions.values(), found, strict=True):
        for tool in tools:
            spec = tool_spec(clients, session.name, tool)
            problem = grammar_problem(spec)
            if problem is not None:
                clients.unusable[spec.name] = problem
                log.warning("MCP tool %s is left out: %s", spec.name, problem)
                continue
            try:
                kernel.syscalls.register(spec)
            except ValueError as exc:
                clients.unusable[spec.name] = str(exc)
                log.warning("MCP tool %s is left out: %s", spec.name, exc)
                continue
            clients._registered.append(spec.name)
            if spec.name not in kernel.settings.approvals:  # a name's own setting wins
                approval = session.config.tools.get(tool.name, session.config.approval)
                kernel.syscalls.policy[spec.name] = approval
    return clients


async def survey(settings: Settings) -> list[dict[str, Any]]:
    """Each configured server with its state and tools, starting them all (at once) to
    list them and stopping them after: what `llmos mcp list` shows."""
    clients = McpClients(settings)

    async def one(session: McpSession) -> dict[str, Any]:
        cfg = session.config
        row: dict[str, Any] = {
            "name": session.name, "command": cfg.command, "url": cfg.url,
            "approval": cfg.approval, "timeout_s": cfg.timeout_s, "tools": [],
        }  # fmt: skip
        try:
            tools = await session.tools()
        except SyscallError as exc:
            row.update(state=session.state.value, error=str(exc))
            return row
        row["state"] = session.state.value
        for tool in tools:
            spec = tool_spec(clients, session.name, tool)
            row["tools"].append(
                {
                    "syscall": spec.name,
                    "approval": cfg.tools.get(tool.name, cfg.approval),
                    "signature": spec.signature(),
                    "doc": spec.doc,
                    "problem": grammar_problem(spec),
                }
            )
        return row

    try:
        return list(await asyncio.gather(*(one(s) for s in clients.sessions.values())))
    finally:
        await clients.aclose()
