"""`llmos app ...`: install apps (folders with an `llmos-app.toml`), review and grant the
capabilities they ask for, run their entries as processes with exactly those grants
(docs/APPS.md). The store (`llmos/apps/store.py`) does the work; this is its UI."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmos.cli.common import fail, run_streamed, settings, terminal_approver
from llmos.errors import LlmosError

if TYPE_CHECKING:
    from llmos.apps.manifest import Manifest
    from llmos.apps.store import AppStore, Decision, InstalledApp, Staged
    from llmos.core.process import Process
    from llmos.kernel.kernel import Kernel

app_app = typer.Typer(
    help="Apps: install a folder with an llmos-app.toml, grant the capabilities it asks for, "
    "run it as a process with exactly those.",
    no_args_is_help=True,
)

YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="grant every capability it asks for (scripts)")
]
GrantOpt = Annotated[
    list[str] | None,
    typer.Option("--grant", metavar="CAP", help="grant this requested capability (repeatable)"),
]
DenyOpt = Annotated[
    list[str] | None,
    typer.Option("--deny", metavar="CAP", help="deny this requested capability (repeatable)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _store() -> AppStore:
    from llmos.apps.store import AppStore

    return AppStore(settings().data_dir)


def _get(name: str) -> InstalledApp:
    try:
        return _store().get(name)
    except LlmosError as exc:
        raise fail(str(exc)) from None


def _stage(store: AppStore, source: str) -> Staged:
    """Stage what `source` names: a folder, an archive or wheel, a git+ URL, or an index
    name (apps/index.py fetches, checks its sha256 and unpacks it into a temporary folder)."""
    from llmos.apps.index import materialize

    try:
        with materialize(source, settings().app_index) as local:
            return store.stage(local.path, record=local.record)
    except LlmosError as exc:
        raise fail(str(exc)) from None


def _risks(manifest: Manifest) -> dict[str, str]:
    from llmos.apps.store import capability_risk, known_capabilities

    known = known_capabilities()
    return {c: capability_risk(c, known) or "unknown" for c in manifest.capabilities}


def _interactive() -> bool:
    """Whether a person is there to answer the grant review (a test sets it)."""
    return sys.stdin.isatty()


def _review(staged: Staged, decision: Decision, *, yes: bool, chose: bool, verb: str) -> Decision:
    """Ask at the terminal about each capability still undecided; without a terminal,
    refuse unless --yes or --grant/--deny said something (then the rest are denied)."""
    if not decision.undecided:
        return decision
    m = staged.manifest
    if not _interactive():
        if not (yes or chose):
            staged.discard()
            raise fail(
                f"{m.name} asks for {', '.join(decision.undecided)} and there is no terminal "
                f"to ask; {verb} with --yes to grant them all, or --grant/--deny CAP for each"
            )
        decision.denied.extend(decision.undecided)
        decision.undecided = []
        return decision
    risks = _risks(m)
    typer.echo(f"{m.name} {m.version} by {m.author}: {m.description}")
    typer.echo("It asks for:")
    for cap in decision.undecided:
        typer.echo(f"  {cap}  ({risks[cap]} risk): {m.capabilities[cap]}")
    for cap in list(decision.undecided):
        ok = typer.confirm(f"Grant {cap}?", default=False)
        (decision.granted if ok else decision.denied).append(cap)
    decision.undecided = []
    return decision


def _summary(verb: str, app: InstalledApp) -> None:
    typer.echo(f"{verb} {app.name} {app.manifest.version}")
    typer.echo(f"  granted: {', '.join(app.granted) or '-'}")
    if app.denied:
        typer.echo(f"  denied:  {', '.join(app.denied)} (llmos app grants {app.name} --grant CAP)")


@app_app.command("install")
def install(
    source: Annotated[
        str,
        typer.Argument(
            help="an app folder (holding llmos-app.toml), an archive of one (.tar.gz, .zip), "
            "a wheel (.whl), a git+https:// URL, or a NAME from the index (llmos app search)",
            metavar="PATH|NAME|URL",
        ),
    ],
    yes: YesOpt = False,
    grant: GrantOpt = None,
    deny: DenyOpt = None,
) -> None:
    """Install an app: check it, show the capabilities it asks for and why, and grant them."""
    from llmos.apps.store import decide

    store = _store()
    staged = _stage(store, source)
    try:
        decision = decide(staged.manifest.capabilities, yes=yes, grant=grant or (), deny=deny or ())
        if (store.root / staged.manifest.name).exists():
            raise fail(
                f"{staged.manifest.name} is already installed "
                f"(llmos app update {staged.manifest.name})"
            )
        decision = _review(staged, decision, yes=yes, chose=bool(grant or deny), verb="install")
        installed = store.install(staged, decision)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    finally:
        staged.discard()  # (nothing left once installed: it was renamed into place)
    _summary("installed", installed)


@app_app.command("update")
def update(
    name: str,
    source: Annotated[
        str | None,
        typer.Argument(
            help="the new folder, archive, wheel, git+ URL or index:NAME "
            "(default: where it came from)",
            metavar="[PATH|URL]",
        ),
    ] = None,
    yes: YesOpt = False,
    grant: GrantOpt = None,
    deny: DenyOpt = None,
) -> None:
    """Re-install an app from its folder; capabilities it newly asks for are asked again."""
    from llmos.apps.store import decide

    old = _get(name)
    store = _store()
    staged = _stage(store, source or old.source)
    try:
        decision = decide(
            staged.manifest.capabilities, yes=yes, grant=grant or (), deny=deny or (),
            keep=old.granted, keep_denied=old.denied,
        )  # fmt: skip
        decision = _review(staged, decision, yes=yes, chose=bool(grant or deny), verb="update")
        updated = store.update(name, staged, decision)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    finally:
        staged.discard()
    _summary(f"updated ({old.manifest.version} ->)", updated)


@app_app.command("search")
def search(
    words: Annotated[
        list[str] | None, typer.Argument(help="words its name or description must all hold")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Apps to install by name: the built-in ones, installed packages', and the app_index's."""
    from llmos.apps.index import search as search_index

    try:
        found = search_index(words or [], settings().app_index)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([x.as_dict() for x in found], indent=2))
        return
    if not found:
        typer.echo("no app matches" if words else "no apps in the index")
        return
    rows = [("NAME", "VERSION", "FROM", "DESCRIPTION")]
    rows += [(x.name, x.version, x.origin, x.description) for x in found]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3])


