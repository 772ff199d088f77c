"""`Stat`: what the memory FS tells about a node, whether it lives in SQLite or is computed
by the `/proc` view. Its own module so both `fs` and `procfs` import it one way."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    path: str
    kind: str
    owner: str
    mode: int
    size: int
    version: int
    mtime: float
    readonly: bool
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = oct(self.mode)
        return d
