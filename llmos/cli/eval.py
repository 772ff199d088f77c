"""`llmos eval ...`: evaluate models (perplexity) and compare or plot the stored runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmos.cli.common import fail, run_async, settings
from llmos.errors import LlmosError

if TYPE_CHECKING:
    from llmos.cli.progress import Reporter
    from llmos.config import Settings
    from llmos.ops.evalstore import EvalRun

eval_app = typer.Typer(
    help="Evaluate models (perplexity) and compare or plot the stored runs.",
    no_args_is_help=True,
)

_LABELS = {"chunks": ("scoring chunks", "chunks")}
_SETS = ("translation", "summarization", "arithmetic", "tool-use")  # llmos/ops/data/tasks


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.command("perplexity")
def eval_perplexity(
    model: Annotated[str, typer.Argument(help="a catalog name or a GGUF path")],
    file: Annotated[
        Path | None, typer.Argument(help="a UTF-8 text file (default: the shipped English text)")
    ] = None,
    ctx: Annotated[int, typer.Option("--ctx", help="tokens per chunk; the second half is scored")] = 512,
    batch: Annotated[
        int | None,
        typer.Option("--batch", help="tokens per decode: below --ctx, or a multiple of it (default --ctx)"),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:  # fmt: skip
    """Perplexity of MODEL over FILE, by llama-perplexity's method; the run is stored."""
    from llmos.cli.progress import Reporter
    from llmos.errors import UserError
    from llmos.ops.evalstore import EvalRun
    from llmos.ops.perplexity import PerplexityResult, read_text

    s = settings()
    if threads:
        s = s.model_copy(update={"n_threads": threads})
    text = None
    if file is not None:
        try:
            text = read_text(file)  # here, so a missing file costs no kernel boot
        except UserError as exc:
            raise fail(str(exc)) from None
    args = {"model": model, "text": text, "source": str(file) if file else None, "ctx": ctx, "batch": batch}  # fmt: skip
    with Reporter.for_flag(progress, _LABELS) as rep:
        out = run_async(_perplexity_process(s, args, rep))
    result = PerplexityResult(**out.pop("result"))
    run = EvalRun(**out)
    if as_json:
        typer.echo(json.dumps({**run.as_dict(), "result": result.as_dict()}, indent=2))
        return
    typer.echo(
        f"perplexity  {result.ppl:.4f} ± {result.error:.4f}   "
        f"({run.model}, {result.n_chunks} chunks of {ctx} tokens, {result.n_scored} scored)"
    )
    typer.echo(f"speed       {result.tokens_per_s:.1f} tok/s ({result.seconds:.1f} s)")
    typer.echo(f"stored      run {run.id} (llmos eval compare {run.id})")


async def _perplexity_process(s: Settings, args: dict[str, Any], rep: Reporter) -> Any:
    """`eval.perplexity` as a kernel process, the path an agent's or the daemon's call takes
    (so it is in `ps` and killable like theirs), its progress drawn here."""
    from llmos.kernel.kernel import Kernel
    from llmos.kernel.oneshot import run_syscall
    from llmos.ops.evalsys import open_eval_progress

    async with Kernel(s) as k:
        # this kernel runs this one evaluation: every update is ours
        unwatch = k.service(open_eval_progress).watch(
            lambda pid, phase, d, n: rep.update(phase, d, n)
        )
        try:
            return await run_syscall(k, "eval.perplexity", args, label="cli:eval.perplexity")
        finally:
            unwatch()


