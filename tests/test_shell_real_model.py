"""The shell's `spawn react` and `qa` commands with the real default model (SmolLM2-135M),
the real memory FS and real embeddings: the commands people try first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmos.shell.app import LlmosShell
from tests.test_shell_commands import text, typed, wait_for

pytestmark = pytest.mark.real_model
STEPS = 6000  # a bound for a loaded 2-core machine, not a timing check


async def test_spawn_react_computes_17_times_23(settings: Any, real_model_path: Path) -> None:
    app = LlmosShell(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.model_ready, steps=STEPS)
        await typed(pilot, app, 'spawn react "What is 17*23?"', "react started")
        pid = int(text(app).rsplit("[pid ", 1)[1].split("]")[0])
        app.query_one("#prompt").focus()
        await pilot.press(*f"logs {pid} -f", "enter")
        await wait_for(pilot, lambda: f"[end of pid {pid} log" in text(app), steps=STEPS)
        proc = app.kernel.get(pid)
        assert proc.exit_code == 0, proc.stdout.getvalue()
        log = text(app).split(f"> logs {pid} -f", 1)[1]
        assert "[answer]" in log and "391" in log.split("[answer]", 1)[1], log
        # the number came from the calculator, not from the model's guess
        assert any(s["observation"] == {"ok": True, "result": 391} for s in proc.result["steps"]), (
            proc.result
        )


async def test_qa_answers_from_a_written_doc_and_cites_it(
    settings: Any, real_model_path: Path, minilm: Any
) -> None:
    app = LlmosShell(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.model_ready, steps=STEPS)
        await typed(
            pilot, app,
            'write /home/me/zorblat.md "The zorblat festival is held every year in Tallinn."',
            "wrote /home/me/zorblat.md",
        )  # fmt: skip
        await typed(pilot, app, 'write /home/me/tea.md "Green tea is brewed at 80 C."', "wrote")
        app.query_one("#prompt").focus()
        await pilot.press(*'qa "Where is the zorblat festival held?" --scope /home/me', "enter")
        await wait_for(pilot, lambda: "sources:" in text(app), steps=STEPS)
        out = text(app).split("> qa ", 1)[1]
        answer, sources = out.split("sources:", 1)
        # the doc that answers is cited first (the distractor may follow it)
        assert sources.split()[0] == "/home/me/zorblat.md", sources
        assert answer.split("answer:", 1)[1].strip()  # the model said something
