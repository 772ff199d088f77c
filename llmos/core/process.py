"""Processes: an agent program running as a kernel-owned asyncio task."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TextIO


class ProcessState(Enum):
    NEW = "new"
    READY = "ready"
    RUNNING = "running"
    BLOCKED = "blocked"  # waiting on a syscall (generation, I/O, a child)
    STOPPED = "stopped"
    ZOMBIE = "zombie"  # ended, exit status not yet collected by its parent
    EXITED = "exited"

    @property
    def alive(self) -> bool:
        return self not in (ProcessState.ZOMBIE, ProcessState.EXITED)


class Signal(Enum):
    TERM = 15  # cooperative cancel
    KILL = 9  # immediate; frees the process's KV sequences
    STOP = 19  # pause: out of every batch, state kept
    CONT = 18

    @classmethod
    def parse(cls, text: str | int | Signal) -> Signal:
        if isinstance(text, Signal):
            return text
        if isinstance(text, int) or str(text).lstrip("-").isdigit():
            return cls(abs(int(text)))
        name = str(text).upper().lstrip("-").removeprefix("SIG")
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown signal {text!r} (TERM, KILL, STOP, CONT)") from None


class OutputStream:
    """A process's stdout or stderr: a bounded ring buffer in memory, the full text in a
    log file on disk, and live subscribers. Writes after `close()` are dropped: a killed
    program may still run until its cancellation lands, and must not reopen its log."""

    def __init__(self, max_chars: int = 1 << 20, log_path: Path | None = None) -> None:
        self.log_path = log_path  # every chunk is appended here too (opened on first write)
        self._log: TextIO | None = None
        self._chunks: deque[str] = deque()
        self._size = 0
        self.max_chars = max_chars
        self._subs: list[asyncio.Queue[str | None]] = []
        self.closed = False

    def write(self, text: str) -> None:
        if not text or self.closed:
            return
        self.write_log(text)
        self._chunks.append(text)
        self._size += len(text)
        while self._size > self.max_chars and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())
        for q in self._subs:
            q.put_nowait(text)

    def write_log(self, text: str) -> None:
        """Append to the on-disk log only (a traceback, a transcript's details)."""
        if self.log_path is None or not text or self.closed:
            return
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("a", encoding="utf-8")
        self._log.write(text)

    def getvalue(self) -> str:
        return "".join(self._chunks)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self.closed = True
        for q in self._subs:
            q.put_nowait(None)

    async def follow(self, *, replay: bool = True) -> AsyncIterator[str]:
        """Yield what was written (from the buffer if `replay`) and what comes, until closed."""
        q: asyncio.Queue[str | None] = asyncio.Queue()
        if replay and self._chunks:
            q.put_nowait(self.getvalue())
        if self.closed:
            q.put_nowait(None)
        self._subs.append(q)
        try:
            while (chunk := await q.get()) is not None:
                yield chunk
        finally:
            self._subs.remove(q)


Program = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Budgets:
    """Limits a process runs under; `None` means unlimited. Going over one kills it."""

    max_tokens: int | None = None  # generated tokens, all generations together
    max_syscalls: int | None = None
    wall_time_s: float | None = None
    max_children: int | None = None

    @classmethod
    def parse(cls, value: Budgets | dict[str, Any] | None) -> Budgets:
        if value is None:
            return cls()
        if isinstance(value, Budgets):
            return value
        unknown = set(value) - {"max_tokens", "max_syscalls", "wall_time_s", "max_children"}
        if unknown:
            raise ValueError(f"unknown budget(s): {', '.join(sorted(unknown))}")
        return cls(**value)


@dataclass(eq=False)
class Process:
    pid: int
    name: str
    program: Program
    program_ref: str | None = None  # module:qualname, for restarting a lost process
    args: tuple[Any, ...] = ()
    parent: int | None = None
    children: list[int] = field(default_factory=list)
    state: ProcessState = ProcessState.NEW
    nice: int = 0
    model: str | None = None
    caps: frozenset[str] = frozenset()
    budgets: Budgets = field(default_factory=Budgets)
    exit_code: int | None = None
    exit_reason: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    stdout: OutputStream = field(default_factory=OutputStream)
    stderr: OutputStream = field(default_factory=OutputStream)  # crashes, kill reasons
    task: asyncio.Task[Any] | None = None
    result: Any = None
    error: str | None = None  # traceback of a crash
    generations: set[tuple[Any, int]] = field(default_factory=set)  # (engine, seq id)
    tokens: int = 0
    syscalls: int = 0
    gen_stats: list[Any] = field(default_factory=list)  # SeqStats of finished generations
    last_model: str | None = None  # the model of its latest generation (the default's name)
    last_route: str | None = None  # how a route chose that model, when one was named
    mailbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    scratch: Path | None = None  # sandboxed tools' working directory, removed at exit
    log_path: Path | None = None  # the full log on disk (stdout's ring buffer is bounded)
    terminating: bool = False  # sent TERM: the program should clean up and return
    term_reason: str | None = None
    # what a long job is doing, set by the program (a training's epoch, step, loss, tok/s):
    # `ps` shows it; its `tok_s`, if any, stands in for a generation's
    status: dict[str, Any] | None = None
    _runnable: asyncio.Event = field(default_factory=asyncio.Event)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._runnable.set()

    async def wait_runnable(self) -> None:
        """Block while STOPPED (a stopped process's syscalls wait for CONT)."""
        if not self._runnable.is_set():
            await self._runnable.wait()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.exit_code is not None
        return self.exit_code

    @property
    def alive(self) -> bool:
        return self.state.alive

    @property
    def message(self) -> str | None:
        """One line saying why the process failed; None while it runs or after exit 0."""
        if self.exit_code in (None, 0):
            return None
        if isinstance(self.result, str) and self.result:
            return self.result
        if self.error:
            return self.error.strip().splitlines()[-1]
        return None

    def info(self) -> dict[str, Any]:
        live = [eng.seqs[sid].stats for eng, sid in list(self.generations) if sid in eng.seqs]
        stats = live or self.gen_stats[-1:]  # the running generation, else the last one
        first = stats[0] if stats else None
        return {
            "pid": self.pid,
            "name": self.name,
            "state": self.state.value,
            "nice": self.nice,
            "model": self.model or self.last_model,  # what it asked for, else what it used
            "served_by": self.last_model,
            "route": self.last_route,
            "parent": self.parent,
            "tokens": self.tokens + sum(s.generated for s in live),
            "tok_s": first.tokens_per_s if first else (self.status or {}).get("tok_s"),
            "wait_s": first.queue_wait if first else None,
            "ttft_s": first.ttft if first else None,
            "swaps": sum(s.swaps for s in self.gen_stats) + sum(s.swaps for s in live),
            "turnaround_s": first.turnaround if first else None,
            "generations": len(self.gen_stats) + len(live),
            "syscalls": self.syscalls,
            "children": list(self.children),
            "exit_code": self.exit_code,
            "exit_reason": self.exit_reason,
            "message": self.message,
            "status": self.status,
            "started": self.started,
            "ended": self.ended,
        }
