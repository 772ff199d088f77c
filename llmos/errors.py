"""Errors, sorted by who must act.

    LlmosError                      root of everything llmos raises on purpose
    ├── UserError                   the caller's mistake: fix the input or the config
    │   ├── ConfigError             a bad setting or config file
    │   ├── ModelError              a model can't be found, read or loaded
    │   │   ├── ModelNotFound
    │   │   ├── InvalidModelFile    not a GGUF, truncated, corrupt
    │   │   └── HubError            a model hub can't give the file: offline, no such or a
    │   │                           gated repo, no GGUF in it, a hash that does not match
    │   ├── NotEnoughSpace          too little free disk for a file about to be written
    │   └── ChatTemplateError       no chat template and no format given
    ├── SyscallError                returned to the calling agent as an observation
    │   ├── UnknownSyscall
    │   ├── BadArguments
    │   ├── PermissionDenied
    │   ├── ApprovalDenied
    │   ├── ToolFailed
    │   │   └── ToolTimeout         a tool cut at its time limit (an MCP server's timeout_s)
    │   └── NothingIndexed          a search or question over a scope with no indexed text
    ├── GenerationError             generation could not go on
    │   └── ContextOverflow         prompt + max_tokens does not fit: never silently truncated
    └── ProcessError
        ├── NoSuchProcess
        └── ProcessKilled           a process ended by a signal or a budget

A syscall error never crashes the kernel: the dispatcher turns it into a typed result the
agent can read (`SyscallError.to_observation`).
"""

from __future__ import annotations

from typing import Any


class LlmosError(Exception):
    """Root of all llmos errors."""


class UserError(LlmosError):
    """The developer's or user's mistake; the message says what to change."""


class ConfigError(UserError):
    pass


class ModelError(UserError):
    pass


class ModelNotFound(ModelError):
    pass


class InvalidModelFile(ModelError):
    pass


class HubError(ModelError):
    """A model hub could not give the file (`llmos models pull`); the message says what to do."""


class NotEnoughSpace(UserError):
    """Too little free disk for a file about to be written; checked before writing it."""


class ChatTemplateError(UserError):
    pass


class SyscallError(LlmosError):
    """An error a syscall returns to its caller (an agent reads it as an observation)."""

    kind = "error"

    def to_observation(self) -> dict[str, Any]:
        return {"ok": False, "error": self.kind, "message": str(self)}


class UnknownSyscall(SyscallError):
    kind = "unknown_syscall"


class BadArguments(SyscallError):
    kind = "bad_arguments"


class PermissionDenied(SyscallError):
    kind = "permission_denied"


class ApprovalDenied(SyscallError):
    kind = "approval_denied"


class ToolFailed(SyscallError):
    kind = "tool_failed"


class ToolTimeout(ToolFailed):
    """A tool that did not answer within its time limit; the call was cut."""

    kind = "tool_timeout"


class NothingIndexed(SyscallError):
    """A semantic search or a question over a scope where no text is indexed: said in one
    line, rather than an empty answer or the vector store's own error."""

    kind = "nothing_indexed"


class GenerationError(LlmosError):
    pass


class ContextOverflow(GenerationError, SyscallError):
    kind = "context_overflow"


class InvalidGrammar(GenerationError, UserError):
    """A GBNF grammar llama.cpp cannot parse: the caller's to mend."""


class ProcessError(LlmosError):
    pass


class NoSuchProcess(ProcessError):
    pass


class ProcessKilled(ProcessError):
    pass
