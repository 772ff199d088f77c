"""`llmos models distill`: a student model fine-tuned on a teacher's answers.

1. The prompts file (JSONL: `{"messages": [...]}` or `{"prompt": "..."}` per line, each
   optionally with its own `json_schema` or `grammar`) is split, seeded, into a training
   part and a held-out part.
2. The teacher answers every prompt at temperature 0, batched on the engine (each prompt a
   kernel process, as `eval run`'s tasks are). The teacher may be the student itself run
   under a constraint that makes it better: a JSON schema or grammar given per line or for
   the whole file (`schema`/`grammar`).
3. The student answers the held-out prompts *without* the constraint: its agreement with
   the teacher before training (exact match and ROUGE-L F1).
4. The student is fine-tuned on the teacher's answers to the training prompts
   (`finetune.py`), and answers the held-out prompts again, with the new adapter: its
   agreement after. Both figures are stored with the adapter.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.errors import UserError
from llmos.ops.finetune import Finetuned, Hyper, adapter_paths, finetune
from llmos.ops.taskeval import run_bounded, score_outputs
from llmos.ops.trainset import DatasetError, read_jsonl

if TYPE_CHECKING:
    from llmos.core.context import Context
    from llmos.core.process import Process
    from llmos.kernel.kernel import Kernel

Event = dict[str, Any]


async def answer_program(
    ctx: Context, row: dict[str, Any], max_tokens: int, constrain: bool
) -> dict[str, Any]:
    """One prompt as a process, at temperature 0; with `constrain`, under its schema or
    grammar (the teacher's side)."""
    kw: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_tokens, "stream": False}
    if constrain and row.get("json_schema") is not None:
        kw["json_schema"] = row["json_schema"]
    if constrain and row.get("grammar") is not None:
        kw["grammar"] = row["grammar"]
    if "messages" in row:
        r = await ctx.sys.llm.chat(messages=row["messages"], **kw)
    else:
        r = await ctx.sys.llm.complete(prompt=row["prompt"], **kw)
    return {"text": r.text}


async def answer_all(
    kernel: Kernel, model: str, rows: list[dict[str, Any]], *, max_tokens: int,
    constrain: bool, progress: Callable[[int, int], None] | None = None,
) -> list[str]:  # fmt: skip
    jobs = [(answer_program, (r, max_tokens, constrain), ["llm.*"]) for r in rows]
    ran, _ = await run_bounded(
        kernel, jobs, model=model, concurrency=kernel.settings.n_seq_max, name="distill",
        progress=progress,
    )  # fmt: skip
    failed = [r["error"] for r in ran if r["error"]]
    if failed:
        raise UserError(f"{len(failed)} of {len(rows)} prompts failed on {model}: {failed[0]}")
    return [str(r["result"]["text"]).strip() for r in ran]


def agreement(student: list[str], teacher: list[str]) -> dict[str, float]:
    corpus, _ = score_outputs(student, [[t] for t in teacher])
    return {"exact_match": corpus["exact_match"], "rougeL": corpus["rougeL"]}


def load_prompts(
    path: Path, *, schema: dict[str, Any] | None, grammar: str | None
) -> list[dict[str, Any]]:
    rows = []
    for n, obj in read_jsonl(path, _check_prompt, what="prompts file", items="prompts"):
        row = dict(obj)
        if schema is not None and "json_schema" not in row and "grammar" not in row:
            row["json_schema"] = schema
        if grammar is not None and "json_schema" not in row and "grammar" not in row:
            row["grammar"] = grammar
        row["line"] = n
        rows.append(row)
    return rows


def _check_prompt(obj: Any, where: str) -> None:
    """A prompts line: like a training line, without the answer."""
    if not isinstance(obj, dict) or not (
        isinstance(obj.get("prompt"), str) or isinstance(obj.get("messages"), list)
    ):
        raise DatasetError(f"{where}: need 'messages' (a list) or 'prompt' (a string)")


async def distill(
    kernel: Kernel,
    teacher: str,
    student: str,
    prompts: Path,
    *,
    name: str,
    schema: dict[str, Any] | None = None,
    grammar: str | None = None,
    held_out: float = 0.2,
    max_tokens: int = 256,
    hyper: Hyper | None = None,
    force: bool = False,
    process: Process | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> dict[str, Any]:
    """Distill `teacher` into an adapter `name` for `student`; see the module's docstring."""
    emit = on_event or (lambda ev: None)
    rows = load_prompts(prompts, schema=schema, grammar=grammar)
    if len(rows) < 5:
        raise DatasetError(f"{prompts}: {len(rows)} prompts; distilling needs at least 5")
    order = list(range(len(rows)))
    random.Random((hyper or Hyper()).seed).shuffle(order)
    n_held = max(1, round(len(rows) * held_out))
    held = [rows[i] for i in sorted(order[:n_held])]
    train = [rows[i] for i in sorted(order[n_held:])]

    def progress(phase: str) -> Callable[[int, int], None]:
        return lambda done, total: emit({"event": phase, "done": done, "total": total})

    answers = await answer_all(
        kernel, teacher, train + held, max_tokens=max_tokens, constrain=True,
        progress=progress("teacher"),
    )  # fmt: skip
    teacher_train, teacher_held = answers[: len(train)], answers[len(train) :]
    before_out = await answer_all(
        kernel, student, held, max_tokens=max_tokens, constrain=False, progress=progress("before")
    )
    before = agreement(before_out, teacher_held)
    emit({"event": "agreement_before", **before})
    _, work = adapter_paths(kernel.settings.data_dir, name)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "distill.jsonl"
    data.write_text("".join(json.dumps(_example(r, a)) + "\n" for r, a in zip(train, teacher_train, strict=True)))  # fmt: skip
    tuned: Finetuned = await finetune(
        kernel, student, data, name=name, hyper=hyper or Hyper(held_out=0.0), force=force,
        process=process, on_event=on_event,
    )  # fmt: skip
    after_out = await answer_all(
        kernel, f"{student}+{tuned.entry.name}", held, max_tokens=max_tokens, constrain=False,
        progress=progress("after"),
    )  # fmt: skip
    after = agreement(after_out, teacher_held)
    emit({"event": "agreement_after", **after})
    kernel.library.update_meta(
        tuned.entry.name, distilled_from=teacher, agreement_before=before, agreement_after=after
    )
    return {
        "adapter": tuned.entry.name, "base": tuned.entry.base, "teacher": teacher,
        "train_prompts": len(train), "held_out_prompts": len(held),
        "before": before, "after": after, "plot": str(tuned.plot),
        "train_seconds": tuned.result.get("train_seconds"),
        "tokens_per_s": tuned.result.get("tokens_per_s"),
    }  # fmt: skip


def _example(row: dict[str, Any], answer: str) -> dict[str, Any]:
    if "messages" in row:
        return {"messages": [*row["messages"], {"role": "assistant", "content": answer}]}
    return {"prompt": row["prompt"], "completion": answer}
