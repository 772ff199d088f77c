"""The `chat` program, and helpers the built-in programs share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmos.core.context import Context
from llmos.errors import LlmosError


def options(opts: dict[str, Any] | None) -> dict[str, Any]:
    """A program's generation options, the unset ones left out."""
    return {k: v for k, v in (opts or {}).items() if v is not None}


@contextmanager
def one_line_failure(ctx: Context) -> Iterator[None]:
    """A kernel error ends the program with exit 2, its message the one line callers show."""
    try:
        yield
    except LlmosError as exc:
        ctx.process.result = str(exc)
        raise SystemExit(2) from None


async def chat_program(ctx: Context, prompt: str, opts: dict[str, Any] | None = None) -> Any:
    """Answer one user message with the process's model, streaming to stdout."""
    kwargs = options(opts)
    history = kwargs.pop("history", [])
    with one_line_failure(ctx):
        r = await ctx.sys.llm.chat(
            messages=[*history, {"role": "user", "content": prompt}], **kwargs
        )
    return r.model_dump()
