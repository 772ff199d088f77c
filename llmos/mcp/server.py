"""llmos as an MCP server: a booted kernel's syscalls, memory files and prompt templates,
offered to one MCP client (Claude Desktop, Cursor, an agent) over stdio (`serve_stdio`),
or to any number over streamable HTTP at `llmos serve`'s /mcp (`HttpEndpoint`).

    tools      the syscalls the client's grants allow (approval permitting), each with its
               doc and its argument schema; a call is one short kernel process
               (`run_syscall`), so capabilities, approval and audit apply as they do to
               an agent's call or a REST request
    resources  memory-FS files as `llmos://fs/<path>` (needs `fs.read`)
    prompts    the templates `prompt.render` serves from /etc/prompts (needs `prompt.render`)

The client's grants are `mcp_clients[NAME]` for `--client NAME`, else a process's default
grants (`DEFAULT_CAPS`: llm, calc, text, time, sys, proc.ps; no shell, no files). Nobody is
at a terminal to approve anything, so a syscall whose policy is `ask` (every high-risk one
unless `approvals` says otherwise) is neither listed nor run.

Every process of one client bears the name `mcp-NAME` (`mcp` without --client): that is
its identity in the memory FS, so `fs.write:/home/self/**` means `/home/mcp-NAME`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from string import Formatter
from typing import Any, TypeAlias
from urllib.parse import quote, unquote

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from llmos import __version__
from llmos.config import Settings
from llmos.core.syscall import SyscallSpec, capability_allows
from llmos.errors import LlmosError, PermissionDenied, UserError
from llmos.kernel.kernel import DEFAULT_CAPS, Kernel
from llmos.kernel.oneshot import jsonable, run_syscall
from llmos.memory.prompts import DEFAULTS as DEFAULT_PROMPTS
from llmos.memory.prompts import PROMPT_DIR

URI_PREFIX = "llmos://fs"
MAX_RESOURCES = 1000  # files listed; any other file is still read by its URI (the template)
Ctx: TypeAlias = ServerRequestContext[Any]
INSTRUCTIONS = (
    "llmos, a local LLM operating system. Tools are llmos syscalls; each call runs as a "
    "short llmos process under this client's capabilities. Resources are files of the "
    "llmos memory filesystem; prompts are its templates in /etc/prompts."
)


def client_caps(settings: Settings, client: str | None) -> frozenset[str]:
    """The grants of MCP client `client` (None: a process's default grants)."""
    if client is None:
        return DEFAULT_CAPS
    if client not in settings.mcp_clients:
        known = ", ".join(sorted(settings.mcp_clients)) or "none configured"
        raise UserError(
            f"unknown MCP client {client!r} (known: {known}); grant it capabilities in the "
            f'config file\'s [mcp_clients] table, e.g. {client} = ["calc", "fs.read"]'
        )
    return frozenset(settings.mcp_clients[client])


def file_uri(path: str) -> str:
    return URI_PREFIX + quote(path)


def uri_path(uri: str) -> str:
    """The memory-FS path a `llmos://fs/...` URI names."""
    rest = uri[len(URI_PREFIX) :] if uri.startswith(URI_PREFIX) else ""
    if not rest.startswith("/"):
        raise MCPError(types.INVALID_PARAMS, f"not a llmos file URI: {uri!r} (llmos://fs/PATH)")
    return unquote(rest)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _variables(template: str) -> list[str] | None:
    """A template's `{name}` variables, in order of first use (f-string syntax, as
    LangChain's PromptTemplate reads it; `{{` is a literal brace); None if it is not a
    valid template (a stray brace), which `prompt.render` could not render either."""
    names: list[str] = []
    try:
        for _, field, _, _ in Formatter().parse(template):
            if field and field not in names:
                names.append(field)
    except ValueError:
        return None
    return names


@dataclass
class McpFront:
    """What one MCP client sees of a kernel: its syscalls, files and templates, each call
    made by a short process with the client's grants."""

    kernel: Kernel
    caps: frozenset[str]
    name: str = "mcp"  # the processes' name: the client's identity in the memory FS

    async def syscall(self, name: str, args: dict[str, Any]) -> Any:
        return await run_syscall(self.kernel, name, args, caps=self.caps, label=self.name)

    def may(self, capability: str) -> bool:
        return capability_allows(self.caps, capability)

    # tools ----------------------------------------------------------------------------
    def offered(self, spec: SyscallSpec) -> bool:
        """Whether a call could succeed: granted, and not refused by approval (`ask` with
        nobody to ask is a refusal)."""
        table = self.kernel.syscalls
        policy = table.policy_for(spec)
        approvable = policy == "allow" or (policy == "ask" and table.approver is not None)
        return self.may(spec.capability) and approvable

    def tools(self) -> list[types.Tool]:
        specs = sorted(self.kernel.syscalls.specs.values(), key=lambda s: s.name)
        return [
            types.Tool(name=s.name, description=s.doc, input_schema=s.schema())
            for s in specs
            if self.offered(s)
        ]

    async def call(self, name: str, args: dict[str, Any]) -> types.CallToolResult:
        """Run the syscall; its error (unknown, bad arguments, denied, failed) is a tool
        error the model can read, never a protocol error."""
        try:
            result = await self.syscall(name, args)
        except LlmosError as exc:
            return types.CallToolResult(
                content=[types.TextContent(text=one_line(exc))], is_error=True
            )
        text = json.dumps(jsonable(result), ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(text=text)])

    # resources ------------------------------------------------------------------------
    def roots(self) -> list[str]:
        """Where a walk of the files starts: `/` for an unscoped read grant, else each
        scoped grant's directory before its first wildcard (`fs.read:/home/self/**`:
        /home/NAME), leaving out those inside another."""
        found: set[str] = set()
        for grant in self.caps:
            cap, _, scope = grant.partition(":")
            if not fnmatchcase("fs.read", cap):
                continue
            if not scope:
                return ["/"]
            head = re.split(r"[*?\[]", scope.replace("/home/self", f"/home/{self.name}"))[0]
            found.add(head.rstrip("/") if head.endswith("/") else head.rpartition("/")[0])
        roots = sorted(r or "/" for r in found)
        return [
            r for r in roots if not any(r != o and r.startswith(o.rstrip("/") + "/") for o in roots)
        ]

    async def files(self) -> list[dict[str, Any]]:
        """Files this client may read, breadth-first from its `roots`, up to MAX_RESOURCES;
        each directory is one `fs.ls` (a directory it may not read is passed over). /proc
        is left out: it changes with every call, and its files are read by URI."""
        out: list[dict[str, Any]] = []
        todo = deque(self.roots())
        while todo and len(out) < MAX_RESOURCES:
            try:
                entries = await self.syscall("fs.ls", {"path": todo.popleft()})
            except LlmosError:
                continue
            for e in entries:
                if e["kind"] == "dir":
                    if e["path"] != "/proc":
                        todo.append(e["path"])
                else:
                    out.append(e)
        return out[:MAX_RESOURCES]

    async def resources(self) -> list[types.Resource]:
        return [
            types.Resource(
                name=f["path"], uri=file_uri(f["path"]), mime_type="text/plain", size=f["size"]
            )
            for f in await self.files()
        ]

    async def read(self, uri: str) -> types.ReadResourceResult:
        try:
            text = await self.syscall("fs.read", {"path": uri_path(uri)})
        except LlmosError as exc:
            raise MCPError(types.INVALID_PARAMS, one_line(exc)) from None
        contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=str(text))
        return types.ReadResourceResult(contents=[contents])

    # prompts --------------------------------------------------------------------------
    async def templates(self) -> dict[str, str]:
        """Template name -> text: the files in /etc/prompts over the shipped defaults
        (`prompt.render` writes those on first use). Empty for a client that may not read
        /etc/prompts, as `prompt.render` could not read them for it either."""
        texts = dict(DEFAULT_PROMPTS)
        try:
            entries = await self.syscall("fs.ls", {"path": PROMPT_DIR})
        except PermissionDenied:
            return {}
        except LlmosError:  # no /etc/prompts yet: the defaults
            entries = []
        for e in entries:
            fname = e["path"].rsplit("/", 1)[-1]
            if e["kind"] != "file" or not fname.endswith(".txt"):
                continue
            try:
                texts[fname[:-4]] = str(await self.syscall("fs.read", {"path": e["path"]}))
            except LlmosError:
                texts.pop(fname[:-4], None)
        return dict(sorted(texts.items()))

    async def prompts(self) -> list[types.Prompt]:
        out = []
        for name, text in (await self.templates()).items():
            variables = _variables(text)
            if variables is not None:
                out.append(
                    types.Prompt(
                        name=name,
                        description=f"the template {PROMPT_DIR}/{name}.txt",
                        arguments=[types.PromptArgument(name=v, required=True) for v in variables],
                    )
                )
        return out

    async def prompt(self, name: str, values: dict[str, str]) -> types.GetPromptResult:
        try:
            text = await self.syscall("prompt.render", {"name": name, "values": values})
        except LlmosError as exc:
            raise MCPError(types.INVALID_PARAMS, one_line(exc)) from None
        message = types.PromptMessage(role="user", content=types.TextContent(text=str(text)))
        return types.GetPromptResult(description=f"{PROMPT_DIR}/{name}.txt", messages=[message])


