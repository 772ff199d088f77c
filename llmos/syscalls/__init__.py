"""Syscalls: the table, the decorator, and the built-in set."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

from llmos.core.syscall import SyscallSpec, SyscallTable, capability_allows, specs_in, syscall

__all__ = [
    "SyscallSpec",
    "SyscallTable",
    "builtin_specs",
    "capability_allows",
    "specs_in",
    "syscall",
]

log = logging.getLogger("llmos.syscalls")

# Modules whose @syscall functions every kernel registers.
BUILTIN_MODULES = (
    "llmos.syscalls.llm",
    "llmos.syscalls.proc",
    "llmos.tools.basic",
    "llmos.tools.sandbox",
    "llmos.tools.text",
    "llmos.memory.syscalls",
)


def builtin_specs(extra: Iterable[Any] | None = None) -> list[SyscallSpec]:
    modules: list[Any] = [importlib.import_module(m) for m in BUILTIN_MODULES]
    modules.extend(extra or ())
    from importlib.metadata import entry_points

    for ep in entry_points(group="llmos.tools"):  # third-party tools plug in here
        try:
            modules.append(ep.load())
        except Exception as exc:  # a broken plug-in costs its own tools, not the kernel
            name = getattr(ep, "name", ep)
            log.warning("tool plug-in %s failed to load: %s: %s", name, type(exc).__name__, exc)
    return specs_in(modules)
