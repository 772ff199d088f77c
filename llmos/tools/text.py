"""Text helper syscalls: counting, replacing, slicing text an agent holds."""

from __future__ import annotations

from pydantic import BaseModel

from llmos.core.context import Context
from llmos.core.syscall import syscall


class TextStats(BaseModel):
    chars: int
    words: int
    lines: int


@syscall("text.count")
async def count(ctx: Context, text: str) -> TextStats:
    """Count the characters, words and lines of a text."""
    return TextStats(chars=len(text), words=len(text.split()), lines=len(text.splitlines()))


@syscall("text.replace")
async def replace(ctx: Context, text: str, old: str, new: str) -> str:
    """Replace every occurrence of `old` in `text` with `new`."""
    return text.replace(old, new) if old else text


@syscall("text.upper")
async def upper(ctx: Context, text: str) -> str:
    """The text in upper case."""
    return text.upper()
