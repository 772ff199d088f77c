"""What an agent program sees: `ctx.sys.<name>(...)` syscalls, its args, stdout and
stderr, model, and whether it has been asked to terminate."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from llmos.errors import ProcessKilled

if TYPE_CHECKING:
    from llmos.core.process import Process
    from llmos.kernel.kernel import Kernel


class SysProxy:
    """`ctx.sys.fs.read(path="x")` dispatches syscall "fs.read" with those arguments."""

    __slots__ = ("_ctx", "_name")

    def __init__(self, ctx: Context, name: str = "") -> None:
        self._ctx = ctx
        self._name = name

    def __getattr__(self, part: str) -> SysProxy:
        if part.startswith("_"):
            raise AttributeError(part)
        return SysProxy(self._ctx, f"{self._name}.{part}" if self._name else part)

    async def __call__(self, **kwargs: Any) -> Any:
        return await self._ctx.call(self._name, kwargs)

    def __repr__(self) -> str:
        return f"<syscall {self._name or '*'}>"


class Context:
    def __init__(self, kernel: Kernel, process: Process) -> None:
        self.kernel = kernel
        self.process = process
        self.sys = SysProxy(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def args(self) -> tuple[Any, ...]:
        return self.process.args

    @property
    def model(self) -> str | None:
        return self.process.model

    @property
    def terminating(self) -> bool:
        """Whether the process was sent TERM: it should clean up and return soon."""
        return self.process.terminating

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        """Dispatch a syscall by name (what `ctx.sys.<name>(...)` does).

        A dead process (KILLed while its program still runs, e.g. one that caught the
        cancellation) gets `ProcessKilled` from every syscall: it can no longer act."""
        proc = self.process
        if not proc.alive:
            raise ProcessKilled(f"pid {proc.pid} is dead: {proc.exit_reason or proc.exit_code}")
        proc.syscalls += 1
        limit = proc.budgets.max_syscalls
        if limit is not None and proc.syscalls > limit:
            self.kernel.over_budget(proc, f"max_syscalls {limit}")
            await asyncio.sleep(0)  # the KILL's cancellation lands here
            raise ProcessKilled(f"pid {proc.pid} is dead: {proc.exit_reason}")
        return await self.kernel.syscalls.dispatch(self, name, args)

    def print(self, *parts: Any, sep: str = " ", end: str = "\n") -> None:
        self.process.stdout.write(sep.join(str(p) for p in parts) + end)

    def write(self, text: str) -> None:
        self.process.stdout.write(text)

    def eprint(self, *parts: Any, sep: str = " ", end: str = "\n") -> None:
        """`print` to stderr (diagnostics, kept apart from the program's output)."""
        self.process.stderr.write(sep.join(str(p) for p in parts) + end)

    def write_err(self, text: str) -> None:
        self.process.stderr.write(text)
