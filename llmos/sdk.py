"""A small synchronous SDK: load a model, describe a task, execute it.

    import llmos
    model = llmos.load_model("smollm2-135m-instruct")
    print(model.execute(llmos.WritingTask(prompt="A haiku about rain", max_length=60)).text)
    print(model.execute(llmos.DialogueTask(user_utterance="Hello!")).response)
    model.close()

Each `execute` runs as a kernel process (visible in `ps`, audited, budgeted). The kernel
lives on its own event loop in a background thread, so the API works from plain scripts
and notebooks alike; `aexecute` is the coroutine form for code already on that loop's side.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmos.config import Settings, load_settings
from llmos.core.context import Context
from llmos.errors import LlmosError
from llmos.kernel.kernel import Kernel

T = TypeVar("T")


@dataclass(frozen=True)
class WritingTask:
    """Write text from a prompt, at most `max_length` tokens."""

    prompt: str
    max_length: int = 256
    temperature: float = 0.7
    seed: int | None = None

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class DialogueTask:
    """Answer one user utterance, after an optional history of earlier turns."""

    user_utterance: str
    history: list[dict[str, str]] = field(default_factory=list)
    system: str | None = None
    max_length: int = 256
    temperature: float = 0.7
    seed: int | None = None

    def messages(self) -> list[dict[str, str]]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return [*sys_msg, *self.history, {"role": "user", "content": self.user_utterance}]


Task = WritingTask | DialogueTask


@dataclass(frozen=True)
class TaskResult:
    text: str
    pid: int
    tokens: int
    finish_reason: str

    @property
    def response(self) -> str:
        """The same text, under the name a dialogue reads best with."""
        return self.text


async def task_program(ctx: Context, task: Task) -> dict[str, Any]:
    r = await ctx.sys.llm.chat(
        messages=task.messages(), max_tokens=task.max_length, temperature=task.temperature,
        seed=task.seed, stream=False,
    )  # fmt: skip
    return dict(r.model_dump())


class Model:
    """A loaded model with its own kernel; `execute(task)` runs a task as a process."""

    def __init__(
        self,
        name: str | None = None,
        *,
        settings: Settings | None = None,
        backend_factory: Callable[..., Any] | None = None,
    ) -> None:

        self.settings = settings or load_settings()
        self.name = name or self.settings.default_model
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.kernel = Kernel(self.settings, backend_factory=backend_factory)
        try:
            self._run(self._boot())
        except BaseException:
            self.close()
            raise

    async def _boot(self) -> None:
        await self.kernel.start()
        await self.kernel.engine(self.name)  # a missing model fails here, clearly

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def aexecute(self, task: Task) -> TaskResult:
        if not isinstance(task, WritingTask | DialogueTask):
            raise TypeError(f"not a task: {task!r}")
        proc = await self.kernel.spawn(
            task_program, task, name=type(task).__name__, model=self.name, caps=["llm.chat"]
        )
        code = await self.kernel.wait(proc.pid)
        if code != 0:
            raise LlmosError(f"task process {proc.pid} failed ({proc.exit_reason}): {proc.error}")
        r = proc.result
        return TaskResult(r["text"], proc.pid, r["tokens"], r["finish_reason"])

    def execute(self, task: Task) -> TaskResult:
        """Run the task as a kernel process and return its text."""
        return self._run(self.aexecute(task))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self.kernel.booted:
            self._run(self.kernel.shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_model(name: str | None = None, *, settings: Settings | None = None, **kw: Any) -> Model:
    """Load a model (the default one if no name) and return it ready to execute tasks."""
    return Model(name, settings=settings, **kw)
