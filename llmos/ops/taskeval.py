"""Task evaluation: `eval run` (prompts against references) and `eval rag` (retrieval).

`run_tasks` runs every task of a JSONL file as a kernel process, so the prompts share the
engine's batch the way agents do (as many at once as the engine has slots, by default),
at temperature 0, and scores the outputs: exact match, BLEU and chrF (sacrebleu), and
ROUGE-1/2/L F1 (rouge-score). `rag_eval` measures the memory FS's retrieval against
expected source paths (recall@k, MRR) and, where references are given, `qa.ask`'s answers.
Both store their run in the eval store beside perplexity runs.

A task file is JSON Lines. Each line is one task:

    {"prompt": "2+2=", "references": ["4"]}                       raw completion
    {"messages": [{"role": "user", "content": "..."}], "reference": "..."}   chat

An optional first line `{"header": {...}}` describes the set (the shipped sets say there
where their text comes from); it is not a task. sacrebleu and rouge-score load only when
scoring, so `import llmos` stays light.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.errors import UserError
from llmos.memory.paths import normalize
from llmos.ops.evalstore import EvalRun, EvalStore, file_sha256

if TYPE_CHECKING:
    from llmos.core.context import Context
    from llmos.kernel.kernel import Kernel

TASKS_DIR = Path(__file__).parent / "data" / "tasks"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass
class Task:
    line: int  # 1-based line in the file, for messages that point at it
    prompt: str | None
    messages: list[dict[str, str]] | None
    references: list[str]
    stop: list[str] | None = None


@dataclass
class Question:
    line: int
    question: str
    sources: list[str]
    references: list[str]


# -- inputs -------------------------------------------------------------------------------
def shipped_sets() -> dict[str, Path]:
    """The task sets shipped with llmos, by name (`translation`, `arithmetic`, ...)."""
    return {p.stem: p for p in sorted(TASKS_DIR.glob("*.jsonl"))}


def resolve_tasks(name_or_path: str | Path) -> tuple[Path, str]:
    """The file of a task set and how a run records it: an existing path as given, or a
    shipped set's name as `(shipped) NAME.jsonl` (its location differs per install)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, str(name_or_path)
    shipped = shipped_sets()
    if str(name_or_path) in shipped:
        p = shipped[str(name_or_path)]
        return p, f"(shipped) {p.name}"
    if path.suffix or "/" in str(name_or_path):
        raise UserError(f"no such task file: {name_or_path}")
    raise UserError(
        f"no task file or shipped set {str(name_or_path)!r}; shipped sets: {', '.join(shipped)}"
    )


