"""Loading an agent program file: the one place the CLI, the shell and the server use."""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path

from llmos.core.process import Program
from llmos.errors import UserError


class ProgramError(UserError):
    """A program file that can't be run: unreadable, broken, or without `async def main`."""


class ProgramNotFound(ProgramError):
    pass


def load_program(path: str | Path) -> Program:
    """The `main(ctx, ...)` coroutine function of an agent program file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ProgramNotFound(f"no such program: {p}")
    try:
        ns = runpy.run_path(str(p), run_name="__llmos_program__")
    except Exception as exc:
        raise ProgramError(f"{p}: {type(exc).__name__}: {exc}") from None
    main = ns.get("main")
    if main is None or not asyncio.iscoroutinefunction(main):
        raise ProgramError(f"{p}: a program must define `async def main(ctx, ...)`")
    main.__llmos_file__ = str(p.resolve())  # what a restart loads again (`file:PATH:main`)
    return main  # type: ignore[no-any-return]
