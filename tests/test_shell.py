"""Pilot tests of the Textual shell: a real app, typed into, read off its log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from llmos.kernel.kernel import Kernel
from llmos.shell.app import LlmosShell
from tests.conftest import scripted_factory


async def wait_for(pilot: Any, cond: Callable[[], bool], steps: int = 600) -> None:
    for _ in range(steps):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not met in time")


def screen_text(app: LlmosShell) -> str:
    return "\n".join(app.out.lines)


async def test_question_gets_a_streamed_answer(settings: Any) -> None:
    kernel = Kernel(settings, backend_factory=scripted_factory())
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.model_ready)
        await pilot.click("#prompt")
        await pilot.press(*"hello shell")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "You said: hello shell" in screen_text(app))
        await wait_for(pilot, lambda: app.current_pid is None)  # the chat process has exited
        await pilot.press(*"ps", "enter")
        await wait_for(
            pilot, lambda: "assistant" in screen_text(app) and "exited" in screen_text(app)
        )
        await pilot.press(*"help", "enter")
        await wait_for(pilot, lambda: "Ctrl+C stops" in screen_text(app))
    await kernel.shutdown()


async def test_ctrl_c_stops_the_answer_not_the_app(settings: Any) -> None:
    kernel = Kernel(
        settings,
        backend_factory=scripted_factory(
            responder=lambda c: "word " * 3000, on_decode=lambda e: time.sleep(0.01)
        ),
    )
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.model_ready)
        await pilot.click("#prompt")
        await pilot.press(*"talk forever", "enter")
        await wait_for(pilot, lambda: "word word" in screen_text(app))
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: "[stopped]" in screen_text(app))
        assert app.is_running
        await pilot.press(*"exit", "enter")
        await wait_for(pilot, lambda: not app.is_running)
    await kernel.shutdown()


@pytest.mark.real_model
async def test_real_model_answers_in_the_shell(settings: Any, real_model_path: Any) -> None:
    app = LlmosShell(settings)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.model_ready)
        await pilot.click("#prompt")
        await pilot.press(*"What is the capital of France?", "enter")
        await wait_for(
            pilot,
            lambda: (
                app.current_pid is None
                and "pid" in str(app.query_one("#status").render())
                and "done" in str(app.query_one("#status").render())
            ),
            steps=6000,  # a bound for a loaded machine, not a timing check
        )
        answer = screen_text(app).split("capital of France?", 1)[1]
        assert len(answer.split()) >= 3  # the real model answered (sampled, so no fixed text)
        assert app.kernel.procs[1].exit_code == 0 and app.kernel.procs[1].tokens >= 3


async def test_the_conversation_is_the_assistants_and_outlives_the_shell(settings: Any) -> None:

    seen: list[str] = []

    def responder(conversation: str) -> str:
        seen.append(conversation)
        return "You said: " + conversation.strip().splitlines()[-1].removeprefix("<|user|>")

    kernel = Kernel(settings, backend_factory=scripted_factory(responder=responder))
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.model_ready)
        await pilot.click("#prompt")
        # Typed back to back: the second waits for the first answer, then continues from it.
        await pilot.press(*"first question", "enter", *"second question", "enter")
        await wait_for(pilot, lambda: "You said: second question" in screen_text(app))
        await pilot.press(*"remember I keep bees", "enter")
        await wait_for(pilot, lambda: "OK, I will remember that." in screen_text(app))
    assert seen[1].endswith(
        "<|user|>first question\nYou said: first question\n<|user|>second question\n"
    )
    fs = kernel.memory
    log = fs.read("/home/assistant/recall/log.md")
    assert log.index("**user**: first question") < log.index("**user**: second question")
    assert fs.read("/home/assistant/core/human.md") == "- I keep bees"
    await kernel.shutdown()
    # A new shell on the same data dir: the assistant still knows.
    kernel2 = Kernel(settings, backend_factory=scripted_factory(responder=responder))
    app2 = LlmosShell(settings, kernel=kernel2)
    async with app2.run_test() as pilot:
        await wait_for(pilot, lambda: app2.model_ready)
        await pilot.click("#prompt")
        await pilot.press(*"third", "enter")
        await wait_for(pilot, lambda: "You said: third" in screen_text(app2))
    await kernel2.shutdown()
    assert "What you know about the user:\n- I keep bees" in seen[-1]
    assert "<|user|>second question\nYou said: second question\n" in seen[-1]
