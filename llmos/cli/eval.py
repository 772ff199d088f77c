"""`llmos eval ...`: evaluate models (perplexity) and compare or plot the stored runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmos.cli.common import fail, run_async, settings
from llmos.errors import LlmosError

if TYPE_CHECKING:
    from llmos.ops.evalstore import EvalRun

eval_app = typer.Typer(
    help="Evaluate models (perplexity) and compare or plot the stored runs.",
    no_args_is_help=True,
)

_LABELS = {"chunks": ("scoring chunks", "chunks")}


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
    from llmos.ops.perplexity import evaluate_file, in_worker

    s = settings()
    n_threads = threads or s.n_threads
    with Reporter.for_flag(progress, _LABELS) as rep:
        run, result = run_async(
            in_worker(
                evaluate_file,
                s.data_dir,
                model,
                file,
                ctx=ctx,
                batch=batch,
                threads=n_threads,
                n_gpu_layers=s.n_gpu_layers,
                flash_attn=s.flash_attn,
                progress=lambda done, total: rep.update("chunks", done, total),
            )
        )
    if as_json:
        typer.echo(json.dumps({**run.as_dict(), "result": result.as_dict()}, indent=2))
        return
    typer.echo(
        f"perplexity  {result.ppl:.4f} ± {result.error:.4f}   "
        f"({run.model}, {result.n_chunks} chunks of {ctx} tokens, {result.n_scored} scored)"
    )
    typer.echo(f"speed       {result.tokens_per_s:.1f} tok/s ({result.seconds:.1f} s)")
    typer.echo(f"stored      run {run.id} (llmos eval compare {run.id})")


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
            f"{sc['ppl']:.4f} ± {sc.get('ppl_error', 0.0):.4f}"
            if "ppl" in sc
            else ", ".join(f"{k} {v:.4g}" for k, v in sc.items() if isinstance(v, float))
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
            f"{r.file_sha256[:6]}@{r.settings.get('ctx', '')}",
        ]
        table.add_row(*row)
    Console().print(table)
    texts = {(r.file_sha256, r.settings.get("ctx")) for r in runs if r.kind == "perplexity"}
    if len(texts) > 1:  # perplexities over different texts or contexts do not compare
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
