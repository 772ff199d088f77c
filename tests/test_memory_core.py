"""MemGPT-style core memory, recall log and summarization past 75% of the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmos.config import load_settings
from llmos.errors import BadArguments, PermissionDenied
from llmos.kernel.kernel import Kernel
from llmos.kernel.scripted import ScriptedBackend
from llmos.memory import syscalls as memsys
from llmos.memory.core import BLOCK_LIMIT, Conversation, core_append, core_read, core_replace
from llmos.memory.fs import MemoryFS


def test_core_blocks_are_private_files(tmp_path: Path) -> None:
    fs = MemoryFS(tmp_path)
    core_append(fs, "ada", "human", "The user's name is Sam.")
    core_append(fs, "ada", "human", "Sam likes tea.")
    core_replace(fs, "ada", "human", "tea", "coffee")
    assert core_read(fs, "ada") == {
        "persona": "",
        "human": "The user's name is Sam.\nSam likes coffee.",
    }
    with pytest.raises(BadArguments, match="unknown core memory block"):
        core_append(fs, "ada", "secrets", "x")
    with pytest.raises(BadArguments, match="exceed"):
        core_append(fs, "ada", "persona", "y" * (BLOCK_LIMIT + 1))
    with pytest.raises(PermissionDenied):
        core_read(fs, "eve") and fs.read("/home/ada/core/human.md", "eve")


async def test_conversation_summarizes_past_three_quarters(tmp_path: Path) -> None:
    fs = MemoryFS(tmp_path)
    core_append(fs, "ada", "persona", "I am Ada, a helpful assistant.")
    conv = Conversation(fs, "ada", window=200, count=lambda s: len(s.split()))
    folded: list[str] = []

    async def summarize(text: str) -> str:
        folded.append(text)
        return f"summary of {text.count(': ')} turns"

    assert await conv.compact(summarize) is False  # nothing to fold yet
    n = 0
    while not conv.over():
        conv.add("user" if n % 2 == 0 else "assistant", f"turn {n} " + "word " * 10)
        n += 1
    assert conv.tokens() > 0.75 * 200
    before = len(conv.turns)
    assert before % 2 == 1  # u, a, ..., u: half would cut between a question and its answer
    cut = before // 2 + 1  # the older half, up to where the next question starts
    assert await conv.compact(summarize)
    assert len(conv.turns) == before - cut and conv.turns[0][0] == "user"
    assert conv.tokens() <= 0.75 * 200
    assert conv.summary() == f"summary of {cut} turns"
    assert f"turn {cut - 1} " in folded[0] and f"turn {cut} " not in folded[0]
    assert "[summary of earlier conversation]" in conv.prompt()
    assert "I am Ada" in conv.prompt()
    log = fs.read("/home/ada/recall/log.md", "ada")
    assert all(f"turn {i} " in log for i in range(n))  # recall keeps every turn on disk


async def test_core_syscalls_edit_the_callers_own_blocks(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    got: dict[str, Any] = {}

    async def prog(ctx: Any) -> int:
        await ctx.sys.memory.core_append(block="human", text="Likes chess.")
        got["core"] = await ctx.sys.memory.core()
        return 0

    kernel = Kernel(
        settings,
        backend_factory=lambda entry, progress: ScriptedBackend(),
        syscall_modules=[memsys],
    )
    async with kernel as k:
        p = await k.spawn(prog, name="ada", caps=["memory.core"])
        assert await k.wait(p.pid) == 0, p.error
        assert got["core"] == {"persona": "", "human": "Likes chess."}
        fs = k.memory
        assert fs.stat("/home/ada").owner == "ada" and fs.stat("/home/ada").mode == 0o700
