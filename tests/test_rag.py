"""Prompt templates from /etc/prompts, RetrievalQA through qa.ask, scripted and real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmos.agents.rag import rag_program
from llmos.config import load_settings
from llmos.kernel.kernel import Kernel
from llmos.kernel.scripted import ScriptedBackend
from llmos.memory import prompts
from llmos.memory import syscalls as memsys
from llmos.memory.fs import MemoryFS
from llmos.memory.index import Embedder

DOC = (
    "Ship's log of the Albatross.\n\nThe ship's cat is named Biscuit. Biscuit sleeps in "
    "the map room and catches mice in the galley.\n\nThe captain is Ada Moreno."
)


def test_templates_shipped_editable_and_strict(tmp_path: Path) -> None:
    fs = MemoryFS(tmp_path)
    written = prompts.install_defaults(fs)
    assert {p.rsplit("/", 1)[1] for p in written} == {
        f"{n}.txt" for n in ("system", "rag", "summarize", "writing", "dialogue")
    }
    fs.write("/etc/prompts/system.txt", "You are {name}, a pirate.")
    assert prompts.install_defaults(fs) == []  # an edit is never overwritten
    assert prompts.render(prompts.load(fs, "system"), name="Ada") == "You are Ada, a pirate."
    with pytest.raises(prompts.MissingVariable, match=r"'style', 'topic'"):
        prompts.render(prompts.load(fs, "writing"), kind="a poem")


def _doc_host(tmp_path: Path) -> Path:
    host = tmp_path / "docs"
    host.mkdir()
    (host / "log.md").write_text(DOC)
    (host / "weather.md").write_text("Weather: the monsoon brings heavy rain in July.")
    return host


async def test_qa_ask_scripted_sees_context_and_cites(
    tmp_path: Path, hash_embedder: Embedder
) -> None:
    seen: list[str] = []

    def responder(conversation: str) -> str:
        seen.append(conversation)
        return "Biscuit"

    settings = load_settings(data_dir=tmp_path / "data")
    kernel = Kernel(
        settings,
        backend_factory=lambda entry, progress: ScriptedBackend(responder=responder),
        syscall_modules=[memsys],
        embedder=hash_embedder,
    )
    async with kernel as k:
        fs = k.memory
        fs.mount(_doc_host(tmp_path), "docs")
        prompts.install_defaults(fs)
        fs.write("/etc/prompts/rag.txt", "CUSTOM {context}\nQ: {question}\nA:")
        out: dict[str, Any] = {}

        async def prog(ctx: Any) -> int:
            out.update(
                await ctx.sys.qa.ask(question="What is the cat called?", scope="/mnt/docs", k=1)
            )
            return 0

        p = await k.spawn(prog, name="asker", caps=["qa.ask", "fs.read:/mnt/**"])
        assert await k.wait(p.pid) == 0, p.error
        assert out == {"answer": "Biscuit", "sources": ["/mnt/docs/log.md"]}
        assert "CUSTOM" in seen[0] and "The ship's cat is named Biscuit" in seen[0]

        p2 = await k.spawn(prog, name="nosy", caps=["qa.ask", "fs.read:/home/self/**"])
        assert await k.wait(p2.pid) != 0  # no grant for /mnt: refused before retrieval


async def test_rag_agent_real_model_answers_from_document(
    tmp_path: Path, minilm: Embedder, real_model_path: Path
) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    async with Kernel(settings, syscall_modules=[memsys], embedder=minilm) as k:
        fs = k.memory
        fs.mount(_doc_host(tmp_path), "docs")
        p = await k.spawn(
            rag_program,
            "What is the name of the ship's cat?",
            "/mnt/docs",
            2,
            name="rag",
            caps=["qa.ask", "fs.read:/mnt/**"],
        )
        assert await k.wait(p.pid) == 0, p.error
        text = p.stdout.getvalue() if hasattr(p.stdout, "getvalue") else str(p.stdout)
        assert "biscuit" in text.lower(), text
        assert "sources: /mnt/docs/log.md" in text
