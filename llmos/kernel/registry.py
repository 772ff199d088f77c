"""Syscall providers and programs by name: one registry for the built-ins and plug-ins.

The built-ins are entry points like any plug-in's (the habit of simonw/llm's
`DEFAULT_PLUGINS`), listed here rather than in pyproject so a stale install can't hide a new
one; third-party packages add theirs under the `llmos.tools` and `llmos.programs` groups.
The kernel loads both by name, so it never imports the providers and agents it hosts.

A built-in that fails to load is our bug and raises; a plug-in that fails costs its own
names, with a warning, never the kernel.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from llmos.core.process import Program
from llmos.core.syscall import SyscallSpec, specs_in
from llmos.errors import UserError
from llmos.kernel.loader import load_program

log = logging.getLogger("llmos.registry")
Provider = Callable[[Any], Awaitable[None]]  # (kernel) -> None

TOOLS, PROGRAMS, PROVIDERS = "llmos.tools", "llmos.programs", "llmos.providers"

DEFAULT_TOOLS = tuple(
    md.EntryPoint(name, value, TOOLS)
    for name, value in (
        ("llm", "llmos.syscalls.llm"),
        ("proc", "llmos.syscalls.proc"),
        ("basic", "llmos.tools.basic"),
        ("sandbox", "llmos.tools.sandbox"),
        ("text", "llmos.tools.text"),
        ("memory", "llmos.memory.syscalls"),
        ("eval", "llmos.ops.evalsys"),  # a provider from the ops layer: a name, not an import
    )
)
DEFAULT_PROGRAMS = tuple(
    md.EntryPoint(name, value, PROGRAMS)
    for name, value in (
        ("chat", "llmos.agents.programs:chat_program"),
        ("assistant", "llmos.agents.assistant:assistant_program"),
        ("react", "llmos.agents.react:react_program"),
        ("rag", "llmos.agents.rag:rag_program"),
    )
)
# Providers: `async def provide(kernel) -> None`, awaited at boot, for syscalls known only at
# run time (an MCP server's tools), which they register with `kernel.syscalls.register`.
DEFAULT_PROVIDERS = (md.EntryPoint("mcp", "llmos.mcp.provider:provide", PROVIDERS),)
# Program references persisted by earlier versions, for `restart` of their lost processes.
LEGACY_REFS = {"llmos.agents.programs:rag_program": "llmos.agents.rag:rag_program"}


def _plugins(group: str) -> Iterator[tuple[str, Any]]:
    # Looked up at call time, through the module, so tests can patch md.entry_points.
    for ep in md.entry_points(group=group):
        name = str(getattr(ep, "name", ep))
        try:
            yield name, ep.load()
        except Exception as exc:
            log.warning(
                "%s plug-in %s failed to load: %s: %s", group, name, type(exc).__name__, exc
            )


def load_tools(extra: Iterable[Any] = ()) -> list[tuple[SyscallSpec, bool]]:
    """Every syscall spec to register, each with whether it came from a plug-in."""
    builtin = [ep.load() for ep in DEFAULT_TOOLS]
    out = [(spec, False) for spec in specs_in([*builtin, *extra])]
    for _, obj in _plugins(TOOLS):
        out.extend((spec, True) for spec in specs_in([obj]))
    return out


def load_programs() -> dict[str, Program]:
    """Programs every kernel knows by name (what `proc.spawn(program=...)` may start)."""
    progs: dict[str, Program] = {ep.name: ep.load() for ep in DEFAULT_PROGRAMS}
    for name, obj in _plugins(PROGRAMS):
        if name in progs:
            log.warning("program plug-in %s: a built-in has that name; kept the built-in", name)
        elif not inspect.iscoroutinefunction(obj):
            log.warning("program plug-in %s is not an async function; skipped", name)
        else:
            progs[name] = obj
    return progs


def load_providers() -> list[tuple[Provider, bool]]:
    """The boot-time syscall providers, each with whether it came from a plug-in."""
    out: list[tuple[Provider, bool]] = [(ep.load(), False) for ep in DEFAULT_PROVIDERS]
    for name, obj in _plugins(PROVIDERS):
        if inspect.iscoroutinefunction(obj):
            out.append((obj, True))
        else:
            log.warning("provider plug-in %s is not an async function; skipped", name)
    return out


def program_ref(program: Program) -> str | None:
    """`module:qualname` of a module-level program (what a restart can import again)."""
    mod = getattr(program, "__module__", None)
    qual = getattr(program, "__qualname__", None)
    if not mod or not qual or "<" in qual:
        return None
    path = getattr(program, "__llmos_file__", None)  # a program file (`llmos run FILE`)
    return f"file:{path}:{qual}" if path else f"{mod}:{qual}"


def resolve_program(ref: str | None, named: dict[str, Program]) -> Program:
    """The program a persisted reference names: a named one, a program file, or an import."""
    if not ref or ":" not in ref:
        raise UserError(f"process program {ref!r} cannot be restarted")
    ref = LEGACY_REFS.get(ref, ref)
    for prog in named.values():
        if program_ref(prog) == ref:
            return prog
    if ref.startswith("file:"):
        return load_program(ref.removeprefix("file:").rpartition(":")[0])
    mod, _, qual = ref.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot load program {ref}: {exc}") from None
    return obj  # type: ignore[no-any-return]
