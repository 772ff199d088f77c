"""`llmos models ...`: the model library from the command line (list, add, remove, info)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from llmos.cli.common import fail, run_async, settings
from llmos.core.units import human_bytes
from llmos.errors import LlmosError

models_app = typer.Typer(help="The model library: list, add, remove, info.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


# -- commands ----------------------------------------------------------------------------
def _library() -> Any:
    from llmos.kernel.models import ModelLibrary

    return ModelLibrary(settings().data_dir)


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List known models (built-in and added)."""
    try:
        entries = _library().list()
    except LlmosError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    reach = _reachable([e for e in entries if e.remote])
    table = Table("name", "kind", "where", "present", "source")
    for e in entries:
        meta = e.meta or {}
        if e.remote:
            row = ("remote", f"{meta.get('url')} ({meta.get('model')})", reach[e.name], "remote")
        else:
            kind = f"lora on {e.base}" if e.kind == "lora" else "model"
            present = "yes" if e.path.is_file() else "no"
            row = (kind, str(e.path), present, "built-in" if e.builtin else "added")
        table.add_row(e.name, *row)
    Console().print(table)


def _reachable(entries: list[Any]) -> dict[str, str]:
    """Whether each remote model's server answers now ("yes", or why not), asked at once."""
    from llmos.kernel.remote import probe

    async def one(e: Any) -> str:
        meta = e.meta or {}
        try:
            ids = await probe(str(meta.get("url")), meta.get("key_env"), wait_s=3.0)
        except LlmosError as exc:
            return f"no: {str(exc)[:60]}"
        return "yes" if not ids or meta.get("model") in ids else "yes (model not listed)"

    async def all_of() -> list[str]:
        return list(await asyncio.gather(*(one(e) for e in entries)))

    return dict(zip((e.name for e in entries), run_async(all_of()), strict=True)) if entries else {}


@models_app.command("add-remote")
def models_add_remote(
    name: Annotated[str, typer.Argument(help="its name here (in the catalog)")],
    url: Annotated[str, typer.Option("--url", help="the server's base URL, e.g. http://gpu:8080")],
    model: Annotated[str, typer.Option("--model", help="the model id the server knows it by")],
    key_env: Annotated[
        str | None,
        typer.Option(
            "--key-env", help="an environment variable holding its API key (never stored)"
        ),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, help="requests it takes at once; more wait here")
    ] = 4,
    ctx: Annotated[int, typer.Option("--ctx", min=256, help="its context length (tokens)")] = 4096,
) -> None:
    """Add a model another engine serves over an OpenAI-compatible API (llama-server, vLLM,
    Ollama, another llmos serve): the server is asked for its models first."""
    from llmos.kernel.remote import probe, probe_features, remote_meta

    if not url.startswith(("http://", "https://")):
        raise fail(f"--url must be an http:// or https:// URL, not {url!r}")
    try:
        ids = run_async(probe(url, key_env))
        if ids and model not in ids:
            raise fail(f"{url} does not serve {model!r} (it lists: {', '.join(ids[:10])})")
        features = run_async(probe_features(url, model, key_env))
        meta = remote_meta(
            url, model, key_env=key_env, parallel=parallel, n_ctx=ctx, features=features
        )
        entry = _library().add_remote(name, meta)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    said = {True: "yes", False: "no", None: "not known"}
    follows = ", ".join(f"{f} {said[features.get(f)]}" for f in ("grammar", "json_schema"))
    if features.get("schema_format") == "json_object":
        follows += " (as json_object)"
    typer.echo(f"added {entry.name}: {model} at {meta['url']} ({parallel} at once; {follows})")


@models_app.command("add")
def models_add(
    path: Path,
    name: Annotated[str | None, typer.Option("--name", help="name in the catalog")] = None,
) -> None:
    """Add a GGUF file to the catalog (its header is checked)."""
    try:
        entry = _library().add(path, name)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    meta = entry.meta or {}
    typer.echo(
        f"added {entry.name}: {meta.get('architecture')} {meta.get('quantization')}, {human_bytes(meta.get('size_bytes', 0))}"
    )