@app_app.command("digest")
def digest(
    path: Annotated[Path, typer.Argument(help="an app archive, wheel or folder")],
) -> None:
    """The sha256 an index entry pins for PATH (a folder: over its files, docs/APPS.md)."""
    from llmos.apps.index import digest as digest_of

    if not path.exists():
        raise fail(f"{path}: no such file or folder")
    typer.echo(digest_of(path))


@app_app.command("list")
def list_apps(as_json: JsonOpt = False) -> None:
    """Installed apps."""
    apps = _store().list()
    if as_json:
        typer.echo(json.dumps([a.as_dict() for a in apps], indent=2))
        return
    if not apps:
        typer.echo("no apps installed (llmos app install PATH)")
        return
    typer.echo(f"{'NAME':<16} {'VERSION':<10} {'GRANTED':<8} DESCRIPTION")
    for a in apps:
        caps = f"{len(a.granted)}/{len(a.manifest.capabilities)}"
        typer.echo(f"{a.name:<16} {a.manifest.version:<10} {caps:<8} {a.manifest.description}")


@app_app.command("info")
def info(name: str, as_json: JsonOpt = False) -> None:
    """An app's manifest, where it came from, and what it was granted."""
    a = _get(name)
    if as_json:
        typer.echo(json.dumps(a.as_dict(), indent=2))
        return
    m = a.manifest
    typer.echo(f"{m.name} {m.version} by {m.author}")
    typer.echo(f"  {m.description}")
    typer.echo(f"  from:      {a.source}")
    typer.echo(f"  installed: {_when(a.installed)} (updated {_when(a.updated)})")
    typer.echo(f"  home:      /home/{m.name}")
    typer.echo(f"  models:    {', '.join(m.models) or '(the default model)'}")
    typer.echo("  entries:")
    for ename, e in m.entries.items():
        mark = " (default)" if ename == m.default_entry else ""
        typer.echo(f"    {ename}{mark}: {e.file}{' - ' + e.description if e.description else ''}")
    _print_caps(a)


