"""One syscall as its own short process: what a person's request (a CLI command, a shell
command, a REST call) becomes, so capabilities, approval and audit apply to it exactly as
they do to an agent's call.

    result = await run_syscall(kernel, "fs.read", {"path": "/etc/motd"})

The syscall's error, if any, is raised to the caller as the typed `SyscallError` it was
(the process itself exits 1 rather than crashing, so its log holds no traceback for it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmos.core.process import Signal
from llmos.errors import LlmosError, ProcessKilled, ToolFailed

if TYPE_CHECKING:
    from llmos.core.process import Process
    from llmos.kernel.kernel import Kernel

# The person asking owns the memory filesystem (root of it), so memory calls get these;
# any other syscall runs with exactly its own capability.
# (qa.ask's own generation is covered by qa.*: it needs no llm.* grant.)
MEMORY_CAPS = frozenset({"fs.*", "qa.*", "memory.*", "prompt.*"})
MEMORY_PREFIXES = ("fs.", "qa.", "memory.", "prompt.")


def caps_for(kernel: Kernel, name: str) -> frozenset[str]:
    """The grants a one-shot process for syscall `name` runs with."""
    spec = kernel.syscalls.get(name)  # UnknownSyscall for a name the kernel lacks
    if name.startswith(MEMORY_PREFIXES):
        return MEMORY_CAPS
    return frozenset({spec.capability})


@dataclass
class _Call:
    name: str
    args: dict[str, Any]
    result: Any = None
    error: LlmosError | None = None


async def _oneshot_program(ctx: Any, call: _Call) -> int:
    try:
        call.result = await ctx.call(call.name, call.args)
    except LlmosError as exc:
        call.error = exc
        return 1
    return 0


async def run_syscall(
    kernel: Kernel,
    name: str,
    args: dict[str, Any] | None = None,
    *,
    caps: Iterable[str] | None = None,
    label: str | None = None,
    on_exit: Callable[[Process], None] | None = None,
) -> Any:
    """Make syscall `name` from a process of its own and return its result.

    `args` set to None are left out (the syscall's default applies). `caps` default to
    `caps_for(kernel, name)`; `label` names the process (default: the syscall's name);
    `on_exit(process)` runs once it has ended (a server keeps a window of them for `ps`).
    If the caller is cancelled, the process is killed with it."""

    grants = caps_for(kernel, name) if caps is None else frozenset(caps)
    call = _Call(name, {k: v for k, v in (args or {}).items() if v is not None})
    proc = await kernel.spawn(_oneshot_program, call, name=label or name, caps=grants)
    try:
        await kernel.wait(proc.pid)
    finally:
        if proc.alive:
            kernel.signal(proc.pid, Signal.KILL, reason="the caller went away")
        if on_exit is not None:
            on_exit(proc)
    if call.error is not None:
        raise call.error
    if proc.error:
        raise ToolFailed(f"{name} crashed: {proc.error.strip().splitlines()[-1]}")
    if proc.exit_code != 0:
        raise ProcessKilled(f"{name} ended: {proc.exit_reason or proc.exit_code}")
    return call.result


def jsonable(value: Any) -> Any:
    """A syscall's result as plain JSON values, as an API returns it: pydantic models
    dumped, containers walked, anything else as its text."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
