"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure the API answers, its own or the kernel's, goes through `error_body`, so an
OpenAI client raises its usual exception class (by status) with our message.
"""

from __future__ import annotations

from typing import Any

from llmos.errors import (
    ApprovalDenied,
    ContextOverflow,
    InvalidGrammar,
    LlmosError,
    ModelNotFound,
    NoSuchProcess,
    PermissionDenied,
    ProcessKilled,
    SyscallError,
    UnknownSyscall,
    UserError,
)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
}


class ApiError(Exception):
    """An error answered to the client with a status, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_llmos(exc: LlmosError) -> ApiError:
    """The HTTP face of a kernel error: who must act decides the status."""
    if isinstance(exc, ContextOverflow):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidGrammar):
        return ApiError(400, str(exc), param="grammar")
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, NoSuchProcess):
        return ApiError(404, str(exc), code="no_such_process")
    if isinstance(exc, ProcessKilled):  # someone sent the request's process KILL: not a fault
        return ApiError(409, str(exc), code="process_killed")
    if isinstance(exc, PermissionDenied | ApprovalDenied):
        return ApiError(403, str(exc), code=getattr(exc, "kind", None))
    if isinstance(exc, UnknownSyscall):
        return ApiError(501, str(exc), code="not_available")
    if isinstance(exc, SyscallError):  # subclasses (e.g. the memory FS's) name their kind
        missing = "not_found" in exc.kind or "no_such" in exc.kind
        return ApiError(404 if missing else 400, str(exc), code=exc.kind)
    if isinstance(exc, UserError):
        return ApiError(400, str(exc))
    return ApiError(500, f"{type(exc).__name__}: {exc}")
