"""The store of evaluation runs: one SQLite file, `<data_dir>/eval.db`.

Every run keeps what is needed to compare it with another later and to know whether the
comparison is fair: the model (catalog name, path, size, lineage when the catalog records
one), the input file's sha256 (two runs over different texts are not comparable), the
settings, the scores and the speed. Scores and settings are JSON objects, so other kinds of
evaluation (task sets, retrieval) can share the table with perplexity; the figures a
comparison sorts or plots by have their own columns.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmos.errors import UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,          -- 'perplexity', ...
    model         TEXT NOT NULL,          -- catalog name (or the GGUF's stem)
    model_path    TEXT NOT NULL,
    lineage       TEXT,                   -- JSON, when the catalog has it
    file          TEXT NOT NULL,          -- the evaluated file, as given
    file_sha256   TEXT NOT NULL,
    settings      TEXT NOT NULL,          -- JSON: ctx, batch, threads, ...
    scores        TEXT NOT NULL,          -- JSON: ppl, ppl_error, ...
    size_bytes    INTEGER,
    tokens_per_s  REAL,
    seconds       REAL,
    created       REAL NOT NULL           -- unix time
);
"""


@dataclass
class EvalRun:
    kind: str
    model: str
    model_path: str
    file: str
    file_sha256: str
    settings: dict[str, Any]
    scores: dict[str, Any]
    size_bytes: int | None = None
    tokens_per_s: float | None = None
    seconds: float | None = None
    lineage: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "model_path": self.model_path,
            "lineage": self.lineage,
            "file": self.file,
            "file_sha256": self.file_sha256,
            "settings": self.settings,
            "scores": self.scores,
            "size_bytes": self.size_bytes,
            "tokens_per_s": self.tokens_per_s,
            "seconds": self.seconds,
            "created": self.created,
        }


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def comparable(runs: Sequence[EvalRun]) -> bool:
    """Whether the perplexities among `runs` compare: all scored one text at one context."""
    texts = {(r.file_sha256, r.settings.get("ctx")) for r in runs if r.kind == "perplexity"}
    return len(texts) <= 1


class EvalStore:
    """Runs in SQLite. One connection per store; open it, use it, close it (a context
    manager). Writes are single statements, so a crash leaves no half-recorded run."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, data_dir: Path) -> EvalStore:
        return cls(data_dir / "eval.db")

    def __enter__(self) -> EvalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def add(self, run: EvalRun) -> int:
        with self._db:
            cur = self._db.execute(
                "INSERT INTO runs (kind, model, model_path, lineage, file, file_sha256,"
                " settings, scores, size_bytes, tokens_per_s, seconds, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.kind,
                    run.model,
                    run.model_path,
                    json.dumps(run.lineage) if run.lineage is not None else None,
                    run.file,
                    run.file_sha256,
                    json.dumps(run.settings),
                    json.dumps(run.scores),
                    run.size_bytes,
                    run.tokens_per_s,
                    run.seconds,
                    run.created,
                ),
            )
        run.id = int(cur.lastrowid or 0)
        return run.id

    def get(self, ids: list[int]) -> list[EvalRun]:
        """The runs with these ids, in the order given; an unknown id is a `UserError`."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(f"SELECT * FROM runs WHERE id IN ({marks})", ids).fetchall()
        found = {r["id"]: _run(r) for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UserError(f"no eval run {missing[0]} (llmos eval compare lists the runs)")
        return [found[i] for i in ids]

    def last(self, n: int) -> list[EvalRun]:
        """The `n` newest runs, oldest first (the order a table reads best in)."""
        rows = self._db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (n,)).fetchall()
        return [_run(r) for r in reversed(rows)]


def _run(row: sqlite3.Row) -> EvalRun:
    return EvalRun(
        id=row["id"],
        kind=row["kind"],
        model=row["model"],
        model_path=row["model_path"],
        lineage=json.loads(row["lineage"]) if row["lineage"] else None,
        file=row["file"],
        file_sha256=row["file_sha256"],
        settings=json.loads(row["settings"]),
        scores=json.loads(row["scores"]),
        size_bytes=row["size_bytes"],
        tokens_per_s=row["tokens_per_s"],
        seconds=row["seconds"],
        created=row["created"],
    )
