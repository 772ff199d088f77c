"""An app's manifest, `llmos-app.toml`: who it is, its entry programs, and the capabilities
it asks for, each with the reason a person reads before granting it (docs/APPS.md).

    name = "hello"
    version = "0.1.0"
    description = "Greets you and does a sum."
    author = "llmos"
    models = []                      # model names it needs; none: the default model

    [entries]                        # the first one is the default
    main = { file = "main.py", description = "greet and add" }

    [capabilities]                   # capability -> why the app needs it
    calc = "adds up the numbers you give it"

A bad manifest is one `ManifestError` line naming the field (`load_manifest`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmos.errors import UserError

MANIFEST = "llmos-app.toml"
# An app's name is its process name, and so its memory-FS identity (`/home/<name>`):
# no dots (`proc.spawn` names children `<parent>.<program>`), nothing an FS path can't hold.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
# Identities the memory FS gives a meaning of its own (root: every permission; self: "me").
RESERVED_NAMES = frozenset({"root", "self"})

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\n]*$")]


class ManifestError(UserError):
    """A manifest that can't be used: unreadable, not TOML, or a field that fails its check."""


class Entry(BaseModel):
    """One entry program: a file in the app folder defining `async def main(ctx, *args)`."""

    model_config = ConfigDict(extra="forbid")

    file: str
    description: str = ""

    @field_validator("file")
    @classmethod
    def _inside(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts or "\\" in v:
            raise ValueError("must be a relative path inside the app folder")
        return v


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    version: Annotated[str, Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,39}$")]
    description: Text
    author: Text
    models: list[str] = []
    entries: dict[Name, Entry] = Field(min_length=1)
    capabilities: dict[str, Text] = {}

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_NAMES:
            raise ValueError(f"{v!r} is reserved (it means something to the memory FS)")
        return v

    @field_validator("capabilities")
    @classmethod
    def _cap_syntax(cls, v: dict[str, str]) -> dict[str, str]:
        for cap in v:
            name, _, _ = cap.partition(":")
            if not name or any(ch.isspace() for ch in cap):
                raise ValueError(f'"{cap}": expected a capability such as calc or fs.read:/mnt/**')
        return v

    @property
    def default_entry(self) -> str:
        return next(iter(self.entries))


def _loc(loc: tuple[str | int, ...]) -> str:
    # dict keys such as "time.*" are quoted so the field reads as TOML would name it
    parts = [str(p) if re.fullmatch(r"[A-Za-z0-9_-]+", str(p)) else f'"{p}"' for p in loc]
    return ".".join(parts) or "manifest"


def parse_manifest(text: str, where: str = MANIFEST) -> Manifest:
    """The manifest in `text`; `where` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: not valid TOML: {exc}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        # A dict key that fails its pattern is reported at "[key]"; name the key itself.
        loc = tuple(p for p in err["loc"] if p != "[key]")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise ManifestError(f"{where}: {_loc(loc)}: {msg}") from None


def load_manifest(path: str | Path) -> Manifest:
    """The manifest of an app folder (or of the manifest file itself), checked: its fields,
    and that each entry's file exists. Capabilities and imports are checked by the store."""
    p = Path(path).expanduser()
    file = p / MANIFEST if p.is_dir() else p
    if not file.is_file():
        raise ManifestError(f"{p}: no {MANIFEST} there (an app is a folder with one)")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{file}: cannot read it: {exc}") from None
    manifest = parse_manifest(text, str(file))
    for ename, entry in manifest.entries.items():
        if not (file.parent / entry.file).is_file():
            raise ManifestError(f"{file}: entries.{ename}.file: no such file {entry.file!r}")
    return manifest
