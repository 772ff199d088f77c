"""The synchronous SDK: load_model, WritingTask, DialogueTask, model.execute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llmos
from llmos.errors import ModelError
from tests.conftest import scripted_factory


def echo_last_user(conversation: str) -> str:
    lines = [ln for ln in conversation.splitlines() if ln.startswith("<|user|>")]
    return "reply to " + lines[-1].removeprefix("<|user|>")


def test_tasks_run_as_kernel_processes(settings: Any) -> None:
    factory = scripted_factory(responder=echo_last_user)
    with llmos.load_model(settings=settings, backend_factory=factory) as model:
        w = model.execute(llmos.WritingTask(prompt="a poem about tea", max_length=64))
        assert w.text == "reply to a poem about tea" and w.finish_reason == "stop"
        d = model.execute(
            llmos.DialogueTask(
                user_utterance="and now?",
                history=[
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ],
            )
        )
        assert d.response == "reply to and now?"
        rows = model.kernel.history()
        assert {r["name"] for r in rows} == {"WritingTask", "DialogueTask"}
        assert all(r["state"] == "exited" and r["exit_code"] == 0 for r in rows)
        short = model.execute(llmos.WritingTask(prompt="x" * 50, max_length=5))
        assert short.tokens == 5 and short.finish_reason == "length"


def test_missing_model_fails_clearly(settings: Any) -> None:
    with pytest.raises(ModelError, match="no-such-model"):
        llmos.load_model("no-such-model", settings=settings)


def test_bad_task_is_a_type_error(settings: Any) -> None:
    with llmos.load_model(settings=settings, backend_factory=scripted_factory()) as model:
        with pytest.raises(TypeError):
            model.execute("write something")  # type: ignore[arg-type]


def test_real_model_writes_and_answers(settings: Any, real_model_path: Path) -> None:
    with llmos.load_model(settings=settings) as model:
        w = model.execute(
            llmos.WritingTask(prompt="Write one sentence about the sea.", max_length=48, seed=1)
        )
        assert w.text.strip() and 0 < w.tokens <= 48
        d = model.execute(
            llmos.DialogueTask(user_utterance="Hello! Who are you?", max_length=48, seed=1)
        )
        assert d.response.strip()
