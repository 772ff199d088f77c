"""Installed apps and their grants, under `<data_dir>/apps/` (no UI here; `llmos app` is one).

    apps/<name>/app/           a copy of the folder it was installed from
    apps/<name>/install.json   where from, when, and the capabilities granted and denied

An install or update is staged in a hidden folder beside them (copy, read the manifest,
check every capability exists and every entry imports) and only then renamed into place,
so a bad app leaves nothing behind, and an update that fails leaves the old one as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from llmos.apps.manifest import MANIFEST, Manifest, load_manifest
from llmos.errors import UserError

STATE = "install.json"
RISKS = ("low", "medium", "high")
# Capabilities checked outside the syscall table (the sandbox's network and host files,
# killing others' processes), with the risk a person should see beside them.
EXTRA_CAPABILITIES = {"net": "high", "host.read": "high", "admin.proc": "medium"}
# Patterns a future MCP client's tools will carry; not checked against anything yet.
UNCHECKED_PREFIX = "mcp."
# What an install leaves out of the app folder's copy (and its digest, apps/index.py).
NOT_COPIED = ("__pycache__", "*.pyc", ".git")


class AppError(UserError):
    """An app that can't be installed, updated, run or found."""


def known_capabilities() -> dict[str, str]:
    """Every capability a grant can name, with the highest risk of what it unlocks: those of
    the syscalls (built-in and plug-in, read from the registry without booting a kernel)."""
    from llmos.kernel.registry import load_tools

    out = dict(EXTRA_CAPABILITIES)
    for spec, _plugin in load_tools():
        old = out.get(spec.capability, "low")
        out[spec.capability] = max(old, spec.risk, key=RISKS.index)
    return out


def capability_risk(cap: str, known: dict[str, str]) -> str | None:
    """The highest risk among the capabilities `cap` (a name or pattern, maybe with a
    `:scope`) matches; "all" for `*`, "unknown" for an unchecked `mcp.` one; None: it
    matches nothing that exists."""
    name = cap.partition(":")[0]
    if name == "*":
        return "all"
    if name.startswith(UNCHECKED_PREFIX):
        return "unknown"
    risks = [r for c, r in known.items() if fnmatchcase(c, name)]
    return max(risks, key=RISKS.index) if risks else None


@dataclass
class InstalledApp:
    name: str
    dir: Path  # apps/<name>/
    manifest: Manifest
    source: str
    granted: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    installed: float = 0.0
    updated: float = 0.0

    @property
    def files(self) -> Path:
        return self.dir / "app"

    def entry_file(self, entry: str | None = None) -> Path:
        ename = entry or self.manifest.default_entry
        if ename not in self.manifest.entries:
            raise AppError(
                f"{self.name} has no entry {ename!r} (entries: {', '.join(self.manifest.entries)})"
            )
        return self.files / self.manifest.entries[ename].file

    def as_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name, "version": m.version, "description": m.description,
            "author": m.author, "models": m.models, "source": self.source,
            "entries": {k: e.model_dump() for k, e in m.entries.items()},
            "capabilities": m.capabilities, "granted": self.granted, "denied": self.denied,
            "installed": self.installed, "updated": self.updated,
        }  # fmt: skip


@dataclass
class Staged:
    """A checked copy of an app folder, not yet installed: `commit` or `discard` it."""

    tmp: Path
    manifest: Manifest
    source: Path
    # What install.json records as where it came from (and `update` fetches again): the
    # folder, or an archive, `git+` URL or `index:NAME` it was unpacked from (apps/index.py).
    record: str = ""

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Decision:
    granted: list[str]
    denied: list[str]
    undecided: list[str]


def decide(
    requested: Iterable[str], *, yes: bool = False, grant: Iterable[str] = (),
    deny: Iterable[str] = (), keep: Iterable[str] = (), keep_denied: Iterable[str] = (),
) -> Decision:  # fmt: skip
    """Sort requested capabilities into granted, denied and still to ask, from `--grant`,
    `--deny` (which win), `--yes` (the rest), and earlier decisions (`keep`, `keep_denied`)."""
    req = list(requested)
    for flag, caps in (("--grant", grant), ("--deny", deny)):
        for c in caps:
            if c not in req:
                raise AppError(f"{flag} {c}: the app does not ask for that capability")
    g, d, k, kd = set(grant), set(deny), set(keep), set(keep_denied)
    out = Decision([], [], [])
    for c in req:
        if c in d:
            out.denied.append(c)
        elif c in g or c in k:
            out.granted.append(c)
        elif c in kd:
            out.denied.append(c)
        elif yes:
            out.granted.append(c)
        else:
            out.undecided.append(c)
    return out


class AppStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "apps"

    # -- reading ------------------------------------------------------------------------
    def list(self) -> list[InstalledApp]:
        if not self.root.is_dir():
            return []
        return [
            self._read(d)
            for d in sorted(self.root.iterdir())
            if not d.name.startswith(".") and (d / STATE).is_file()
        ]

    def get(self, name: str) -> InstalledApp:
        d = self.root / name
        if name.startswith(".") or "/" in name or not (d / STATE).is_file():
            raise AppError(f"no app named {name!r} is installed (llmos app list)")
        return self._read(d)

    def _read(self, d: Path) -> InstalledApp:
        state = json.loads((d / STATE).read_text(encoding="utf-8"))
        manifest = load_manifest(d / "app")
        return InstalledApp(
            name=d.name, dir=d, manifest=manifest, source=state.get("source", ""),
            granted=list(state.get("granted", [])), denied=list(state.get("denied", [])),
            installed=float(state.get("installed", 0)), updated=float(state.get("updated", 0)),
        )  # fmt: skip

    # -- staging ------------------------------------------------------------------------
    def stage(self, path: str | Path, *, record: str | None = None) -> Staged:
        """Copy the app folder at `path` beside the installed apps and check it: its
        manifest, that each capability it asks for exists, and that each entry imports.
        `record` is where it came from when `path` is a temporary unpacked copy: errors
        and install.json name that instead of the copy."""
        src = Path(path).expanduser().resolve()
        if src.is_file() and src.name == MANIFEST:
            src = src.parent
        if record is None:
            return self._stage(src, str(src))
        try:
            return self._stage(src, record)
        except UserError as exc:  # name where it came from, not the temporary copy
            raise type(exc)(str(exc).replace(str(src), record)) from None

    def _stage(self, src: Path, record: str) -> Staged:
        from llmos.kernel.loader import ProgramError, load_program

        load_manifest(src)  # a bad manifest fails before anything is copied
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            shutil.copytree(src, tmp / "app", ignore=shutil.ignore_patterns(*NOT_COPIED))
            manifest = load_manifest(tmp / "app")
            known = known_capabilities()
            for cap in manifest.capabilities:
                if capability_risk(cap, known) is None:
                    raise AppError(
                        f'{src / MANIFEST}: capabilities."{cap}": no such capability '
                        "(llmos app caps lists them)"
                    )
            for ename, entry in manifest.entries.items():
                try:
                    load_program(tmp / "app" / entry.file)
                except ProgramError as exc:
                    msg = str(exc).replace(str(tmp / "app"), str(src))
                    raise AppError(f"entries.{ename}: {msg}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Staged(tmp, manifest, src, record)

    # -- changing -----------------------------------------------------------------------
    def install(self, staged: Staged, decision: Decision) -> InstalledApp:
        name = staged.manifest.name
        target = self.root / name
        if target.exists():
            staged.discard()
            raise AppError(f"{name} is already installed (llmos app update {name})")
        now = time.time()
        self._write_state(staged.tmp, staged.record or str(staged.source), decision, now, now)
        os.replace(staged.tmp, target)  # one rename: installed, or not at all
        return self.get(name)

    def update(self, name: str, staged: Staged, decision: Decision) -> InstalledApp:
        old = self.get(name)
        if staged.manifest.name != name:
            staged.discard()
            raise AppError(
                f"that folder holds app {staged.manifest.name!r}, not {name!r} (names are "
                "identities: install it as a new app instead)"
            )
        self._write_state(
            staged.tmp, staged.record or str(staged.source), decision, old.installed, time.time()
        )
        retired = self.root / f".retired-{name}-{os.getpid()}"
        os.replace(old.dir, retired)
        try:
            os.replace(staged.tmp, old.dir)
        except BaseException:
            os.replace(retired, old.dir)
            raise
        shutil.rmtree(retired, ignore_errors=True)
        return self.get(name)

    def set_grants(self, name: str, granted: Iterable[str], denied: Iterable[str]) -> InstalledApp:
        app = self.get(name)
        state = json.loads((app.dir / STATE).read_text(encoding="utf-8"))
        state["granted"], state["denied"] = [*granted], [*denied]
        _atomic_write(app.dir / STATE, json.dumps(state, indent=2))
        return self.get(name)

    def remove(self, name: str, *, purge: bool = False) -> bool:
        """Uninstall; with `purge` also delete its memory-FS home. True if a home was removed."""
        app = self.get(name)
        retired = self.root / f".removed-{name}-{os.getpid()}"
        os.replace(app.dir, retired)  # gone from `list` at once, even if rmtree is slow
        shutil.rmtree(retired, ignore_errors=True)
        return purge and self.purge_home(name)

    def purge_home(self, name: str) -> bool:
        """Delete `/home/<name>` from the memory FS (SQLite only: no model is loaded; the
        index drops the files' chunks at its next sync)."""
        if not (self.data_dir / "memory" / "memory.db").is_file():
            return False
        from llmos.memory.fs import MemoryFS

        fs = MemoryFS(self.data_dir / "memory")
        try:
            home = f"/home/{name}"
            if not fs.exists(home):
                return False
            fs.rm(home, recursive=True)
            return True
        finally:
            fs.close()

    def _write_state(
        self, d: Path, source: str, decision: Decision, installed: float, updated: float
    ) -> None:
        state = {
            "source": source, "granted": decision.granted, "denied": decision.denied,
            "installed": installed, "updated": updated,
        }  # fmt: skip
        _atomic_write(d / STATE, json.dumps(state, indent=2))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