def build_server(
    kernel: Kernel, caps: Iterable[str] = DEFAULT_CAPS, client: str | None = None
) -> Server[Any]:
    """An MCP server over a booted kernel for one client with grants `caps`. Resources are
    offered only to a client that may read files, prompts only to one that may render them."""
    front = McpFront(kernel, frozenset(caps), "mcp" if client is None else f"mcp-{client}")
    Page = types.PaginatedRequestParams | None

    async def list_tools(ctx: Ctx, params: Page) -> types.ListToolsResult:
        return types.ListToolsResult(tools=front.tools())

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await front.call(params.name, params.arguments or {})

    async def list_resources(ctx: Ctx, params: Page) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=await front.resources())

    async def list_templates(ctx: Ctx, params: Page) -> types.ListResourceTemplatesResult:
        template = types.ResourceTemplate(
            name="memory file",
            uri_template=URI_PREFIX + "{+path}",
            description="a file of the llmos memory filesystem, by its absolute path",
            mime_type="text/plain",
        )
        return types.ListResourceTemplatesResult(resource_templates=[template])

    async def read_resource(
        ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await front.read(params.uri)

    async def list_prompts(ctx: Ctx, params: Page) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=await front.prompts())

    async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        return await front.prompt(params.name, dict(params.arguments or {}))

    files = front.may("fs.read")
    render = front.may("prompt.render")
    return Server(
        "llmos",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources if files else None,
        on_list_resource_templates=list_templates if files else None,
        on_read_resource=read_resource if files else None,
        on_list_prompts=list_prompts if render else None,
        on_get_prompt=get_prompt if render else None,
    )