def _print_caps(a: InstalledApp) -> None:
    typer.echo("  capabilities:")
    if not a.manifest.capabilities:
        typer.echo("    (none)")
    for cap, why in a.manifest.capabilities.items():
        state = "granted" if cap in a.granted else "denied"
        typer.echo(f"    {state:<8} {cap}: {why}")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else "-"


@app_app.command("grants")
def grants(
    name: str,
    revoke: Annotated[
        list[str] | None,
        typer.Option("--revoke", metavar="CAP", help="take back a granted capability"),
    ] = None,
    grant: GrantOpt = None,
) -> None:
    """Show an app's capabilities; --revoke or --grant change them."""
    a = _get(name)
    granted, denied = list(a.granted), list(a.denied)
    for cap in revoke or []:
        if cap not in granted:
            raise fail(f"--revoke {cap}: {name} does not hold it (llmos app grants {name})")
        granted.remove(cap)
        denied.append(cap)
    for cap in grant or []:
        if cap not in a.manifest.capabilities:
            raise fail(f"--grant {cap}: {name} does not ask for that capability")
        if cap not in granted:
            granted.append(cap)
        if cap in denied:
            denied.remove(cap)
    if revoke or grant:
        a = _store().set_grants(name, granted, denied)
    typer.echo(f"{a.name} {a.manifest.version}")
    _print_caps(a)


@app_app.command("remove")
def remove(
    name: str,
    purge: Annotated[
        bool, typer.Option("--purge", help="also delete its memory-FS home, /home/NAME")
    ] = False,
) -> None:
    """Uninstall an app (its grants go with it)."""
    try:
        home_gone = _store().remove(name, purge=purge)
    except LlmosError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"removed {name}" + (f" and /home/{name}" if home_gone else ""))


@app_app.command("caps")
def caps() -> None:
    """Capabilities an app may ask for, with the highest risk of what each unlocks."""
    from llmos.apps.store import UNCHECKED_PREFIX, known_capabilities

    for cap, risk in sorted(known_capabilities().items()):
        typer.echo(f"{cap:<16} {risk}")
    typer.echo(f"{UNCHECKED_PREFIX}*{'':<11} (not checked: an MCP server's tools)")


@app_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    name: str,
    args: Annotated[
        list[str] | None,
        typer.Argument(help="[ENTRY] then arguments for main(ctx, *args); ENTRY if it names one"),
    ] = None,
) -> None:
    """Run an app's entry as a process named after the app, with exactly its grants. Its
    entries are also programs `APP.ENTRY` that it may start as children (`proc.spawn`)."""
    from llmos.apps.launch import load_entries, spawn_app, split_entry
    from llmos.kernel.loader import ProgramError

    a = _get(name)
    entry, rest = split_entry(a, list(args or []))
    try:
        main, programs = load_entries(a, entry)
    except (ProgramError, LlmosError) as exc:
        raise fail(str(exc)) from None

    async def start(k: Kernel) -> Process:
        k.syscalls.approver = terminal_approver()
        return await spawn_app(k, a, main, programs, rest)

    run_streamed(start)


def register(app: Any) -> None:
    app.add_typer(app_app, name="app")