@models_app.command("pull")
def models_pull(
    repo: Annotated[str, typer.Argument(help="a Hugging Face model repo, owner/name")],
    file: Annotated[str | None, typer.Option("--file", help="the .gguf file in the repo")] = None,
    quant: Annotated[
        str | None, typer.Option("--quant", help="pick the GGUF whose name holds this, e.g. Q4_K_M")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="name in the catalog")] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="branch, tag or commit (default: main)")
    ] = None,
) -> None:
    """Download a GGUF from a Hugging Face repo (resumable, hash-checked) and add it.

    The one command that uses the network. HF_ENDPOINT: the hub; HF_TOKEN: gated repos."""
    import sys

    from llmos.cli.progress import Reporter
    from llmos.ops.pull import pull

    def ask(names: Any) -> str:
        for i, n in enumerate(names, 1):
            typer.echo(f"{i:3}  {n}", err=True)
        while True:
            pick = typer.prompt("which file", type=int, err=True)
            if 1 <= pick <= len(names):
                return str(names[pick - 1])
            typer.echo(f"a number from 1 to {len(names)}, please", err=True)

    # at a terminal, huggingface_hub's own bar (bytes, rate, time left); elsewhere a plain
    # line every few seconds (`Reporter`), in MB
    tty = sys.stderr.isatty()
    interactive = tty and sys.stdin.isatty()
    reporter = Reporter("off" if tty else "lines", {"download": ("downloading", "MB")})
    # huggingface_hub logs a warning on each retry, with the whole (often a signed CDN)
    # address; the bar or the lines show the stall, and a failure is one line of ours
    from huggingface_hub.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with reporter:
            pulled = pull(
                _library(), repo, file=file, quant=quant, name=name, revision=revision,
                ask=ask if interactive else None, bar=tty,
                progress=lambda done, total: reporter.update("download", done / 1e6, total / 1e6),
            )  # fmt: skip
    except LlmosError as exc:
        raise fail(str(exc)) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    entry, meta = pulled.entry, pulled.entry.meta or {}
    how = (
        f"resumed at {human_bytes(pulled.resumed_from)}" if pulled.resumed_from
        else "downloaded" if pulled.downloaded else "already here"
    )  # fmt: skip
    typer.echo(
        f"pulled {entry.name}: {meta.get('architecture')} {meta.get('quantization')}, "
        f"{human_bytes(meta.get('size_bytes', 0))} ({how}, sha256 checked)"
    )


