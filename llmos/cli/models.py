"""`llmos models ...`: the model library from the command line (list, add, remove, info)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from llmos.cli.common import fail, settings
from llmos.errors import LlmosError

models_app = typer.Typer(help="The model library: list, add, remove, info.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


# -- commands ----------------------------------------------------------------------------
def _library() -> Any:
    from llmos.kernel.models import ModelLibrary

    return ModelLibrary(settings().data_dir)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


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

    table = Table("name", "path", "present", "source")
    for e in entries:
        table.add_row(
            e.name,
            str(e.path),
            "yes" if e.path.is_file() else "no",
            "built-in" if e.builtin else "added",
        )
    Console().print(table)


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
        f"added {entry.name}: {meta.get('architecture')} {meta.get('quantization')}, {_human(meta.get('size_bytes', 0))}"
    )


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
            v = f"{v} ({_human(v)})"
        elif k == "parameters":
            v = f"{v:,}"
        typer.echo(f"{k:16} {v}")
