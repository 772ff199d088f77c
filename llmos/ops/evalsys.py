"""The `eval.*` syscalls (capability `eval`): perplexity, shipped task sets, retrieval over
the memory FS, the stored runs and their comparison, for agents, the REST API and the CLI
alike.

A provider in the ops layer, loaded by name through the kernel's registry like any other
(the kernel never imports it). The scoring runs on a worker thread inside the calling
process's syscall, so a long evaluation is that process: it shows in `ps`/`top`, and a KILL
(which cancels its task) stops the scoring before the next chunk and closes the model
before the task ends (`perplexity.in_worker`).

Progress goes to the kernel's `EvalProgress` service, by pid, rather than into the caller's
stdout (an agent's output is its own): `llmos eval perplexity` watches it to draw its bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, cast

from pydantic import Field

from llmos.core.context import Context, KernelServices
from llmos.core.syscall import syscall
from llmos.errors import BadArguments, UserError
from llmos.memory.paths import normalize
from llmos.ops.evalstore import EvalStore, comparable
from llmos.ops.perplexity import evaluate_file, in_worker
from llmos.ops.taskeval import rag_eval, run_tasks, shipped_sets

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

Watcher = Callable[[int, str, int, int], None]  # (pid, phase, done, total)


class EvalProgress:
    """Where each running evaluation is, by pid; watchers hear every update (from the
    worker thread, so a watcher must be thread-safe, as `cli.progress.Reporter` is)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: list[Watcher] = []
        self.running: dict[int, tuple[str, int, int]] = {}

    def watch(self, fn: Watcher) -> Callable[[], None]:
        with self._lock:
            self._watchers.append(fn)

        def unwatch() -> None:
            with self._lock:
                if fn in self._watchers:
                    self._watchers.remove(fn)

        return unwatch

    def update(self, pid: int, phase: str, done: int, total: int) -> None:
        with self._lock:
            self.running[pid] = (phase, done, total)
            watchers = list(self._watchers)
        for fn in watchers:
            fn(pid, phase, done, total)

    def end(self, pid: int) -> None:
        with self._lock:
            self.running.pop(pid, None)


def open_eval_progress(kernel: KernelServices) -> EvalProgress:
    """The kernel's one `EvalProgress` (a declared service: `kernel.service(...)`)."""
    return EvalProgress()


def _bad(name: str, exc: UserError) -> BadArguments:
    # The caller's input was wrong (a model, a text, a setting): a typed syscall error it
    # can read, rather than the ToolFailed an unexpected exception becomes.
    return BadArguments(f"{name}: {exc}")


@syscall("eval.perplexity", capability="eval")
async def eval_perplexity(
    caller: Context,  # not `ctx`: that name is the argument llama-perplexity users know
    model: str,
    text: str | None = None,
    ctx: Annotated[int, Field(ge=8, le=65536)] = 512,
    batch: Annotated[int, Field(ge=1)] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Perplexity of `model` (a catalog name or a GGUF path) over `text` (default: the
    English text shipped with llmos), in chunks of `ctx` tokens, by llama-perplexity's
    method; the run is stored (eval.runs lists it). `source` names the text in the run."""
    s = caller.kernel.settings
    progress = caller.kernel.service(open_eval_progress)
    pid = caller.pid
    try:
        run, result = await in_worker(
            evaluate_file,
            s.data_dir,
            model,
            None,
            text=text,
            source=source if text is not None else None,
            ctx=ctx,
            batch=batch,
            threads=s.n_threads,
            n_gpu_layers=s.n_gpu_layers,
            flash_attn=s.flash_attn,
            progress=lambda done, total: progress.update(pid, "chunks", done, total),
        )
    except UserError as exc:
        raise _bad("eval.perplexity", exc) from None
    finally:
        progress.end(pid)
    return {**run.as_dict(), "result": result.as_dict()}


@syscall("eval.runs", capability="eval")
async def eval_runs(
    ctx: Context, last: Annotated[int, Field(ge=1, le=1000)] = 10
) -> list[dict[str, Any]]:
    """The newest stored evaluation runs, oldest first, with every stored field."""
    with EvalStore.open(ctx.kernel.settings.data_dir) as store:
        return [r.as_dict() for r in store.last(last)]


@syscall("eval.compare", capability="eval")
async def eval_compare(
    ctx: Context, ids: Annotated[list[int], Field(max_length=100)]
) -> dict[str, Any]:
    """Stored runs side by side, in the order given; `comparable` is False when they scored
    different texts or contexts (perplexities then do not compare)."""
    if not ids:
        raise BadArguments("eval.compare: ids: give at least one run id (eval.runs lists them)")
    try:
        with EvalStore.open(ctx.kernel.settings.data_dir) as store:
            runs = store.get(ids)
    except UserError as exc:
        raise _bad("eval.compare", exc) from None
    return {"runs": [r.as_dict() for r in runs], "comparable": comparable(runs)}


@syscall("eval.run", capability="eval")
async def eval_run(
    caller: Context,
    tasks: str,
    model: str | None = None,
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 64,
    concurrency: Annotated[int, Field(ge=1, le=256)] | None = None,
) -> dict[str, Any]:
    """Run a shipped task set (`tasks`: its name, e.g. translation) on `model` (default: the
    kernel's), each prompt a process batched on the engine; scores exact match, BLEU, chrF
    and ROUGE, and stores the run."""
    shipped = shipped_sets()
    if tasks not in shipped:
        # names only: a caller (an agent, a remote client) never points the kernel at a file
        raise BadArguments(
            f"eval.run: no shipped task set {tasks!r}; shipped: {', '.join(shipped)}"
        )
    progress = caller.kernel.service(open_eval_progress)
    pid = caller.pid
    # the handler runs in the kernel itself; run_tasks spawns the prompts' processes on it
    kernel = cast("Kernel", caller.kernel)
    try:
        return await run_tasks(
            kernel,
            model,
            tasks,
            max_tokens=max_tokens,
            concurrency=concurrency,
            progress=lambda done, total: progress.update(pid, "tasks", done, total),
        )
    except UserError as exc:
        raise _bad("eval.run", exc) from None
    finally:
        progress.end(pid)


@syscall("eval.rag", capability="eval")
async def eval_rag(
    caller: Context,
    questions: str,
    scope: str = "/",
    k: Annotated[int, Field(ge=1, le=100)] = 4,
    model: str | None = None,
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 128,
    concurrency: Annotated[int, Field(ge=1, le=256)] | None = None,
) -> dict[str, Any]:
    """Retrieval over the memory FS under `scope` against `questions`, a JSONL file on the
    memory FS (question, sources, optional references): recall@k and MRR, and `qa.ask`'s
    answers by `model` (default: the kernel's) scored against the references; stores the
    run. It reads, searches and answers as root of the memory FS, as `llmos eval rag` does."""
    kernel = cast("Kernel", caller.kernel)
    try:
        # a memory-FS path, never a host one: a caller points the kernel at no host file
        path = normalize(questions)
        text = kernel.memory.read(path)
    except BadArguments as exc:  # a bad or missing path, a directory: the caller's input
        raise BadArguments(f"eval.rag: questions: {exc}") from None
    try:
        return await rag_eval(
            kernel,
            path,
            scope,
            k=k,
            model=model,
            max_tokens=max_tokens,
            concurrency=concurrency,
            text=text,
        )
    except UserError as exc:  # a malformed line, an unknown model (NothingIndexed passes)
        raise _bad("eval.rag", exc) from None
