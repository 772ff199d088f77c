"""The SQLite side of the memory FS (WAL, the truth): its schema, its transactions, and the
few writes every operation is built from.

Every change stores its content, its version and an index-journal row in one transaction,
so whatever the index (`sync`) missed, the journal still names. Rows are read by column
name (`sqlite3.Row`): a query's column order is no contract.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmos.errors import BadArguments
from llmos.memory.paths import ancestors

ROOT = "root"
SNAPSHOT_EVERY = 64  # versions: a full copy at least this often, appends in between
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL, mode INTEGER NOT NULL,
    content TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 0,
    mtime REAL NOT NULL, sha TEXT NOT NULL DEFAULT '', readonly INTEGER NOT NULL DEFAULT 0,
    source TEXT, source_mtime REAL
);
CREATE TABLE IF NOT EXISTS versions (
    path TEXT NOT NULL, version INTEGER NOT NULL, content TEXT NOT NULL, mtime REAL NOT NULL,
    delta INTEGER NOT NULL DEFAULT 0, size INTEGER,
    PRIMARY KEY (path, version)
);
CREATE TABLE IF NOT EXISTS index_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mounts (name TEXT PRIMARY KEY, host TEXT NOT NULL);
"""


class FsError(BadArguments):
    kind = "fs_error"


class NotFound(FsError):
    kind = "not_found"


class ReadOnly(FsError):
    kind = "read_only"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def is_home(path: str) -> bool:
    """`/home/<agent>` itself: created private to its agent, whoever makes it."""
    return path.count("/") == 2 and path.startswith("/home/")


class Store:
    """The `memory.db` connection. Writes go through `tx()`; the helpers that take `c` run
    inside one."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk
        self.db.executescript(_SCHEMA)
        cols = {str(r["name"]) for r in self.db.execute("PRAGMA table_info(versions)")}
        if "delta" not in cols:  # a data dir from before appends were stored as deltas
            self.db.execute("ALTER TABLE versions ADD COLUMN delta INTEGER NOT NULL DEFAULT 0")
            self.db.execute("ALTER TABLE versions ADD COLUMN size INTEGER")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- reads -------------------------------------------------------------------------
    def row(self, path: str) -> sqlite3.Row | None:
        cur = self.db.execute(
            "SELECT path, kind, owner, mode, content, version, mtime, sha, readonly, source, "
            "source_mtime FROM nodes WHERE path = ?",
            (path,),
        )
        row: sqlite3.Row | None = cur.fetchone()
        return row

    def need(self, path: str) -> sqlite3.Row:
        row = self.row(path)
        if row is None:
            raise NotFound(f"{path}: no such file or directory")
        return row

    def subtree(self, root: str) -> list[tuple[str, str]]:
        """(path, kind) of `root` and every node under it, in path order."""
        if root == "/":
            cur = self.db.execute("SELECT path, kind FROM nodes ORDER BY path")
        else:
            cur = self.db.execute(
                "SELECT path, kind FROM nodes WHERE path = ? OR substr(path, 1, ?) = ? "
                "ORDER BY path",
                (root, len(root) + 1, root + "/"),
            )
        return [(str(r["path"]), str(r["kind"])) for r in cur]

    def pending(self) -> int:
        """Journal rows not yet applied to the index."""
        return int(self.db.execute("SELECT count(*) FROM index_journal").fetchone()[0])

    # -- writes (inside `tx`) ----------------------------------------------------------
    def add_dir(
        self,
        c: sqlite3.Connection,
        path: str,
        owner: str,
        mode: int,
        *,
        readonly: bool = False,
        source: str | None = None,
    ) -> None:
        c.execute(
            "INSERT INTO nodes(path, kind, owner, mode, mtime, readonly, source) "
            "VALUES (?, 'dir', ?, ?, ?, ?, ?)",
            (path, owner, mode, self.clock(), int(readonly), source),
        )

    def add_user_dir(self, c: sqlite3.Connection, path: str, user: str) -> None:
        """A directory `user` makes: 0o755 and theirs, but a home is its agent's, 0o700."""
        if is_home(path):
            self.add_dir(c, path, path.split("/")[2], 0o700)
        else:
            self.add_dir(c, path, user, 0o755)

    def mkparents(self, c: sqlite3.Connection, path: str, user: str) -> None:
        for a in ancestors(path):
            row = self.row(a)
            if row is None:
                self.add_user_dir(c, a, user)
            elif row["kind"] != "dir":
                raise FsError(f"{path}: {a} is a file, not a directory")

    def put(
        self,
        c: sqlite3.Connection,
        path: str,
        content: str,
        user: str,
        *,
        tail: str | None = None,
        **extra: Any,
    ) -> int:
        """Store `content` as the file's new version. `tail`: what an append added, so the
        version row holds only that (a full copy every SNAPSHOT_EVERY versions bounds the
        replay), and a growing log costs its growth, not its size, per version.
        `extra`: owner, mode, readonly, source and source_mtime of a new file (a mount's)."""
        row = self.row(path)
        now = self.clock()
        sha = sha256(content)
        if row is not None and row["kind"] == "dir":
            raise FsError(f"{path}: is a directory")
        if row is None:
            self.mkparents(c, path, user)
            version = 1
            c.execute(
                "INSERT INTO nodes(path, kind, owner, mode, content, version, mtime, sha, "
                "readonly, source, source_mtime) VALUES (?, 'file', ?, ?, ?, 1, ?, ?, ?, ?, ?)",
                (
                    path,
                    extra.get("owner", user),
                    extra.get("mode", 0o644),
                    content,
                    now,
                    sha,
                    int(extra.get("readonly", False)),
                    extra.get("source"),
                    extra.get("source_mtime"),
                ),
            )
        else:
            version = int(row["version"]) + 1
            c.execute(
                "UPDATE nodes SET content = ?, version = ?, mtime = ?, sha = ?, "
                "source_mtime = COALESCE(?, source_mtime) WHERE path = ?",
                (content, version, now, sha, extra.get("source_mtime"), path),
            )
        delta = tail is not None and version > 1 and version % SNAPSHOT_EVERY != 0
        c.execute(
            "INSERT INTO versions(path, version, content, mtime, delta, size) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (path, version, tail if delta else content, now, int(delta), len(content)),
        )
        c.execute("INSERT INTO index_journal(path) VALUES (?)", (path,))
        return version

    def delete_nodes(self, c: sqlite3.Connection, nodes: Iterable[tuple[str, str]]) -> None:
        """Delete these (path, kind) nodes with their versions; a file's deletion is
        journaled, so the index drops its chunks at the next sync."""
        for path, kind in nodes:
            c.execute("DELETE FROM nodes WHERE path = ?", (path,))
            c.execute("DELETE FROM versions WHERE path = ?", (path,))
            if kind == "file":
                c.execute("INSERT INTO index_journal(path) VALUES (?)", (path,))
