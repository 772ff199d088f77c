"""Process syscalls: spawn, wait, kill, ps, and mailboxes between processes (IPC)."""

from __future__ import annotations

import asyncio
import json
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel

from llmos.core.context import Context
from llmos.core.process import Signal
from llmos.core.syscall import capability_allows, syscall
from llmos.errors import BadArguments, NoSuchProcess, PermissionDenied, ToolFailed


class ExitStatus(BaseModel):
    pid: int
    exit_code: int
    reason: str | None
    result: Any = None


def _own(ctx: Context, pid: int) -> Any:
    """A process the caller may act on: its own child, or any with `admin.proc`."""
    try:
        proc = ctx.kernel.get(pid)
    except NoSuchProcess as exc:
        raise BadArguments(str(exc)) from None
    if proc.parent != ctx.pid and not capability_allows(ctx.process.caps, "admin.proc"):
        raise PermissionDenied(f"process {pid} is not a child of {ctx.pid}")
    return proc


def _grantable(parent: frozenset[str], cap: str) -> bool:
    """A grant is passed on only if one of the parent's grants covers all of it."""
    c, _, res = cap.partition(":")
    for g in parent:
        gc, _, gr = g.partition(":")
        if fnmatchcase(c, gc) and (not gr or (res and fnmatchcase(res, gr))):
            return True
    return False


def _child_name(parent: Any, program: str, name: str | None) -> str:
    """A child's name is its identity in the memory FS (`/home/self`, file owner): only a
    root parent may pick any name; others name children inside their own namespace."""
    if "*" in parent.caps or "fs.*" in parent.caps:
        return name or program
    if name is None:
        return f"{parent.name}.{program}"
    if name == parent.name or name.startswith(f"{parent.name}."):
        return name
    raise PermissionDenied(
        f"proc.spawn: a child of {parent.name!r} must be named {parent.name!r} or "
        f"'{parent.name}.<something>', not {name!r}"
    )


@syscall("proc.spawn")
async def spawn(
    ctx: Context,
    program: str,
    args: list[Any] | None = None,
    caps: list[str] | None = None,
    name: str | None = None,
    max_tokens: int | None = None,
    max_syscalls: int | None = None,
    wall_time_s: float | None = None,
) -> int:
    """Start a named program as a child process; returns its pid. A child gets no
    capability its parent lacks (default: the parent's own)."""
    kernel, me = ctx.kernel, ctx.process
    limit = me.budgets.max_children
    if limit is not None and len(me.children) >= limit:
        kernel.over_budget(me, f"max_children {limit}")
        await asyncio.sleep(0)
    if program not in kernel.programs:
        known = ", ".join(sorted(kernel.programs))
        raise BadArguments(f"proc.spawn: no program {program!r} (known: {known})")
    granted = sorted(me.caps) if caps is None else caps
    for cap in granted:
        if not _grantable(me.caps, cap):
            raise PermissionDenied(f"proc.spawn: cannot grant {cap!r}, the parent lacks it")
    budgets = {
        k: v
        for k, v in (
            ("max_tokens", max_tokens),
            ("max_syscalls", max_syscalls),
            ("wall_time_s", wall_time_s),
        )
        if v is not None
    }
    child = await kernel.spawn(
        kernel.programs[program], *(args or []), name=_child_name(me, program, name),
        caps=granted,
        parent=me.pid, model=me.model, nice=me.nice, budgets=budgets,
    )  # fmt: skip
    return child.pid


@syscall("proc.wait")
async def wait(ctx: Context, pid: int, timeout_s: float | None = None) -> ExitStatus:
    """Wait for a child process to end and reap it; returns its exit status."""
    proc = _own(ctx, pid)
    try:
        async with asyncio.timeout(timeout_s):
            code = await ctx.kernel.wait(pid)
    except TimeoutError:
        raise ToolFailed(f"proc.wait: process {pid} still running after {timeout_s} s") from None
    result = proc.result
    try:
        json.dumps(result)  # an agent reads it: keep only what JSON can carry
    except (TypeError, ValueError):
        result = repr(result)
    return ExitStatus(pid=pid, exit_code=code, reason=proc.exit_reason, result=result)


@syscall("proc.kill")
async def kill(ctx: Context, pid: int, signal: str = "TERM") -> str:
    """Send a signal (TERM, KILL, STOP, CONT) to a child process."""
    _own(ctx, pid)
    try:
        sig = Signal.parse(signal)
    except ValueError as exc:
        raise BadArguments(str(exc)) from None
    ctx.kernel.signal(pid, sig, reason=f"signal {sig.name} from pid {ctx.pid}")
    return f"sent {sig.name} to {pid}"


@syscall("ipc.send", capability="ipc")
async def send(ctx: Context, pid: int, message: Any) -> bool:
    """Put a message in another live process's mailbox."""
    try:
        target = ctx.kernel.get(pid)
    except NoSuchProcess as exc:
        raise BadArguments(str(exc)) from None
    if not target.alive:
        raise BadArguments(f"ipc.send: process {pid} has exited")
    target.mailbox.put_nowait({"from": ctx.pid, "message": message})
    return True


@syscall("ipc.recv", capability="ipc")
async def recv(ctx: Context, timeout_s: float | None = None) -> dict[str, Any]:
    """Take the next message from this process's mailbox, waiting up to `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await ctx.process.mailbox.get()
    except TimeoutError:
        raise ToolFailed(f"ipc.recv: no message within {timeout_s} s") from None


@syscall("proc.ps")
async def ps(ctx: Context) -> list[dict[str, Any]]:
    """List processes: pid, name, state, priority, model, tokens."""
    return ctx.kernel.ps()
