"""What every `llmos` command shares: one-line failures, settings, running a program as a
kernel process with its output streamed here, and asking the terminal to approve a syscall."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from llmos.errors import ApprovalDenied, LlmosError

if TYPE_CHECKING:
    from llmos.config import Settings
    from llmos.core.process import Process
    from llmos.kernel.kernel import Kernel

T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear line to stderr and exit with `code` (2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def settings() -> Settings:
    from llmos.config import load_settings

    try:
        return load_settings()
    except LlmosError as exc:
        raise fail(str(exc)) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a kernel error is one line and exit code 2."""
    try:
        return asyncio.run(coro)
    except LlmosError as exc:
        raise fail(str(exc)) from None


async def stream_to_exit(kernel: Kernel, proc: Process) -> int:
    """Copy a process's stdout to ours as it streams; its traceback (if any) to stderr.
    (The kernel's crash line, which ends the stream, puts the report on a line of its own.)"""
    async for chunk in proc.stdout.follow():
        sys.stdout.write(chunk)
        sys.stdout.flush()
    code: int = await kernel.wait(proc.pid)
    if proc.error:
        sys.stderr.write(proc.error)
    return code


def run_streamed(start: Callable[[Kernel], Awaitable[Process]]) -> NoReturn:
    """Boot a kernel, start a process with `start(kernel)`, stream it, and exit with its
    code (`llmos run`, `restart` and `agent`)."""
    from llmos.kernel.kernel import Kernel

    async def go() -> int:
        async with Kernel(settings()) as k:
            return await stream_to_exit(k, await start(k))

    code = run_async(go())
    raise typer.Exit(code if 0 <= code < 256 else 1)


def terminal_approver(hint: str | None = None) -> Any:
    """Ask on the terminal when one is attached. Otherwise `ask` means deny: with no `hint`
    silently (None: the syscall table denies), with one by an `ApprovalDenied` whose message
    names it (`{name}` is the syscall's name), so the user learns how to allow the call."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        if hint is None:
            return None

        async def refuse(ctx: Any, spec: Any, values: dict[str, Any]) -> bool:
            raise ApprovalDenied(
                f"{spec.name} needs approval and there is no terminal to ask; "
                f"run with {hint.format(name=spec.name)} to allow it"
            )

        return refuse

    async def approve(ctx: Any, spec: Any, values: dict[str, Any]) -> bool:
        shown = json.dumps(values, default=str)[:500]
        question = f"pid {ctx.pid} wants {spec.name} {shown} - allow?"
        return bool(await asyncio.to_thread(typer.confirm, question, default=False, err=True))

    return approve
