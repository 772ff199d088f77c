"""The kernel's declared services: objects it owns beside its process table and models (the
memory filesystem, the embedder), each opened on first use and closed at shutdown.

A service is named by the function that opens it, `open(kernel) -> T`, so a caller asks
`kernel.service(open_memory)` and gets a typed value, and the floor (which cannot name
`MemoryFS`) can still declare the method in `KernelServices`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Services:
    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._open: dict[Callable[..., Any], Any] = {}  # insertion order = opening order
        self._provided: dict[Callable[..., Any], Any] = {}  # the caller's: kept, not closed
        # Re-entrant: opening the memory FS opens the embedder it uses.
        self._lock = threading.RLock()

    def get(self, open: Callable[[Any], T]) -> T:
        with self._lock:
            if open in self._provided:
                return self._provided[open]  # type: ignore[no-any-return]
            if open not in self._open:
                self._open[open] = open(self._owner)
            return self._open[open]  # type: ignore[no-any-return]

    def provide(self, open: Callable[[Any], T], value: T) -> None:
        """Use `value` as the service `open` would make (a test's embedder, say). The caller
        owns it: it outlives a shutdown and is not closed by it."""
        with self._lock:
            self._provided[open] = value

    def opened(self, open: Callable[[Any], Any]) -> bool:
        return open in self._open or open in self._provided

    async def aclose_all(self) -> None:
        """Close, newest first, the opened services that close asynchronously (`aclose`: the
        MCP client's server sessions, owned by tasks on the kernel's loop); `close_all` then
        closes the rest in a worker thread."""
        with self._lock:
            values = [(k, v) for k, v in self._open.items() if callable(getattr(v, "aclose", None))]
            for key, _ in values:
                del self._open[key]
        for _, value in values[::-1]:
            await value.aclose()

    def close_all(self) -> None:
        """Close what was opened, newest first (the memory FS before its embedder); a later
        `get` opens a fresh one, as a kernel restarted after shutdown needs."""
        with self._lock:
            values = list(self._open.values())[::-1]
            self._open.clear()
        for value in values:
            close = getattr(value, "close", None)
            if callable(close):
                close()
