"""llmos: a local LLM-as-an-operating-system runtime.

`import llmos` stays light: nothing here imports llama_cpp, torch or chromadb; the public
names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llmos.errors import (
    ContextOverflow,
    LlmosError,
    ModelError,
    SyscallError,
    UserError,
)

__version__ = "0.1.0"

_LAZY = {
    "Kernel": "llmos.kernel.kernel",
    "Settings": "llmos.config",
    "load_settings": "llmos.config",
    "SamplingParams": "llmos.core.sampling",
    "Signal": "llmos.core.process",
    "ProcessState": "llmos.core.process",
    "syscall": "llmos.core.syscall",
    "Context": "llmos.core.context",
    "load_model": "llmos.sdk",
    "WritingTask": "llmos.sdk",
    "DialogueTask": "llmos.sdk",
}

__all__ = [
    "Context",
    "ContextOverflow",
    "DialogueTask",
    "Kernel",
    "LlmosError",
    "ModelError",
    "ProcessState",
    "SamplingParams",
    "Settings",
    "Signal",
    "SyscallError",
    "UserError",
    "WritingTask",
    "__version__",
    "load_model",
    "load_settings",
    "syscall",
]

if TYPE_CHECKING:
    from llmos.config import Settings, load_settings
    from llmos.core.context import Context
    from llmos.core.process import ProcessState, Signal
    from llmos.core.sampling import SamplingParams
    from llmos.core.syscall import syscall
    from llmos.kernel.kernel import Kernel
    from llmos.sdk import DialogueTask, WritingTask, load_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llmos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