@eval_app.command("run")
def eval_run(
    model: Annotated[str, typer.Argument(help="a catalog name or a GGUF path")],
    tasks: Annotated[str, typer.Argument(help="a JSONL task file, or a shipped set: " + ", ".join(_SETS))],
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="most tokens per answer")] = 64,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="tasks at once (default: the engine's slots)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="everything, with each item")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:  # fmt: skip
    """Run a task set's prompts on MODEL as batched kernel processes and score them."""
    from llmos.cli.progress import Reporter
    from llmos.kernel.kernel import Kernel
    from llmos.ops.taskeval import run_tasks

    async def go(rep: Reporter) -> dict[str, Any]:
        async with Kernel(settings()) as k:
            return await run_tasks(
                k, model, tasks, max_tokens=max_tokens, concurrency=concurrency,
                progress=lambda done, total: rep.update("tasks", done, total),
            )  # fmt: skip

    with Reporter.for_flag(progress, {"tasks": ("running tasks", "tasks")}) as rep:
        out = run_async(go(rep))
    if as_json:
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    run, sc = out["run"], out["scores"]
    lat = out["latency_s"]
    hits = round(sc["exact_match"] * sc["n"])
    typer.echo(f"tasks       {run['file']} ({sc['n']} items) on {run['model']}")
    typer.echo(f"exact match {sc['exact_match']:.4f} ({hits}/{sc['n']})")
    typer.echo(f"BLEU        {sc['bleu']:.2f}   chrF {sc['chrf']:.2f}")
    typer.echo(f"ROUGE F1    R1 {sc['rouge1']:.4f}  R2 {sc['rouge2']:.4f}  RL {sc['rougeL']:.4f}")
    typer.echo(
        f"latency     mean {lat['mean']:.2f} s, max {lat['max']:.2f} s; "
        f"wall {out['seconds']:.2f} s, {out['max_concurrent']} at once"
    )
    typer.echo(f"speed       {out['tokens_per_s'] or 0.0:.1f} tok/s ({out['tokens']} tokens)")
    if sc["errors"]:
        typer.echo(f"errors      {sc['errors']} task(s) failed (--json shows which)")
    typer.echo(f"stored      run {run['id']} (llmos eval compare {run['id']})")


@eval_app.command("rag")
def eval_rag(
    questions: Annotated[Path, typer.Argument(help="a JSONL file: question, sources, references")],
    scope: Annotated[str, typer.Option("--scope", help="the memory-FS folder searched")] = "/",
    k: Annotated[int, typer.Option("--k", help="chunks retrieved per question")] = 4,
    model: Annotated[str | None, typer.Option("--model", help="the model answering (default model)")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="most tokens per answer")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="everything, with each question")] = False,
) -> None:  # fmt: skip
    """Retrieval recall@k and MRR against expected sources, and answers against references."""
    from llmos.kernel.kernel import Kernel
    from llmos.ops.taskeval import rag_eval

    async def go() -> dict[str, Any]:
        async with Kernel(settings()) as kern:
            return await rag_eval(kern, questions, scope, k=k, model=model, max_tokens=max_tokens)

    out = run_async(go())
    if as_json:
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    run, sc = out["run"], out["scores"]
    typer.echo(f"questions   {run['file']} ({sc['n']}) over {run['settings']['scope']}")
    typer.echo(f"retrieval   recall@{k} {sc[f'recall@{k}']:.4f}   MRR {sc['mrr']:.4f}")
    if "answered" in sc:
        typer.echo(
            f"answers     {sc['answered']} on {run['model']}: exact match "
            f"{sc['answer_exact_match']:.4f}, BLEU {sc['answer_bleu']:.2f}, "
            f"ROUGE-L {sc['answer_rougeL']:.4f}"
        )
    typer.echo(f"stored      run {run['id']} (llmos eval compare {run['id']})")


def _runs(ids: list[int] | None, last: int) -> list[EvalRun]:
    from llmos.ops.evalstore import EvalStore

    try:
        with EvalStore.open(settings().data_dir) as store:
            return store.get(ids) if ids else store.last(last)
    except LlmosError as exc:
        raise fail(str(exc)) from None


def _origin(run: EvalRun) -> str:
    """Where a run's model came from, in a few words: its parent and the operation (a
    quantized or pruned model), or its hub repo (a pulled one)."""
    lin = run.lineage or {}
    if lin.get("parent"):
        params = lin.get("parameters") or {}
        how = params.get("type") or lin.get("operation") or ""
        return f"{lin['parent']} {how}".strip()
    return str(lin.get("repo") or "")


