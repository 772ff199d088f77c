"""`llmos fs ...` and `llmos qa`: the memory filesystem from the command line.

Each command is one syscall (`fs.*`, `qa.ask`), made where the data lives:

- `--url URL`: through that daemon (`llmos serve`);
- `--local`: by an embedded kernel on the data directory (`LLMOS_DATA_DIR` overrides it),
  booted for this one command;
- neither: through the daemon at the configured address if one answers `/health` at once
  (it owns the data directory: two processes writing one Chroma index is unsafe), else
  embedded.

Embedded, the command runs as a short kernel process with the memory capabilities, like a
shell command, so permissions, approval and audit apply as they do to an agent's call. The
person typed the command, so a syscall that needs approval (mount) is approved for that
one call, unless the configured approval policy denies it outright.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from llmos.cli.common import fail, settings
from llmos.cli.progress import Reporter
from llmos.errors import LlmosError
from llmos.memory.mountscan import mount_summary, skipped_lines

fs_app = typer.Typer(
    help="The memory filesystem: mounts, files, versions, semantic search, fsck. Works on the "
    "data directory with an embedded kernel, or through a running daemon (--url).",
    no_args_is_help=True,
)

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="go through this daemon (default: the local one, if it runs)"),
]
LocalOpt = Annotated[
    bool, typer.Option("--local", help="use an embedded kernel even if a daemon runs")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
PROBE_S = 0.3  # how long the default daemon gets to answer /health


# -- where a command runs ----------------------------------------------------------------
def daemon_url(url: str | None, local: bool) -> str | None:
    """The daemon a command goes through, or None for an embedded kernel."""
    if url and local:
        raise fail("give --url or --local, not both")
    if local:
        return None
    if url:
        return url
    import httpx

    from llmos.client import default_url

    try:
        target = default_url()
    except LlmosError as exc:
        raise fail(str(exc)) from None
    try:
        resp = httpx.get(f"{target}/health", timeout=PROBE_S)
    except httpx.HTTPError:
        return None
    if resp.status_code >= 500:
        return None
    try:  # a daemon that says which data directory it owns, and it is not ours: embedded
        owned = resp.json().get("data_dir")
    except (ValueError, AttributeError):
        owned = None
    if owned and Path(owned).resolve() != Path(settings().data_dir).resolve():
        return None
    return target


@contextmanager
def _watching(fs: Any, flag: bool | None) -> Iterator[None]:
    """Progress of the filesystem's long work (a mount's reading, any indexing: mount,
    fsck) on stderr, as `--progress/--no-progress` asks (see `llmos.cli.progress`)."""
    reporter = Reporter.for_flag(flag)
    if reporter.mode == "off":
        yield
        return
    unwatch = fs.watch(reporter.update)
    try:
        with reporter:
            yield
    finally:
        unwatch()


def run_local(name: str, args: dict[str, Any], *, progress: bool | None = False) -> Any:
    """Boot a kernel on the data directory, make one syscall as a process, shut down.
    `progress`: as `--progress/--no-progress` (None: as stderr allows)."""
    import asyncio

    from llmos.kernel.kernel import Kernel
    from llmos.kernel.oneshot import run_syscall

    config = settings()
    label = f"cli:{name}"

    async def approve(ctx: Any, spec: Any, values: dict[str, Any]) -> bool:
        return bool(spec.name == name and ctx.process.name == label)  # the typed call only

    async def go() -> Any:
        async with Kernel(config) as k:
            k.syscalls.approver = approve
            watch: Any = nullcontext()
            if progress is not False:
                watch = _watching(k.memory, progress)
            with watch:  # the kernel's shutdown closes the memory FS
                return await run_syscall(k, name, args, label=label)

    try:
        return asyncio.run(go())
    except LlmosError as exc:
        raise fail(str(exc)) from None


def run_remote(url: str, name: str, args: dict[str, Any], via: Callable[[Any], Any] | None) -> Any:
    """Make the call through the daemon: its dedicated endpoint (`via`), else the generic
    syscall endpoint."""
    from llmos.cli.remote import connect

    with connect(url) as c:
        if via is not None:
            return via(c)
        return c.syscall(name, **{k: v for k, v in args.items() if v is not None})


def call(
    name: str,
    args: dict[str, Any],
    url: str | None,
    local: bool,
    *,
    via: Callable[[Any], Any] | None = None,
    progress: bool | None = False,
) -> Any:
    """Syscall `name(**args)` wherever the options say; one `error:` line on failure.
    `progress`: False none; True always; None as stderr allows (a bar at a terminal, else
    periodic lines once the work takes a while)."""
    target = daemon_url(url, local)
    if target is None:
        return run_local(name, args, progress=progress)
    if not (progress or (progress is None and sys.stderr.isatty())):
        # (the daemon does the work and sends no progress: only a terminal gets a spinner)
        return run_remote(target, name, args, via)
    from rich.console import Console

    with Console(stderr=True).status(f"{name} in the daemon at {target}"):
        return run_remote(target, name, args, via)


# -- output ------------------------------------------------------------------------------
def _json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _mode(kind: str, mode: str) -> str:
    bits = int(mode, 8)  # fs.ls and fs.stat give it as octal text ("0o644")
    rwx = "".join(ch if bits & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return ("d" if kind == "dir" else "-") + rwx


def _when(ts: Any) -> str:
    return datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def _show_entries(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        name = e["path"] + ("/" if e["kind"] == "dir" else "")
        typer.echo(
            f"{_mode(e['kind'], e['mode'])} {e['owner']:12} "
            f"{e['size']:>8} v{e['version']:<3} {name}"
        )


# -- commands ----------------------------------------------------------------------------
@fs_app.command("mount")
def fs_mount(
    host: Annotated[Path, typer.Argument(help="host folder to mount read-only")],
    name: Annotated[str, typer.Argument(help="mounted at /mnt/NAME")],
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", metavar="GLOB",
            help="only files whose path or name matches (repeatable)",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", metavar="GLOB",
            help="leave files and folders whose path or name matches (repeatable)",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="list skipped files with the reason")
    ] = False,
    url: UrlOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="progress (default: a bar at a terminal, else a line every 2 s of long work)",
        ),
    ] = None,
) -> None:  # fmt: skip
    """Mount (or re-sync) a host folder read-only at /mnt/NAME and index it.

    Text files are taken by content (any name: README, Makefile, notes.0), PDFs through
    pypdf; binaries, files over mount_max_file_bytes and tool folders (.git, node_modules,
    virtualenvs, caches) are skipped, and counted by reason."""
    folder = host.expanduser().resolve()
    if not folder.is_dir():
        raise fail(f"{host} is not a folder")
    args: dict[str, Any] = {"host": str(folder), "name": name}
    if include:
        args["include"] = include
    if exclude:
        args["exclude"] = exclude
    stats = call("fs.mount", args, url, local, progress=progress)
    if as_json:
        _json(stats)
        return
    typer.echo(f"mounted {folder} at /mnt/{name}: {mount_summary(stats)}")
    if verbose:
        for line in skipped_lines(stats):
            typer.echo(line)


@fs_app.command("umount")
def fs_umount(name: str, url: UrlOpt = None, local: LocalOpt = False) -> None:
    """Unmount /mnt/NAME (its files leave memory and the index)."""
    out = call("fs.umount", {"name": name}, url, local)
    typer.echo(f"unmounted /mnt/{name} ({out['removed']} entries)")


@fs_app.command("ls")
def fs_ls(
    path: Annotated[str, typer.Argument(help="directory")] = "/",
    url: UrlOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List a directory: mode, owner, size, version, path."""
    entries = call("fs.ls", {"path": path}, url, local, via=lambda c: c.fs_ls(path))
    if as_json:
        _json(entries)
    else:
        _show_entries(entries)


