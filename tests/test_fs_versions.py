"""File versions: appends are stored as their tails, every version still reads back whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from llmos.memory import store
from llmos.memory.fs import MemoryFS, NotFound


def stored_bytes(fs: MemoryFS, path: str) -> int:
    row = fs.db.execute("SELECT SUM(length(content)) FROM versions WHERE path = ?", (path,))
    return int(row.fetchone()[0])


def test_appends_store_tails_and_every_version_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "SNAPSHOT_EVERY", 4)  # cross several full copies
    fs = MemoryFS(tmp_path / "m")
    want: list[str] = []
    text = ""
    for i in range(11):
        line = f"turn {i}: " + "x" * 50 + "\n"
        text += line
        fs.append("/home/a/log.md", line, "a")
        want.append(text)
    fs.write("/home/a/log.md", "rewritten\n", "a")  # a plain write is a full copy
    want.append("rewritten\n")
    fs.append("/home/a/log.md", "and more\n", "a")
    want.append("rewritten\nand more\n")
    for v, expected in enumerate(want, 1):
        assert fs.read_version("/home/a/log.md", v, "a") == expected, v
    assert [h["size"] for h in fs.history("/home/a/log.md", "a")] == [len(w) for w in want]
    # full copies at versions 1, 4, 8 and the write at 12; tails elsewhere: far below the
    # sum of every version's size (what storing each whole would cost)
    assert stored_bytes(fs, "/home/a/log.md") < sum(len(w) for w in want) / 2
    assert fs.rollback("/home/a/log.md", 7, "a") == 14
    assert fs.read("/home/a/log.md", "a") == want[6]
    with pytest.raises(NotFound):
        fs.read_version("/home/a/log.md", 99, "a")


def test_a_data_dir_from_before_deltas_is_migrated(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    db = sqlite3.connect(d / "memory.db")
    db.executescript(
        "CREATE TABLE versions (path TEXT NOT NULL, version INTEGER NOT NULL, "
        "content TEXT NOT NULL, mtime REAL NOT NULL, PRIMARY KEY (path, version));"
        "INSERT INTO versions VALUES ('/tmp/old.md', 1, 'old text', 0);"
    )
    db.close()
    fs = MemoryFS(d)
    assert fs.read_version("/tmp/old.md", 1) == "old text"
    assert fs.history("/tmp/old.md") == [{"version": 1, "mtime": 0, "size": 8}]