@models_app.command("quantize")
def models_quantize(
    source: Annotated[str, typer.Argument(help="a model name or a .gguf path")],
    type_name: Annotated[
        str | None,
        typer.Option(
            "--type",
            "-t",
            help="llama.cpp's file type: Q4_K_M, Q5_K_M, Q8_0, F16, F32, ... "
            "(with --prune-layers alone: the source's)",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="name in the catalog")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace a model of that name")] = False,
    prune_layers: Annotated[
        str | None, typer.Option("--prune-layers", help="transformer blocks to drop, e.g. 10,11")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="0: every core")] = 0,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write a model at another quantization, or without some blocks, and add it.

    llama.cpp's own quantizer runs in a worker process; the new model's lineage (parent,
    operation, parameters) is kept in the catalog and shown by `models info`."""
    from llmos.cli.progress import Reporter
    from llmos.ops.quantize import quantize

    reporter = Reporter.for_flag(progress, {"quantize": ("quantizing", "tensors")})
    try:
        with reporter:
            done = quantize(
                _library(), source, type_name, name=name, force=force,
                prune_layers=prune_layers, nthread=threads,
                progress=lambda n, total: reporter.update("quantize", n, total),
                warn=lambda text: typer.echo(f"warning: {text}", err=True),
            )  # fmt: skip
    except LlmosError as exc:
        raise fail(str(exc)) from None
    for note in done.warnings:  # llama.cpp's: tensors whose shape took a fallback type
        typer.echo(f"note: {note}", err=True)
    p, meta = done.plan, done.entry.meta or {}
    if as_json:
        typer.echo(json.dumps({**done.entry.as_dict(), "seconds": round(done.seconds, 3)}))
        return
    blocks = ""
    if p.prune_layers:
        n = int(p.header.metadata.get(f"{p.header.architecture}.block_count", 0))
        blocks = f", {n - len(p.prune_layers)} of {n} blocks"
    typer.echo(
        f"{p.operation} {p.source.name} ({p.header.quantization}, {human_bytes(p.header.file_size)})"
        f" -> {done.entry.name} ({meta.get('quantization')}, "
        f"{human_bytes(meta.get('size_bytes', 0))}{blocks}) in {done.seconds:.1f} s"
    )


@models_app.command("finetune")
def models_finetune(
    base: Annotated[str, typer.Argument(help="the base model (a catalog name or a .gguf path)")],
    data: Annotated[Path, typer.Argument(help="JSONL: chat messages, or prompt/completion")],
    name: Annotated[str, typer.Option("--name", help="the adapter's name in the catalog")],
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank")] = 8,
    alpha: Annotated[float, typer.Option("--alpha", help="LoRA alpha (scale = alpha/rank)")] = 16.0,
    epochs: Annotated[int, typer.Option("--epochs")] = 2,
    lr: Annotated[float, typer.Option("--lr", help="learning rate (AdamW, cosine decay)")] = 1e-3,
    batch: Annotated[int, typer.Option("--batch", help="examples per optimizer step")] = 4,
    held_out: Annotated[float, typer.Option("--held-out", help="fraction held out for the loss report")] = 0.1,
    ctx: Annotated[int | None, typer.Option("--ctx", help="longest example, in tokens (default: the engine's)")] = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="cut examples over --ctx instead of failing")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an adapter of that name")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last epoch's checkpoint")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    merge: Annotated[str | None, typer.Option("--merge", help="also write a full model of this type with the adapter merged in")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:  # fmt: skip
    """Train a LoRA adapter for BASE on DATA and add it to the catalog.

    The loss covers the answer tokens only (assistant turns; `"weight": 0` leaves one out).
    Training runs in a worker process as a kernel process (`ps` shows its step and loss),
    checkpoints every epoch (--resume continues) and draws its loss curve beside the
    adapter. Run the result with `llmos run --model BASE+NAME` or model=BASE+NAME."""
    from llmos.cli.common import run_async
    from llmos.cli.progress import Reporter
    from llmos.kernel.kernel import Kernel
    from llmos.ops.finetune import finetune_program

    labels = {"tokenize": ("tokenizing", "examples"), "train": ("training", "steps")}
    reporter = Reporter.for_flag(progress, labels)
    box: dict[str, Any] = {}

    def on_event(ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "tokenize":
            reporter.update("tokenize", ev["done"], ev["total"])
        elif kind == "step":
            reporter.update("train", ev["step"], ev["steps"])
        elif kind == "epoch" and not as_json:
            held = ev.get("held_out_loss")
            extra = f", held-out loss {held:.4f}" if held is not None else ""
            typer.echo(f"epoch {ev['epoch']}: train loss {ev['train_loss']:.4f}{extra}", err=True)

    opts = {
        "rank": rank, "alpha": alpha, "epochs": epochs, "lr": lr, "batch": batch,
        "held_out": held_out, "seed": seed, "n_ctx": ctx, "truncate": truncate,
        "force": force, "resume": resume, "on_event": on_event, "box": box,
    }  # fmt: skip

    async def go() -> Any:
        async with Kernel(settings()) as k:
            proc = await k.spawn(
                finetune_program, base, str(data), name, opts, name="finetune", caps=()
            )
            await k.wait(proc.pid)
            return proc

    try:
        with reporter:
            proc = run_async(go())
    except LlmosError as exc:
        raise fail(str(exc)) from None
    if "error" in box:
        raise fail(str(box["error"]))
    if proc.exit_code != 0:
        raise fail(f"fine-tuning failed: {proc.message or proc.exit_reason}")
    out = proc.result
    if merge:
        _merge(out["adapter"], merge, None, force, progress)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    held = out.get("held_out_loss")
    typer.echo(
        f"adapter {out['adapter']} for {out['base']}: rank {out['rank']}, "
        f"{out['train_examples']} examples, train loss {out['train_loss']:.4f}"
        + (f", held-out loss {held:.4f}" if held is not None else "")
        + f", {out['tokens_per_s']} tok/s, {out['seconds']:.0f} s\n"
        f"loss curve: {out['plot']}\nrun it as model={out['base']}+{out['adapter']}"
    )


@models_app.command("distill")
def models_distill(
    prompts: Annotated[Path, typer.Argument(help="JSONL: messages or prompt per line (optional json_schema/grammar)")],
    teacher: Annotated[str, typer.Option("--teacher", help="the model that answers")],
    student: Annotated[str, typer.Option("--student", help="the model to adapt")],
    name: Annotated[str, typer.Option("--name", help="the adapter's name in the catalog")],
    json_schema: Annotated[Path | None, typer.Option("--json-schema", help="a JSON schema file the teacher answers under")] = None,
    grammar: Annotated[Path | None, typer.Option("--grammar", help="a GBNF grammar file the teacher answers under")] = None,
    held_out: Annotated[float, typer.Option("--held-out", help="fraction of prompts kept to measure agreement")] = 0.2,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="most tokens per answer")] = 256,
    epochs: Annotated[int, typer.Option("--epochs")] = 2,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    rank: Annotated[int, typer.Option("--rank")] = 8,
    force: Annotated[bool, typer.Option("--force", help="replace an adapter of that name")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:  # fmt: skip
    """Fine-tune STUDENT on TEACHER's answers to PROMPTS; report their agreement on held-out
    prompts before and after (exact match, ROUGE-L). The teacher may be the student itself
    under a constraint (--json-schema, --grammar, or per line)."""
    from llmos.cli.common import run_async
    from llmos.cli.progress import Reporter
    from llmos.kernel.kernel import Kernel
    from llmos.ops.distill import distill
    from llmos.ops.finetune import Hyper

    labels = {
        "teacher": ("teacher answering", "prompts"), "before": ("student before", "prompts"),
        "tokenize": ("tokenizing", "examples"), "train": ("training", "steps"),
        "after": ("student after", "prompts"),
    }  # fmt: skip
    reporter = Reporter.for_flag(progress, labels)

    def on_event(ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind in ("teacher", "before", "after", "tokenize"):
            reporter.update(kind, ev["done"], ev["total"])
        elif kind == "step":
            reporter.update("train", ev["step"], ev["steps"])

    try:
        schema = json.loads(json_schema.read_text()) if json_schema else None
        gbnf = grammar.read_text() if grammar else None
    except (OSError, json.JSONDecodeError) as exc:
        raise fail(f"could not read the constraint: {exc}") from None
    hyper = Hyper(rank=rank, epochs=epochs, lr=lr, held_out=0.0)

    async def go() -> dict[str, Any]:
        async with Kernel(settings()) as k:
            return await distill(
                k, teacher, student, prompts, name=name, schema=schema, grammar=gbnf,
                held_out=held_out, max_tokens=max_tokens, hyper=hyper, force=force,
                on_event=on_event,
            )  # fmt: skip

    try:
        with reporter:
            out = run_async(go())
    except LlmosError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    b, a = out["before"], out["after"]
    typer.echo(
        f"adapter {out['adapter']} for {out['base']}, taught by {out['teacher']} on "
        f"{out['train_prompts']} prompts\n"
        f"agreement on {out['held_out_prompts']} held-out prompts: exact match "
        f"{b['exact_match']:.0%} -> {a['exact_match']:.0%}, ROUGE-L {b['rougeL']:.3f} -> "
        f"{a['rougeL']:.3f}\nrun it as model={out['base']}+{out['adapter']}"
    )


@models_app.command("merge")
def models_merge(
    adapter: Annotated[str, typer.Argument(help="an adapter, or BASE+ADAPTER")],
    type_name: Annotated[str, typer.Option("--type", "-t", help="the output's type: Q8_0, Q4_K_M, F16, ...")] = "Q8_0",
    name: Annotated[str | None, typer.Option("--name", help="name in the catalog")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace a model of that name")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:  # fmt: skip
    """Fold a LoRA adapter into its base: a full model of --type, added with its lineage."""
    _merge(adapter, type_name, name, force, progress)


def _merge(
    adapter: str, type_name: str, name: str | None, force: bool, progress: bool | None
) -> None:
    from llmos.cli.progress import Reporter
    from llmos.ops.merge import merge

    labels = {"merge": ("merging", "tensors"), "quantize": ("quantizing", "tensors")}
    reporter = Reporter.for_flag(progress, labels)
    try:
        with reporter:
            done = merge(
                _library(), adapter, type_name, name=name, force=force, progress=reporter.update
            )
    except LlmosError as exc:
        raise fail(str(exc)) from None
    meta = done.entry.meta or {}
    typer.echo(
        f"merged {adapter} -> {done.entry.name} ({meta.get('quantization')}, "
        f"{human_bytes(meta.get('size_bytes', 0))}) in {done.seconds:.1f} s"
    )


def _lineage_text(lineage: dict[str, Any]) -> str:
    """One line for `models info`: "quantize of PARENT (Q4_1): type=Q8_0, ..."."""

    def show(v: Any) -> str:
        if isinstance(v, list):
            return ",".join(map(str, v))
        return json.dumps(v) if isinstance(v, bool) else str(v)

    if "operation" not in lineage:  # another origin (a hub): its fields as they are
        return ", ".join(f"{k}={show(v)}" for k, v in lineage.items())
    params = lineage.get("parameters") or {}
    shown = ", ".join(f"{k}={show(v)}" for k, v in params.items() if v not in (None, [], False))
    text = (
        f"{lineage['operation']} of {lineage.get('parent')} ({lineage.get('parent_quantization')})"
    )
    text += f": {shown}" if shown else ""
    if lineage.get("created"):
        text += f"; {lineage['created']}"
    if isinstance(lineage.get("parent_lineage"), dict):
        text += f" <- {_lineage_text(lineage['parent_lineage'])}"
    return text


@models_app.command("remove")
def models_remove(name: str) -> None:
    """Remove a model from the catalog (the file is left alone)."""
    try:
        _library().remove(name)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"removed {name}")


@models_app.command("info")
def models_info(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show a model's metadata, read from its GGUF header."""
    try:
        info = _library().info(name, settings().chat_formats)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if k == "size_bytes":
            v = f"{v} ({human_bytes(v)})"
        elif k == "parameters":
            v = f"{v:,}"
        elif k == "lineage" and isinstance(v, dict):
            v = _lineage_text(v)
        typer.echo(f"{k:16} {v}")
