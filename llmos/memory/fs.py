"""MemoryFS: files and versions in SQLite (WAL, the truth), a Chroma index beside them.

Durability: every change commits its content, its version and an index-journal row in one
SQLite transaction before the call returns. The index is brought up to date from that
journal (before a search, after a mount, at boot by `fsck`), so a crash between content
and index loses nothing: the journal still names what to re-index.

Permissions: each path has an owner and a mode (owner and other rwx bits, no groups).
`root` passes every check. Homes are created private (0o700) for their agent.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmos.errors import BadArguments, NothingIndexed, PermissionDenied
from llmos.memory import mountscan
from llmos.memory.paths import TOP_LEVEL, BadPath, ancestors, is_under, normalize, parent, scope_key
from llmos.memory.procfs import ProcView

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


@dataclass(frozen=True)
class Hit:
    path: str
    score: float
    text: str
    chunk: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _can(owner: str, mode: int, user: str, bit: int) -> bool:
    if user == ROOT:
        return True
    shift = 6 if owner == user else 0
    return bool(mode & (bit << shift))


class MemoryFS:
    """The filesystem. Methods take `user`: the caller's identity (an agent's name, or root)."""

    def __init__(
        self,
        directory: Path,
        *,
        embedder: Any = None,
        embed_model: str = "all-MiniLM-L6-v2",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._embedder = embedder
        self._embed_model = embed_model
        self._index: Any = None
        self._lock = threading.RLock()
        # The kernel's process view under /proc (set by `kernel.memory`); None: /proc
        # is an empty directory.
        self.proc: ProcView | None = None
        # Progress listeners: fn(phase, done, total) for "read" (mount) and "index" work.
        self._watchers: list[Callable[[str, int, int], None]] = []
        self.db = sqlite3.connect(
            self.directory / "memory.db", check_same_thread=False, isolation_level=None
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk
        self.db.executescript(_SCHEMA)
        cols = {str(r[1]) for r in self.db.execute("PRAGMA table_info(versions)")}
        if "delta" not in cols:  # a data dir from before appends were stored as deltas
            self.db.execute("ALTER TABLE versions ADD COLUMN delta INTEGER NOT NULL DEFAULT 0")
            self.db.execute("ALTER TABLE versions ADD COLUMN size INTEGER")
        with self._tx() as c:
            now = self._clock()
            for p, mode in [("/", 0o755)] + [(f"/{t}", 0o755) for t in TOP_LEVEL]:
                c.execute(
                    "INSERT OR IGNORE INTO nodes(path, kind, owner, mode, mtime, readonly) "
                    "VALUES (?, 'dir', ?, ?, ?, ?)",
                    (p, ROOT, 0o777 if p == "/tmp" else mode, now, int(p == "/proc")),
                )

    # -- plumbing ----------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
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

    def watch(self, fn: Callable[[str, int, int], None]) -> Callable[[], None]:
        """Call `fn(phase, done, total)` as long work advances: phase "read" while a mount
        reads host files, "index" while chunks are embedded. Returns an unsubscribe function.
        Calls may come from a worker thread."""
        self._watchers.append(fn)
        return lambda: self._watchers.remove(fn)

    def _report(self, phase: str, done: int, total: int) -> None:
        for fn in list(self._watchers):
            fn(phase, done, total)

    @property
    def index(self) -> Any:
        """The Chroma index, opened (and MiniLM loaded) on first use."""
        if self._index is None:
            from llmos.memory.index import Embedder, Index

            if self._embedder is None:
                self._embedder = Embedder(self._embed_model)
            self._index = Index(self.directory / "chroma", self._embedder)
        return self._index

    def _row(self, path: str) -> sqlite3.Row | None:
        cur = self.db.execute(
            "SELECT path, kind, owner, mode, content, version, mtime, sha, readonly, source, "
            "source_mtime FROM nodes WHERE path = ?",
            (path,),
        )
        row = cur.fetchone()
        return row  # type: ignore[no-any-return]

    def _need(self, path: str) -> tuple[Any, ...]:
        row = self._row(path)
        if row is None:
            raise NotFound(f"{path}: no such file or directory")
        return tuple(row)

    def _check(self, user: str, path: str, bit: int, verb: str) -> None:
        """`bit` (4 read, 2 write) on the node or, if absent, its nearest existing parent;
        read (search) on every ancestor: a private home hides everything under it."""
        if user == ROOT:
            return
        for a in ancestors(path):
            row = self._row(a)
            if row is not None and not _can(row[2], row[3], user, 4):
                raise PermissionDenied(f"{verb} {path}: {a} is private to {row[2]}")
        row = self._row(path)
        target = path
        while row is None and target != "/":
            target = parent(target)
            row = self._row(target)
        if target == "/home" and is_under(path, f"/home/{user}"):
            return  # an agent's own home is created on its first write
        if row is not None and not _can(row[2], row[3], user, bit):
            raise PermissionDenied(f"{verb} {path}: permission denied for {user}")

    def _writable(self, path: str) -> None:
        if path == "/" or path.count("/") == 1:
            raise ReadOnly(f"{path}: top-level directories cannot be changed")
        for p in [path, *ancestors(path)]:
            row = self._row(p)
            if row is not None and row[8]:
                raise ReadOnly(f"{path}: read-only ({p} is read-only)")
        if is_under(path, "/proc"):
            raise ReadOnly(f"{path}: /proc is read-only")

    def _mkparents(self, c: sqlite3.Connection, path: str, user: str) -> None:
        now = self._clock()
        for a in ancestors(path):
            row = self._row(a)
            if row is None:
                home = a.count("/") == 2 and a.startswith("/home/")
                owner = a.split("/")[2] if home else user
                c.execute(
                    "INSERT INTO nodes(path, kind, owner, mode, mtime) VALUES (?, 'dir', ?, ?, ?)",
                    (a, owner, 0o700 if home else 0o755, now),
                )
            elif row[1] != "dir":
                raise FsError(f"{path}: {a} is a file, not a directory")

    def _put(
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
        replay), and a growing log costs its growth, not its size, per version."""
        row = self._row(path)
        now = self._clock()
        sha = sha256(content)
        if row is not None and row[1] == "dir":
            raise FsError(f"{path}: is a directory")
        if row is None:
            self._mkparents(c, path, user)
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
            version = int(row[5]) + 1
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

    def _subtree(self, root: str) -> list[tuple[Any, ...]]:
        if root == "/":
            cur = self.db.execute("SELECT path, kind FROM nodes ORDER BY path")
        else:
            cur = self.db.execute(
                "SELECT path, kind FROM nodes WHERE path = ? OR substr(path, 1, ?) = ? "
                "ORDER BY path",
                (root, len(root) + 1, root + "/"),
            )
        return [tuple(r) for r in cur.fetchall()]

    # -- operations --------------------------------------------------------------------
    def _virtual(self, path: str, user: str, verb: str) -> Stat:
        """The /proc view's node at `path`, if `user` may read it."""
        self._check(user, path, 4, verb)
        st = self.proc.stat(path) if self.proc is not None else None
        if st is None:
            raise NotFound(f"{path}: no such file or directory")
        if not _can(st.owner, st.mode, user, 4):
            raise PermissionDenied(f"{verb} {path}: permission denied for {user}")
        return st

    def stat(self, path: str, user: str = ROOT) -> Stat:
        path = normalize(path)
        if ProcView.covers(path):
            return self._virtual(path, user, "stat")
        self._check(user, path, 4, "stat")
        r = self._need(path)
        return Stat(r[0], r[1], r[2], r[3], len(r[4]), r[5], r[6], bool(r[8]), r[9])

    def exists(self, path: str) -> bool:
        path = normalize(path)
        if ProcView.covers(path):
            return self.proc is not None and self.proc.stat(path) is not None
        return self._row(path) is not None

    def ls(self, path: str = "/", user: str = ROOT) -> list[Stat]:
        path = normalize(path)
        if ProcView.covers(path):
            st = self._virtual(path, user, "ls")
            return [st] if st.kind == "file" or self.proc is None else self.proc.entries(path)
        self._check(user, path, 4, "ls")
        r = self._need(path)
        if r[1] == "file":
            return [self.stat(path, user)]
        prefix = path.rstrip("/") + "/"
        cur = self.db.execute(
            "SELECT path, kind, owner, mode, length(content), version, mtime, readonly, source "
            "FROM nodes WHERE substr(path, 1, ?) = ? AND instr(substr(path, ?), '/') = 0 "
            "AND path != '/' ORDER BY path",
            (len(prefix), prefix, len(prefix) + 1),
        )
        out = [Stat(p, k, o, m, s, v, t, bool(ro), src) for p, k, o, m, s, v, t, ro, src in cur]
        if path == "/proc" and self.proc is not None:
            out += self.proc.entries(path)
        return out

    def read(self, path: str, user: str = ROOT, *, start: int = 0, end: int | None = None) -> str:
        """The file's text, or characters [start, end) of it."""
        path = normalize(path)
        if ProcView.covers(path):
            st = self._virtual(path, user, "read")
            if st.kind != "file" or self.proc is None:
                raise FsError(f"{path}: is a directory")
            text = self.proc.read(path) or ""
            return text[start:end] if (start or end is not None) else text
        self._check(user, path, 4, "read")
        row = self.db.execute("SELECT kind, content FROM nodes WHERE path = ?", (path,)).fetchone()
        if row is None:
            raise NotFound(f"{path}: no such file")
        if row[0] != "file":
            raise FsError(f"{path}: is a directory")
        return str(row[1])[start:end] if (start or end is not None) else str(row[1])

    def write(self, path: str, content: str, user: str = ROOT) -> int:
        """Replace the file's content; returns its new version once committed."""
        path = normalize(path)
        if not isinstance(content, str):
            raise FsError("content must be text")
        self._writable(path)
        self._check(user, path, 2, "write")
        with self._tx() as c:
            return self._put(c, path, content, user)

    def append(self, path: str, content: str, user: str = ROOT) -> int:
        path = normalize(path)
        self._writable(path)
        self._check(user, path, 2, "append")
        with self._tx() as c:
            row = self._row(path)
            old = str(row[4]) if row is not None else ""
            return self._put(c, path, old + content, user, tail=content)

    def mkdir(self, path: str, user: str = ROOT, *, parents: bool = True) -> None:
        path = normalize(path)
        self._writable(path)
        self._check(user, path, 2, "mkdir")
        with self._tx() as c:
            row = self._row(path)
            if row is not None:
                if row[1] == "dir":
                    return
                raise FsError(f"{path}: a file is there")
            if not parents and self._row(parent(path)) is None:
                raise NotFound(f"{parent(path)}: no such directory")
            self._mkparents(c, path, user)
            home = path.count("/") == 2 and path.startswith("/home/")
            c.execute(
                "INSERT INTO nodes(path, kind, owner, mode, mtime) VALUES (?, 'dir', ?, ?, ?)",
                (
                    path,
                    path.split("/")[2] if home else user,
                    0o700 if home else 0o755,
                    self._clock(),
                ),
            )

    def chmod(self, path: str, mode: int, user: str = ROOT) -> None:
        path = normalize(path)
        r = self._need(path)
        if user not in (ROOT, r[2]):
            raise PermissionDenied(f"chmod {path}: only its owner {r[2]} may")
        with self._tx() as c:
            c.execute("UPDATE nodes SET mode = ? WHERE path = ?", (mode & 0o777, path))

    def rm(self, path: str, user: str = ROOT, *, recursive: bool = False) -> int:
        """Remove a file, an empty directory, or (recursive) a tree; returns nodes removed."""
        path = normalize(path)
        self._writable(path)
        self._check(user, parent(path), 2, "rm")
        self._need(path)
        nodes = self._subtree(path)
        if len(nodes) > 1 and not recursive:
            raise FsError(f"{path}: directory not empty (use recursive)")
        if not (path.startswith("/home/") or path.startswith("/tmp/") or user == ROOT):
            pass
        for p, _kind in nodes:
            self._check(user, p, 2, "rm")
        with self._tx() as c:
            for p, kind in nodes:
                c.execute("DELETE FROM nodes WHERE path = ?", (p,))
                c.execute("DELETE FROM versions WHERE path = ?", (p,))
                if kind == "file":
                    c.execute("INSERT INTO index_journal(path) VALUES (?)", (p,))
        return len(nodes)

    def cp(self, src: str, dst: str, user: str = ROOT) -> int:
        """Copy a file or a tree; returns files copied."""
        src, dst = normalize(src), normalize(dst)
        return self._copy(src, dst, user, move=False)

    def mv(self, src: str, dst: str, user: str = ROOT) -> int:
        src, dst = normalize(src), normalize(dst)
        self._writable(src)
        return self._copy(src, dst, user, move=True)

    def _copy(self, src: str, dst: str, user: str, *, move: bool) -> int:
        self._check(user, src, 4, "copy")
        self._need(src)
        if is_under(dst, src):
            raise FsError(f"cannot copy {src} into itself ({dst})")
        d = self._row(dst)
        if d is not None and d[1] == "dir":
            dst = dst.rstrip("/") + "/" + src.rsplit("/", 1)[1]
            if self._row(dst) is not None and self._row(dst)[1] == "dir":  # type: ignore[index]
                raise FsError(f"{dst}: already exists")
        self._writable(dst)
        self._check(user, dst, 2, "write")
        nodes = self._subtree(src)
        files = 0
        with self._tx() as c:
            for p, kind in nodes:
                target = dst + p[len(src) :]
                if kind == "dir":
                    if self._row(target) is None:
                        self._mkparents(c, target, user)
                        c.execute(
                            "INSERT INTO nodes(path, kind, owner, mode, mtime) "
                            "VALUES (?, 'dir', ?, 493, ?)",
                            (target, user, self._clock()),
                        )
                else:
                    content = str(self._need(p)[4])
                    self._put(c, target, content, user)
                    files += 1
            if move:
                for p, kind in nodes:
                    c.execute("DELETE FROM nodes WHERE path = ?", (p,))
                    c.execute("DELETE FROM versions WHERE path = ?", (p,))
                    if kind == "file":
                        c.execute("INSERT INTO index_journal(path) VALUES (?)", (p,))
        return files

    def find(self, root: str = "/", pattern: str = "*", user: str = ROOT) -> list[str]:
        """Paths under `root` whose name (or full path, if the pattern has a `/`) matches."""
        root = normalize(root)
        self._check(user, root, 4, "find")
        out = []
        for p, _k in self._tree(root):
            subject = p if "/" in pattern else p.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(subject, pattern) and self._visible(user, p):
                out.append(p)
        return out

    def _tree(self, root: str) -> list[tuple[Any, ...]]:
        """(path, kind) under `root`, the /proc view's nodes included, in path order."""
        nodes = self._subtree(root)
        if self.proc is not None:
            nodes = sorted(nodes + [(s.path, s.kind) for s in self.proc.walk(root)])
        return nodes

    def _visible(self, user: str, path: str) -> bool:
        try:
            if ProcView.covers(path):
                self._virtual(path, user, "read")
            else:
                self._check(user, path, 4, "read")
        except (PermissionDenied, NotFound):
            return False
        return True

    def grep(
        self, pattern: str, root: str = "/", user: str = ROOT, *, limit: int = 200
    ) -> list[tuple[str, int, str]]:
        """(path, line number, line) for lines matching the regex, files under `root`."""
        root = normalize(root)
        self._check(user, root, 4, "grep")
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise FsError(f"bad regex {pattern!r}: {exc}") from None
        out: list[tuple[str, int, str]] = []
        for p, kind in self._tree(root):
            if kind != "file" or not self._visible(user, p):
                continue
            for n, line in enumerate(self.read(p).splitlines(), 1):
                if rx.search(line):
                    out.append((p, n, line))
                    if len(out) >= limit:
                        return out
        return out

    def history(self, path: str, user: str = ROOT) -> list[dict[str, Any]]:
        path = normalize(path)
        self._check(user, path, 4, "history")
        cur = self.db.execute(
            "SELECT version, mtime, COALESCE(size, length(content)) FROM versions "
            "WHERE path = ? ORDER BY version",
            (path,),
        )
        rows = [{"version": v, "mtime": t, "size": s} for v, t, s in cur]
        if not rows:
            raise NotFound(f"{path}: no history")
        return rows

    def read_version(self, path: str, version: int, user: str = ROOT) -> str:
        path = normalize(path)
        self._check(user, path, 4, "read")
        return self._version_text(path, version)

    def _version_text(self, path: str, version: int) -> str:
        """A version's full text: the last full copy at or before it, plus appended tails."""
        rows = self.db.execute(
            "SELECT version, content, delta FROM versions WHERE path = ? AND version <= ? "
            "AND version >= (SELECT COALESCE(MAX(version), 0) FROM versions "
            "WHERE path = ? AND version <= ? AND delta = 0) ORDER BY version",
            (path, version, path, version),
        ).fetchall()
        if not rows or int(rows[-1][0]) != version or int(rows[0][2]) != 0:
            raise NotFound(f"{path}: no version {version}")
        return "".join(str(r[1]) for r in rows)

    def rollback(self, path: str, version: int, user: str = ROOT) -> int:
        """Make `version`'s content current again, as a new version (history is kept)."""
        path = normalize(path)
        self._writable(path)
        self._check(user, path, 2, "rollback")
        text = self._version_text(path, version)
        with self._tx() as c:
            return self._put(c, path, text, user)

    # -- the index ---------------------------------------------------------------------
    def pending(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM index_journal").fetchone()[0])

    def sync_index(self) -> int:
        """Apply the index journal; returns files re-indexed. Safe to repeat after a crash:
        the journal rows go only after Chroma has the chunks."""
        rows = self.db.execute("SELECT id, path FROM index_journal ORDER BY id").fetchall()
        if not rows:
            return 0
        last = rows[-1][0]
        paths = sorted({str(p) for _i, p in rows})
        self._reindex(paths)
        with self._tx() as c:
            c.execute("DELETE FROM index_journal WHERE id <= ?", (last,))
        return len(paths)

    def _reindex(self, paths: list[str]) -> None:
        """Bring these paths' index entries in line with SQLite, in batches (no query per
        file: an fsck after a crash may have 10,000 of them)."""
        items = []
        for i in range(0, len(paths), 500):
            part = paths[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT path, sha, content FROM nodes WHERE kind = 'file' AND path IN ({marks})",
                part,
            ).fetchall()
            items += [(str(p), scope_key(str(p)), str(sha), str(text)) for p, sha, text in rows]
        self.index.replace(
            paths,
            items,
            progress=(lambda d, t: self._report("index", d, t)) if self._watchers else None,
        )

    def fsck(self, *, rebuild: bool = False) -> dict[str, int]:
        """Check the index against SQLite and repair it: journal replay, then any file whose
        indexed hash differs or is missing, and index entries for files that are gone."""
        replayed = self.sync_index()
        index = self.index
        if rebuild:
            index.client.delete_collection(index.collection.name)
            index.collection = index.client.get_or_create_collection(
                index.collection.name, metadata={"hnsw:space": "cosine"}
            )
        indexed = index.indexed()
        truth = {
            str(p): str(s)
            for p, s in self.db.execute("SELECT path, sha FROM nodes WHERE kind = 'file'")
        }
        stale = [p for p, s in truth.items() if indexed.get(p) != s and s != sha256("")]
        orphans = [p for p in indexed if p not in truth]
        if orphans:
            index.delete_paths(orphans)
        if stale:
            self._reindex(stale)
        return {
            "files": len(truth),
            "replayed": replayed,
            "reindexed": len(stale),
            "orphans": len(orphans),
            "chunks": index.count(),
        }

    def search(self, query: str, root: str = "/", k: int = 5, user: str = ROOT) -> list[Hit]:
        """Top-k chunks by meaning under `root`, best first, with scores and source paths."""
        root = normalize(root)
        self._check(user, root, 4, "search")
        if k < 1 or k > 100:
            raise FsError("k must be between 1 and 100")
        self.sync_index()
        index = self.index
        vector = index.embedder.embed([query])[0]
        scope = scope_key(root)
        where: dict[str, Any] | None = {"scope": scope} if root.count("/") >= 2 else None
        if root.count("/") == 1 and root != "/":
            scopes = self._scopes(root)
            if not scopes:
                return []
            where = {"scope": {"$in": scopes}}
        deep = root.count("/") > 2
        fetch = k * 4 if deep or user != ROOT else k
        total = index.count()
        if total == 0:
            return []

        def shown(p: str) -> bool:
            return is_under(p, root) and (user == ROOT or self._visible(user, p))

        def keep(rows: list[tuple[str, str, float, int]]) -> list[Hit]:
            return [Hit(p, score, text, chunk) for p, text, score, chunk in rows if shown(p)]

        if where is None:
            return keep(index.query(vector, min(fetch, total), None))[:k]
        # A metadata filter makes Chroma pre-select ids in SQLite (~40 ms at 10,000 chunks).
        # The nearest chunks overall, kept when in scope, are the nearest in scope as long
        # as at least k of them are: try that first, filter only when the scope is too thin.
        wide = min(max(fetch * 4, 40), total)
        near = [row for row in index.nearest(vector, wide) if shown(row[1])][:k]
        if len(near) < k and wide < total:
            return keep(index.query(vector, min(fetch, total), where))[:k]
        texts = index.texts([cid for cid, _, _, _ in near])
        return [Hit(p, score, texts.get(cid, ""), chunk) for cid, p, score, chunk in near]

    def require_indexed(self, root: str = "/") -> None:
        """Raise NothingIndexed unless some file under `root` has text to index (what the
        index holds once its journal is applied): a search or a question over such a scope
        says so in one line rather than answering from nothing."""
        root = normalize(root)
        prefix = root.rstrip("/") + "/"  # "/" itself: every path
        row = self.db.execute(
            "SELECT 1 FROM nodes WHERE kind = 'file' AND (path = ? OR substr(path, 1, ?) = ?) "
            "AND trim(content) != '' LIMIT 1",
            (root, len(prefix), prefix),
        ).fetchone()
        if row is None:
            raise NothingIndexed(f"nothing indexed under {root}")

    def _scopes(self, top: str) -> list[str]:
        prefix = top + "/"
        cur = self.db.execute(
            "SELECT path FROM nodes WHERE substr(path, 1, ?) = ? AND instr(substr(path, ?), '/') = 0",
            (len(prefix), prefix, len(prefix) + 1),
        )
        return [str(r[0]) for r in cur] + ([top] if top in ("/tmp", "/etc") else [])

    # -- mounts ------------------------------------------------------------------------
    def mount(
        self,
        host: str | Path,
        name: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        index: bool = True,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        max_file_bytes: int = mountscan.DEFAULT_MAX_FILE_BYTES,
    ) -> dict[str, Any]:
        """Mount a host folder read-only at /mnt/<name>, or re-sync it: files whose mtime
        and hash are unchanged are not touched, so a re-sync of an unchanged folder embeds
        nothing. Files are taken by content (UTF-8 or BOM'd UTF-16 text, PDF through pypdf;
        see `mountscan`); `include`/`exclude` globs and `max_file_bytes` (0: no cap) narrow
        it. The result counts files added, updated, unchanged, removed and indexed, and what
        was skipped: `skipped` (how many), `skipped_by` (reason -> count) and
        `skipped_files` (path, reason, detail; the first `mountscan.SKIPPED_LISTED`)."""
        host = Path(host).expanduser().resolve()
        if not host.is_dir():
            raise FsError(f"{host} is not a folder")
        if "/" in name or name in ("", ".", ".."):
            raise BadPath(f"mount name {name!r} must be a single name")
        root = normalize(f"/mnt/{name}")
        known = self.db.execute("SELECT host FROM mounts WHERE name = ?", (name,)).fetchone()
        if known is not None and Path(known[0]) != host:
            raise FsError(f"/mnt/{name} is already mounted from another folder")
        files, skipped = mountscan.scan(
            host, include=include, exclude=exclude, max_bytes=max_file_bytes
        )
        stats: dict[str, Any] = {
            "files": 0, "added": 0, "updated": 0, "unchanged": 0, "removed": 0,
        }  # fmt: skip
        seen: set[str] = set()
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO mounts(name, host) VALUES (?, ?)", (name, str(host)))
            if self._row(root) is None:
                c.execute(
                    "INSERT INTO nodes(path, kind, owner, mode, mtime, readonly, source) "
                    "VALUES (?, 'dir', ?, 365, ?, 1, ?)",
                    (root, ROOT, self._clock(), str(host)),
                )
        batch = 0
        tx = self._tx()
        c = tx.__enter__()
        try:
            for i, (f, rel) in enumerate(files, 1):
                try:
                    vpath = normalize(f"{root}/{rel}")
                except BadPath as exc:
                    skipped.append(mountscan.Skip(rel, "bad name", str(exc)))
                    continue
                mtime = f.stat().st_mtime
                row = self._row(vpath)
                if row is not None and row[10] == mtime:
                    stats["unchanged"] += 1  # read as text before, and not touched since
                else:
                    try:
                        text = mountscan.read_text(f)
                    except mountscan.NotText as exc:
                        skipped.append(mountscan.Skip(rel, exc.reason, exc.detail))
                        continue  # (not seen: a file that became binary leaves the mount)
                    if row is not None and row[7] == sha256(text):
                        c.execute(
                            "UPDATE nodes SET source_mtime = ? WHERE path = ?", (mtime, vpath)
                        )
                        stats["unchanged"] += 1
                    else:
                        self._put(
                            c, vpath, text, ROOT, mode=0o444, readonly=True,
                            source=str(f), source_mtime=mtime,
                        )  # fmt: skip
                        stats["updated" if row is not None else "added"] += 1
                        batch += 1
                seen.add(vpath)
                if batch >= 500:  # bound one transaction's size
                    tx.__exit__(None, None, None)
                    tx = self._tx()
                    c = tx.__enter__()
                    batch = 0
                if progress is not None:
                    progress(i, len(files))
                self._report("read", i, len(files))
            for p, kind in self._subtree(root):
                if kind == "file" and p not in seen:
                    c.execute("DELETE FROM nodes WHERE path = ?", (p,))
                    c.execute("DELETE FROM versions WHERE path = ?", (p,))
                    c.execute("INSERT INTO index_journal(path) VALUES (?)", (p,))
                    stats["removed"] += 1
        except BaseException as exc:
            tx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        tx.__exit__(None, None, None)
        stats["files"] = len(seen)
        skipped.sort(key=lambda sk: sk.path)
        stats["skipped"] = len(skipped)
        stats["skipped_by"] = mountscan.skip_counts(skipped)
        stats["skipped_files"] = [sk.as_dict() for sk in skipped[: mountscan.SKIPPED_LISTED]]
        if index:
            stats["indexed"] = self.sync_index()
        return stats

    def umount(self, name: str) -> int:
        root = normalize(f"/mnt/{name}")
        if self.db.execute("SELECT 1 FROM mounts WHERE name = ?", (name,)).fetchone() is None:
            raise NotFound(f"/mnt/{name} is not mounted")
        nodes = self._subtree(root)
        with self._tx() as c:
            for p, kind in nodes:
                c.execute("DELETE FROM nodes WHERE path = ?", (p,))
                c.execute("DELETE FROM versions WHERE path = ?", (p,))
                if kind == "file":
                    c.execute("INSERT INTO index_journal(path) VALUES (?)", (p,))
            c.execute("DELETE FROM mounts WHERE name = ?", (name,))
        return len(nodes)

    def mounts(self) -> dict[str, str]:
        return {str(n): str(h) for n, h in self.db.execute("SELECT name, host FROM mounts")}