async def serve_stdio(settings: Settings, client: str | None = None) -> None:
    """Boot a kernel and serve MCP on stdin/stdout until stdin closes.

    The kernel boots inside the stdio transport, which points file descriptor 1 at stderr
    while it serves: stdout carries the protocol only, so a stray print or a child's output
    lands on stderr instead of breaking it."""
    caps = client_caps(settings, client)  # an unknown client fails before any I/O
    async with stdio_server() as (read, write), Kernel(settings) as kernel:
        server = build_server(kernel, caps, client)
        await server.run(read, write, server.create_initialization_options())


class HttpEndpoint:
    """MCP over streamable HTTP for `llmos serve`'s /mcp: an ASGI app with one session
    manager per grant set, chosen per request by `client_of(scope)` (the server's guard
    names the client of an `mcp_keys` key; None: the default client). `run()` must be
    entered for as long as the app serves (the managers' task groups hold the sessions;
    the app's lifespan enters it).

    The daemon's API key authenticates a caller but names no one: its callers get the
    default client's grants (as `llmos mcp serve` without --client); a key of `mcp_keys`
    names a client of `mcp_clients`, whose grants its caller gets. Without an API key
    (loopback only) the Host and Origin headers must be loopback ones, so a web page cannot
    reach the tools through DNS rebinding."""

    def __init__(
        self, kernel: Kernel, settings: Settings, client_of: Callable[[Any], str | None]
    ) -> None:
        loopback = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
        clients: list[str | None] = [None, *sorted(set(settings.mcp_keys.values()))]
        self.managers = {
            c: StreamableHTTPSessionManager(
                build_server(kernel, client_caps(settings, c), c),  # unknown client: fails now
                security_settings=None if settings.api_key else loopback,
                max_request_body_size=settings.server_max_body_bytes,
            )
            for c in clients
        }
        self.client_of = client_of

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for manager in self.managers.values():
                await stack.enter_async_context(manager.run())
            yield

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.managers[self.client_of(scope)].handle_request(scope, receive, send)