def _lines(path: Path, text: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL file with their line numbers, the header line left out;
    malformed JSON or a line that is not an object names its line. `text`: the file's
    content, read elsewhere (the memory FS, for `eval.rag`); `path` then only names it."""
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"no such file: {path}") from None
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
    out: list[tuple[int, dict[str, Any]]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue  # a blank line (often the last) is no task
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        if not out and "header" in obj and not ({"prompt", "messages", "question"} & obj.keys()):
            continue
        out.append((n, obj))
    if not out:
        raise UserError(f"{path} has no tasks (an empty file)")
    return out


def _references(path: Path, n: int, obj: dict[str, Any], *, required: bool) -> list[str]:
    refs = obj.get("references", obj.get("reference"))
    if refs is None:
        if required:
            raise UserError(f"{path}:{n}: missing references (a string or a list of strings)")
        return []
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise UserError(f"{path}:{n}: references must be a string or a non-empty list of strings")
    return refs


def load_tasks(path: Path) -> list[Task]:
    """The tasks of a JSONL file, checked: every line has a prompt or messages and at least
    one reference. The first problem is a `UserError` naming its line."""
    tasks = []
    for n, obj in _lines(path):
        prompt, messages = obj.get("prompt"), obj.get("messages")
        if (prompt is None) == (messages is None):
            raise UserError(f"{path}:{n}: give either a prompt or messages")
        if prompt is not None and not (isinstance(prompt, str) and prompt):
            raise UserError(f"{path}:{n}: prompt must be a non-empty string")
        if messages is not None and not (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise UserError(f"{path}:{n}: messages must be a list of {{role, content}} strings")
        stop = obj.get("stop")
        if stop is not None and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)
        ):
            raise UserError(f"{path}:{n}: stop must be a list of strings")
        refs = _references(path, n, obj, required=True)
        tasks.append(Task(n, prompt, messages, refs, stop))
    return tasks


def load_questions(path: Path, text: str | None = None) -> list[Question]:
    """The questions of an `eval rag` file: `question`, `sources` (memory-FS paths the
    answer should be retrieved from), optional `references` (answers). `text`: as `_lines`."""
    out = []
    for n, obj in _lines(path, text):
        q = obj.get("question")
        if not (isinstance(q, str) and q.strip()):
            raise UserError(f"{path}:{n}: missing question (a non-empty string)")
        sources = obj.get("sources", obj.get("source"))
        if isinstance(sources, str):
            sources = [sources]
        if not (isinstance(sources, list) and sources and all(isinstance(s, str) for s in sources)):
            raise UserError(f"{path}:{n}: sources must be a path or a non-empty list of paths")
        refs = _references(path, n, obj, required=False)
        out.append(Question(n, q, [normalize(s) for s in sources], refs))
    return out


# -- metrics ------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return text.strip().casefold()


def score_outputs(
    outputs: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus scores and per-item scores of `outputs` against their references.

    Exact match compares stripped, casefolded text with any reference; BLEU and chrF are
    sacrebleu's (0-100; corpus-level over all items, sentence-level per item); ROUGE-1/2/L
    are F1 (0-1) taking the best reference, per item, and their mean over the items."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(outputs) != len(references):
        raise ValueError("one list of references per output")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    items: list[dict[str, float]] = []
    for out, refs in zip(outputs, references, strict=True):
        rouge = scorer.score_multi(list(refs), out)
        items.append(
            {
                "exact": float(any(_norm(out) == _norm(r) for r in refs)),
                "bleu": sacrebleu.sentence_bleu(out, list(refs)).score,
                "chrf": sacrebleu.sentence_chrf(out, list(refs)).score,
                **{t: rouge[t].fmeasure for t in ROUGE_TYPES},
            }
        )
    # sacrebleu takes references as streams (the first reference of every item, then the
    # second, ...); an item with fewer references fills its place with None, which
    # sacrebleu skips
    width = max(len(r) for r in references) if references else 1
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
    n = len(items)
    corpus = {
        "exact_match": sum(i["exact"] for i in items) / n if n else 0.0,
        "bleu": sacrebleu.corpus_bleu(list(outputs), streams).score if n else 0.0,  # type: ignore[arg-type]
        "chrf": sacrebleu.corpus_chrf(list(outputs), streams).score if n else 0.0,  # type: ignore[arg-type]
        **{t: (sum(i[t] for i in items) / n if n else 0.0) for t in ROUGE_TYPES},
    }
    return corpus, items


def retrieval_scores(ranked: Sequence[str], expected: Sequence[str]) -> tuple[float, float]:
    """(recall, reciprocal rank) of a ranked list of paths against the expected paths:
    the share of expected paths retrieved, and 1/rank of the first one (0: none)."""
    want = set(expected)
    recall = len(want & set(ranked)) / len(want) if want else 0.0
    rr = next((1.0 / (i + 1) for i, p in enumerate(ranked) if p in want), 0.0)
    return recall, rr


# -- running ------------------------------------------------------------------------------
async def task_program(
    ctx: Context, task: Task, max_tokens: int, ignore_eos: bool = False
) -> dict[str, Any]:
    """One task as a process: one `llm.chat` or `llm.complete` syscall at temperature 0."""
    if task.messages is not None:
        r = await ctx.sys.llm.chat(
            messages=task.messages, temperature=0.0, max_tokens=max_tokens, stop=task.stop,
            stream=False,
        )  # fmt: skip
    else:
        r = await ctx.sys.llm.complete(
            prompt=task.prompt, temperature=0.0, max_tokens=max_tokens, stop=task.stop,
            stream=False, ignore_eos=ignore_eos,
        )  # fmt: skip
    return {"text": r.text, "tokens": r.tokens, "prompt_tokens": r.prompt_tokens}


async def run_bounded(
    kernel: Kernel,
    jobs: Sequence[tuple[Any, tuple[Any, ...], list[str]]],
    *,
    model: str | None,
    concurrency: int,
    name: str,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Run `program(ctx, *args)` for each job as a kernel process, at most `concurrency`
    alive at once (a new one starts as one ends, so the engine's batch stays full).
    Returns, per job in order, its result or error and its latency, and the most that
    were alive at once."""
    out: list[dict[str, Any]] = [{} for _ in jobs]
    todo = iter(range(len(jobs)))
    alive = peak = done = 0

    async def worker() -> None:
        nonlocal alive, peak, done
        for i in todo:  # one shared iterator: each job is taken by exactly one worker
            program, args, caps = jobs[i]
            t0 = time.perf_counter()
            proc = await kernel.spawn(program, *args, name=f"{name}-{i}", caps=caps, model=model)
            alive += 1
            peak = max(peak, alive)
            try:
                code = await kernel.wait(proc.pid)
            except asyncio.CancelledError:
                # the run was interrupted: its processes go too, freeing their KV slots
                if proc.alive:
                    kernel.signal(proc.pid, "KILL", reason="eval run cancelled")
                raise
            finally:
                alive -= 1
            res = proc.result if code == 0 and isinstance(proc.result, dict) else None
            error = None if res is not None else _last_line(proc.error) or f"exit code {code}"
            out[i] = {
                "result": res, "error": error, "latency_s": time.perf_counter() - t0,
                "tokens": proc.tokens,  # generated, whatever syscalls the program made
            }  # fmt: skip
            done += 1
            if progress is not None:
                progress(done, len(jobs))

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, len(jobs))):
            tg.create_task(worker())
    return out, peak


