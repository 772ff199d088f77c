"""Kernel errors as HTTP statuses: who must act decides the status."""

from __future__ import annotations

import pytest

from llmos.errors import (
    BadArguments,
    ContextOverflow,
    LlmosError,
    ModelNotFound,
    NoSuchProcess,
    PermissionDenied,
    ProcessKilled,
    UnknownSyscall,
    UserError,
)
from llmos.server.errors import from_llmos


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ContextOverflow("too long"), 400, "context_length_exceeded"),
        (ModelNotFound("no such model"), 404, "model_not_found"),
        (NoSuchProcess("no pid 9"), 404, "no_such_process"),
        (ProcessKilled("pid 9 is dead: killed"), 409, "process_killed"),
        (PermissionDenied("lacks eval"), 403, "permission_denied"),
        (UnknownSyscall("no eval.x"), 501, "not_available"),
        (BadArguments("ctx must be > 0"), 400, "bad_arguments"),
        (UserError("bad budgets"), 400, None),
        (LlmosError("something broke"), 500, None),
    ],
)
def test_status_by_who_must_act(exc: LlmosError, status: int, code: str | None) -> None:
    err = from_llmos(exc)
    assert (err.status, err.code) == (status, code)
    assert err.body()["error"]["message"].endswith(str(exc))
