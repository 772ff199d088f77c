"""What an agent program sees: `ctx.sys.<name>(...)` syscalls, its args, stdout and
stderr, model, and whether it has been asked to terminate; and `KernelServices`, what a
syscall handler or a program may ask of the kernel (a Protocol, so providers and programs
depend on this floor and never on the kernel that hosts them)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from llmos.config import Settings
from llmos.core.process import Budgets, Process, Program, Signal
from llmos.core.sampling import SamplingParams
from llmos.core.syscall import SyscallTable
from llmos.errors import ProcessKilled

T = TypeVar("T")
Message = dict[str, Any]


class EngineView(Protocol):
    """A loaded model as handlers see it."""

    @property
    def name(self) -> str: ...

    @property
    def seq_ctx_max(self) -> int: ...

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...


class GenerationView(Protocol):
    """A generation under way: its text so far, why it ended, and its figures."""

    text: str
    reason: str | None
    stats: Any

    async def result(self) -> str: ...


class KernelServices(Protocol):
    """What handlers and programs may ask of the kernel."""

    @property
    def settings(self) -> Settings: ...

    @property
    def syscalls(self) -> SyscallTable: ...

    @property
    def programs(self) -> Mapping[str, Program]: ...

    @property
    def procs(self) -> Mapping[int, Process]: ...

    def service(self, open: Callable[[KernelServices], T]) -> T:
        """The kernel's one instance of a declared service (the memory FS, the embedder),
        opened by `open` on first use and closed at shutdown."""
        ...

    def get(self, pid: int) -> Process: ...

    async def wait(self, pid: int) -> int: ...

    def signal(self, pid: int, sig: Signal | str | int, *, reason: str | None = None) -> None: ...

    def over_budget(self, proc: Process, what: str) -> None: ...

    def ps(self) -> list[dict[str, Any]]: ...

    async def spawn(
        self,
        program: Program | str,
        *args: Any,
        name: str | None = None,
        caps: Iterable[str] | None = None,
        nice: int = 0,
        model: str | None = None,
        parent: int | None = None,
        budgets: Budgets | dict[str, Any] | None = None,
    ) -> Process: ...

    async def engine(self, model: str | None = None) -> EngineView: ...

    async def render_chat(
        self, messages: list[Message], model: str | None = None, *, chat_format: str | None = None
    ) -> list[int] | list[Message]: ...  # a remote model's messages go as they are

    async def generate(
        self,
        proc: Process,
        prompt: str | list[int] | list[Message],
        params: SamplingParams | None = None,
        *,
        model: str | None = None,
        stream: bool = True,
    ) -> GenerationView: ...


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
    def __init__(self, kernel: KernelServices, process: Process) -> None:
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