# The figures of a task or retrieval run that fit a table cell; --json has them all.
_HEADLINE = {"exact_match": "EM", "bleu": "BLEU", "rougeL": "RL", "mrr": "MRR"}


def _headline(sc: dict[str, Any]) -> str:
    shown = [
        f"{_HEADLINE.get(k, k)} {v:.3g}"
        for k, v in sc.items()
        if isinstance(v, float) and (k in _HEADLINE or k.startswith("recall@"))
    ]
    return ", ".join(shown) or ", ".join(
        f"{k} {v:.4g}" for k, v in sc.items() if isinstance(v, float)
    )


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f} MB"


@eval_app.command("compare")
def eval_compare(
    ids: Annotated[list[int] | None, typer.Argument(help="run ids (default: the newest runs)")] = None,
    last: Annotated[int, typer.Option("--last", help="how many of the newest runs")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:  # fmt: skip
    """Show stored eval runs side by side."""
    runs = _runs(ids, last)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in runs], indent=2))
        return
    if not runs:
        typer.echo("no eval runs stored yet (llmos eval perplexity MODEL makes one)")
        return
    from rich.console import Console
    from rich.table import Table

    from llmos.ops.evalstore import comparable

    # Few columns, so the table reads at 80 columns; --json has everything.
    kinds = len({r.kind for r in runs}) > 1
    lineage = any(_origin(r) for r in runs)
    table = Table("run")
    table.add_column("model", overflow="fold")
    if kinds:
        table.add_column("kind")
    if lineage:
        table.add_column("from", overflow="fold")
    score_col = "score" if kinds or runs[0].kind != "perplexity" else "perplexity"
    for col in (score_col, "size", "tok/s", "text@ctx"):
        table.add_column(col, justify="right" if col in ("size", "tok/s") else "left", no_wrap=True)
    for r in runs:
        sc = r.scores
        score = (
            f"{sc['ppl']:.4f} ± {sc.get('ppl_error', 0.0):.4f}" if "ppl" in sc else _headline(sc)
        )
        row = [str(r.id), r.model]
        if kinds:
            row.append(r.kind)
        if lineage:
            row.append(_origin(r))
        row += [
            score,
            _mb(r.size_bytes),
            "" if r.tokens_per_s is None else f"{r.tokens_per_s:.1f}",
            f"{r.file_sha256[:6]}@{r.settings.get('ctx', r.settings.get('set', ''))}",
        ]
        table.add_row(*row)
    Console().print(table)
    if not comparable(runs):
        typer.echo("note: these runs scored different files or contexts; compare like with like")


@eval_app.command("plot")
def eval_plot(
    out: Annotated[Path, typer.Argument(help="the PNG to write")],
    ids: Annotated[list[int] | None, typer.Argument(help="run ids (default: the newest runs)")] = None,
    last: Annotated[int, typer.Option("--last", help="how many of the newest runs")] = 10,
) -> None:  # fmt: skip
    """Draw perplexity against size and against tokens per second for stored runs."""
    runs = [r for r in _runs(ids, last) if "ppl" in r.scores]
    if not runs:
        raise fail("no perplexity runs to plot (llmos eval perplexity MODEL makes one)")
    try:
        _draw(runs, out)
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror}") from None
    typer.echo(f"wrote {out} ({len(runs)} runs)")


def _draw(runs: list[EvalRun], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, (by_size, by_speed) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    axes: list[tuple[Any, str, Any]] = [
        (by_size, "model file size (MB)", lambda r: (r.size_bytes or 0) / 1e6),
        (by_speed, "tokens per second (scoring)", lambda r: r.tokens_per_s or 0.0),
    ]
    for ax, label, x_of in axes:
        for r in runs:
            x, y = x_of(r), r.scores["ppl"]
            ax.errorbar(x, y, yerr=r.scores.get("ppl_error", 0.0), fmt="o", capsize=3)
            ax.annotate(
                f"{r.model} (#{r.id})",
                (x, y),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    by_size.set_ylabel("perplexity (lower is better)")
    fig.suptitle("Quality against size and speed")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