def _last_line(text: str | None) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _model_entry(kernel: Kernel, model: str | None) -> tuple[str, Any]:
    """The model id to run and the catalog entry the run is stored under: the model's, or
    for `BASE+ADAPTER` (or an adapter's name) the adapter's. Unknown: one line."""
    name = model or kernel.settings.default_model
    base, adapter = kernel.library.resolve(name)
    return name, adapter if adapter is not None else kernel.library.get(base)


def _lineage(entry: Any) -> dict[str, Any] | None:
    lineage = getattr(entry, "lineage", None) or (getattr(entry, "meta", None) or {}).get("lineage")
    return lineage if isinstance(lineage, dict) else None


def _check_counts(max_tokens: int, concurrency: int | None) -> None:
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, not {max_tokens}")
    if concurrency is not None and concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, not {concurrency}")


async def run_tasks(
    kernel: Kernel,
    model: str | None,
    tasks_path: str | Path,
    *,
    max_tokens: int = 64,
    concurrency: int | None = None,
    store: bool = True,
    ignore_eos: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run a task set (a JSONL path or a shipped set's name) on `model` (default: the
    kernel's) and score it; the run is stored in the eval store unless `store` is False.

    Every task is a kernel process (visible in `ps`, killable), at most `concurrency` at
    once (default: the engine's slots, `n_seq_max`). Inputs and the model's name are
    checked before anything runs. `ignore_eos` makes raw prompts generate exactly
    `max_tokens` (benchmarks). Returns the run, its scores, speed and per-item results."""
    _check_counts(max_tokens, concurrency)
    path, label = resolve_tasks(tasks_path)
    tasks = load_tasks(path)
    name, entry = _model_entry(kernel, model)
    width = concurrency or kernel.settings.n_seq_max
    await kernel.engine(name)  # load before the clock starts: latency is generation's
    jobs = [(task_program, (t, max_tokens, ignore_eos), ["llm.*"]) for t in tasks]
    t0 = time.perf_counter()
    ran, peak = await run_bounded(
        kernel, jobs, model=name, concurrency=width, name="eval", progress=progress
    )
    wall = time.perf_counter() - t0
    if all(r["error"] for r in ran):  # scores of nothing but failures would mislead
        raise UserError(f"every task failed; the first (line {tasks[0].line}): {ran[0]['error']}")
    outputs = [str(r["result"]["text"]) if r["result"] else "" for r in ran]
    corpus, per_item = score_outputs(outputs, [t.references for t in tasks])
    tokens = sum(int(r["tokens"]) for r in ran)
    errors = sum(1 for r in ran if r["error"])
    latencies = [float(r["latency_s"]) for r in ran]
    scores: dict[str, Any] = {**corpus, "n": len(tasks), "errors": errors}
    items = [
        {
            "line": t.line,
            "output": out,
            "references": t.references,
            **sc,
            "tokens": r["result"]["tokens"] if r["result"] else 0,
            "latency_s": r["latency_s"],
            "error": r["error"],
        }
        for t, out, sc, r in zip(tasks, outputs, per_item, ran, strict=True)
    ]
    run = EvalRun(
        kind="tasks",
        model=entry.name,
        model_path=str(entry.path),
        lineage=_lineage(entry),
        file=label,
        file_sha256=file_sha256(path),
        settings={
            "set": path.stem,
            "max_tokens": max_tokens,
            "concurrency": width,
            "temperature": 0.0,
            "ignore_eos": ignore_eos,
        },
        scores=scores,
        size_bytes=entry.path.stat().st_size if entry.path.is_file() else None,
        tokens_per_s=tokens / wall if wall > 0 else None,
        seconds=wall,
    )
    return _report(
        kernel,
        run,
        store,
        tokens=tokens,
        tokens_per_s=run.tokens_per_s,
        latency_s={
            "mean": statistics.fmean(latencies),
            "median": statistics.median(latencies),
            "max": max(latencies),
        },
        concurrency=width,
        max_concurrent=peak,
        items=items,
    )


def _report(kernel: Any, run: EvalRun, store: bool, **extra: Any) -> dict[str, Any]:
    """Store a finished run (unless told not to) and what the caller shows of it: the run,
    its scores and wall time, and what this kind of evaluation adds."""
    if store:
        with EvalStore.open(kernel.settings.data_dir) as db:
            db.add(run)
    return {"run": run.as_dict(), "scores": run.scores, "seconds": run.seconds, **extra}


async def ask_program(ctx: Context, question: str, scope: str, k: int, max_tokens: int) -> Any:
    """One question as a process: `qa.ask`, as an agent would ask it."""
    return await ctx.sys.qa.ask(question=question, scope=scope, k=k, max_tokens=max_tokens)


async def rag_eval(
    kernel: Kernel,
    questions_path: str | Path,
    scope: str,
    *,
    k: int = 4,
    model: str | None = None,
    max_tokens: int = 128,
    concurrency: int | None = None,
    store: bool = True,
    text: str | None = None,
) -> dict[str, Any]:
    """Retrieval recall@k and MRR of the memory FS over `scope` against each question's
    expected sources, and, for questions with references, `qa.ask`'s answers scored as
    `run_tasks` scores outputs. `text`: the questions file's content when it was read
    elsewhere (`eval.rag` reads it from the memory FS); `questions_path` then names it and
    the run hashes the text as the UTF-8 bytes of a file holding it.

    Retrieval is the search `qa.ask` makes (`MemoryFS.search(question, scope, k)`, as
    root): its `k` chunks, best first, give a ranking of paths (a path's first chunk
    places it). recall@k is the share of expected paths among them; the reciprocal rank
    is 1/rank of the first expected path (0 when none came back); both averaged."""
    _check_counts(max_tokens, concurrency)
    if not 1 <= k <= 100:
        raise UserError(f"--k must be between 1 and 100, not {k}")
    path = Path(questions_path)
    questions = load_questions(path, text)  # a missing file is one line
    sha = file_sha256(path) if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()
    answering = [q for q in questions if q.references]
    name, entry = _model_entry(kernel, model) if answering else (model, None)
    scope = normalize(scope)
    fs = kernel.memory
    # the index catches up from its journal first; an empty scope is one line, not zeros
    await asyncio.to_thread(fs.require_indexed, scope)
    t0 = time.perf_counter()
    items: list[dict[str, Any]] = []
    for q in questions:
        hits = await asyncio.to_thread(fs.search, q.question, scope, k)
        ranked = list(dict.fromkeys(h.path for h in hits))
        recall, rr = retrieval_scores(ranked, q.sources)
        items.append(
            {
                "line": q.line, "question": q.question, "sources": q.sources,
                "retrieved": ranked, "recall": recall, "rr": rr,
            }
        )  # fmt: skip
    retrieval_s = time.perf_counter() - t0
    n = len(questions)
    scores: dict[str, Any] = {
        f"recall@{k}": sum(i["recall"] for i in items) / n,
        "mrr": sum(i["rr"] for i in items) / n,
        "n": n,
    }
    tokens_per_s = None
    if answering:
        width = concurrency or kernel.settings.n_seq_max
        await kernel.engine(name)
        # root's view of the FS (fs.*), as retrieval above: answers and ranking see the
        # same files
        caps = ["qa.ask", "fs.*"]
        jobs = [(ask_program, (q.question, scope, k, max_tokens), caps) for q in answering]
        t1 = time.perf_counter()
        ran, _ = await run_bounded(kernel, jobs, model=name, concurrency=width, name="eval-rag")
        answer_s = time.perf_counter() - t1
        outputs = [str(r["result"]["answer"]) if r["result"] else "" for r in ran]
        corpus, per_item = score_outputs(outputs, [q.references for q in answering])
        scores.update({f"answer_{key}": v for key, v in corpus.items()})
        scores["answered"] = len(answering)
        scores["errors"] = sum(1 for r in ran if r["error"])
        by_line = {i["line"]: i for i in items}
        for q, out, sc, r in zip(answering, outputs, per_item, ran, strict=True):
            by_line[q.line].update(
                {"answer": out, "references": q.references, **sc, "error": r["error"]}
            )
        tokens_per_s = sum(int(r["tokens"]) for r in ran) / answer_s if answer_s > 0 else None
    wall = time.perf_counter() - t0
    run = EvalRun(
        kind="rag",
        model=entry.name if entry is not None else "(retrieval only)",
        model_path=str(entry.path) if entry is not None else "",
        lineage=_lineage(entry) if entry is not None else None,
        file=str(questions_path),
        file_sha256=sha,
        settings={
            "scope": scope,
            "k": k,
            "max_tokens": max_tokens,
            "embedder": getattr(fs.index.embedder, "name", None),
        },
        scores=scores,
        size_bytes=entry.path.stat().st_size
        if entry is not None and entry.path.is_file()
        else None,
        tokens_per_s=tokens_per_s,
        seconds=wall,
    )
    return _report(kernel, run, store, retrieval_s=retrieval_s, items=items)