@fs_app.command("cat")
def fs_cat(
    path: str, url: UrlOpt = None, local: LocalOpt = False, as_json: JsonOpt = False
) -> None:
    """Print a file."""
    text = call("fs.read", {"path": path}, url, local, via=lambda c: c.fs_read(path))
    if as_json:
        _json(text)
    else:
        typer.echo(text)


@fs_app.command("write")
def fs_write(
    path: str,
    text: Annotated[str | None, typer.Argument(help="content (default: read stdin)")] = None,
    url: UrlOpt = None,
    local: LocalOpt = False,
) -> None:
    """Write a file (a new version of it if it exists)."""
    content = sys.stdin.read() if text is None else text
    out = call(
        "fs.write", {"path": path, "content": content}, url, local,
        via=lambda c: c.fs_write(path, content),
    )  # fmt: skip
    typer.echo(f"wrote {path} (version {out['version']})")


@fs_app.command("mkdir")
def fs_mkdir(path: str, url: UrlOpt = None, local: LocalOpt = False) -> None:
    """Make a directory and any missing parents."""
    call("fs.mkdir", {"path": path}, url, local)
    typer.echo(f"made {path}/")


@fs_app.command("rm")
def fs_rm(
    path: str,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="a whole tree")] = False,
    url: UrlOpt = None,
    local: LocalOpt = False,
) -> None:
    """Remove a file or an empty directory (-r: a tree)."""
    args = {"path": path, "recursive": recursive or None}
    call("fs.rm", args, url, local, via=None if recursive else (lambda c: c.fs_rm(path)))
    typer.echo(f"removed {path}")


@fs_app.command("search")
def fs_search(
    query: str,
    path: Annotated[str | None, typer.Argument(help="search under this path")] = None,
    k: Annotated[int, typer.Option("-k", help="how many results")] = 5,
    url: UrlOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Semantic search: the chunks closest in meaning to QUERY, best first."""
    hits = call(
        "fs.search", {"query": query, "path": path, "k": k}, url, local,
        via=lambda c: c.fs_search(query, k, path),
    )  # fmt: skip
    if as_json:
        _json(hits)
        return
    for h in hits:
        snippet = " ".join(str(h["text"]).split())
        snippet = snippet if len(snippet) <= 80 else snippet[:77] + "..."
        typer.echo(f"{h['score']:.3f}  {h['path']}  {snippet}")


@fs_app.command("find")
def fs_find(
    pattern: Annotated[str, typer.Argument(help="glob on names (on paths if it has a /)")],
    path: Annotated[str, typer.Argument(help="under this path")] = "/",
    url: UrlOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Paths whose name matches a glob."""
    found = call("fs.find", {"pattern": pattern, "path": path}, url, local)
    if as_json:
        _json(found)
        return
    for p in found:
        typer.echo(p)


@fs_app.command("grep")
def fs_grep(
    pattern: Annotated[str, typer.Argument(help="regular expression")],
    path: Annotated[str, typer.Argument(help="under this path")] = "/",
    url: UrlOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Lines matching a regular expression, as PATH:LINE:TEXT."""
    found = call("fs.grep", {"pattern": pattern, "path": path}, url, local)
    if as_json:
        _json(found)
        return
    for m in found:
        typer.echo(f"{m['path']}:{m['line']}:{m['text']}")


@fs_app.command("history")
def fs_history(
    path: str, url: UrlOpt = None, local: LocalOpt = False, as_json: JsonOpt = False
) -> None:
    """A file's versions (oldest first)."""
    rows = call("fs.history", {"path": path}, url, local)
    if as_json:
        _json(rows)
        return
    for r in rows:
        typer.echo(f"v{r['version']:<4} {_when(r['mtime'])}  {r['size']:>8} chars")


@fs_app.command("rollback")
def fs_rollback(
    path: str,
    version: Annotated[int, typer.Argument(help="the version to make current again")],
    url: UrlOpt = None,
    local: LocalOpt = False,
) -> None:
    """Make an old version current again (as a new version: history is kept)."""
    out = call("fs.rollback", {"path": path, "version": version}, url, local)
    typer.echo(f"{path}: version {version} restored as version {out['version']}")


@fs_app.command("fsck")
def fs_fsck(
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="drop the index and rebuild it from the files")
    ] = False,
    url: UrlOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="progress (default: a bar at a terminal, else a line every 2 s of long work)",
        ),
    ] = None,
) -> None:
    """Check the semantic index against the files and repair it."""
    report = call("fs.fsck", {"rebuild": rebuild or None}, url, local, progress=progress)
    if as_json:
        _json(report)
        return
    for key, value in report.items():
        typer.echo(f"{key:10} {value}")


def qa(
    question: str,
    scope: Annotated[str, typer.Option("--scope", help="answer from files under this path")] = "/",
    k: Annotated[int, typer.Option("-k", help="chunks retrieved")] = 4,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 128,
    url: UrlOpt = None,
    local: LocalOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from the memory filesystem (RetrievalQA), citing source paths."""
    args = {"question": question, "scope": scope, "k": k, "max_tokens": max_tokens}
    out = call("qa.ask", args, url, local)
    if as_json:
        _json(out)
        return
    typer.echo(out["answer"])
    sources = out["sources"]
    if sources:
        typer.echo("sources:")
        for s in sources:
            typer.echo(f"  {s}")
    else:
        typer.echo("sources: none found under " + scope)


def register(app: typer.Typer) -> None:
    app.add_typer(fs_app, name="fs")
    app.command("qa")(qa)
