"""MemoryFS: the filesystem agents see, over a SQLite store (the truth) and a Chroma index.

Durability: every change commits its content, its version and an index-journal row in one
SQLite transaction before the call returns (`store`). The index is brought up to date from
that journal (before a search, after a mount, at boot by `fsck`: `sync`), so a crash
between content and index loses nothing: the journal still names what to re-index. Host
folders come in read-only under /mnt (`mounts`).

Permissions: each path has an owner and a mode (owner and other rwx bits, no groups).
`root` passes every check. Homes are created private (0o700) for their agent.
"""

from __future__ import annotations

import fnmatch
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from llmos.errors import NothingIndexed, PermissionDenied
from llmos.memory.index import Embedder, Index, SharedChunks, kernel_id, open_client, shared_name
from llmos.memory.mounts import Mounts
from llmos.memory.paths import TOP_LEVEL, ancestors, is_under, normalize, parent, scope_key
from llmos.memory.procfs import ProcView
from llmos.memory.stat import Stat
from llmos.memory.store import ROOT, FsError, NotFound, ReadOnly, Store
from llmos.memory.sync import IndexSync


@dataclass(frozen=True)
class Hit:
    path: str
    score: float
    text: str
    chunk: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemoryFS:
    """The filesystem. Methods take `user`: the caller's identity (an agent's name, or root)."""

    def __init__(
        self,
        directory: Path,
        *,
        embedder: Any = None,
        embed_model: str = "all-MiniLM-L6-v2",
        clock: Callable[[], float] = time.time,
        chroma_url: str = "",
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._embedder = embedder
        self._embed_model = embed_model
        # "": Chroma embedded in `directory/chroma`; a URL: a server other kernels may share
        self.chroma_url = chroma_url
        self._index: Index | None = None
        self._shared: SharedChunks | None = None
        # The kernel's process view under /proc (set by `kernel.memory`); None: /proc
        # is an empty directory.
        self.proc: ProcView | None = None
        # Progress listeners: fn(phase, done, total) for "read" (mount) and "index" work.
        self._watchers: list[Callable[[str, int, int], None]] = []
        self.store = Store(self.directory / "memory.db", clock)
        self.db = self.store.db  # for reads that go to the tables directly
        self._sync = IndexSync(self.store, lambda: self.index, self._report, lambda: self.shared)
        self._mounts = Mounts(self.store, self._sync, self._report)
        # Index sync and mounts live in their own modules; bound here, with their full
        # signatures and docs, so callers keep `fs.fsck()`, `fs.mount(...)` and the rest.
        self.pending = self.store.pending
        self.sync_index = self._sync.sync
        self.fsck = self._sync.fsck
        self.mount = self._mounts.mount
        self.umount = self._mounts.umount
        self.mounts = self._mounts.table
        with self.store.tx() as c:
            now = clock()
            for p, mode in [("/", 0o755)] + [(f"/{t}", 0o755) for t in TOP_LEVEL]:
                c.execute(
                    "INSERT OR IGNORE INTO nodes(path, kind, owner, mode, mtime, readonly) "
                    "VALUES (?, 'dir', ?, ?, ?, ?)",
                    (p, ROOT, 0o777 if p == "/tmp" else mode, now, int(p == "/proc")),
                )

    # -- plumbing ----------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()

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
    def index(self) -> Index:
        """The Chroma index of this kernel's files, opened on first use (MiniLM loads on the
        first embed). On a Chroma server, mounted files are in `shared` instead."""
        if self._index is None:
            if self._embedder is None:
                self._embedder = Embedder(self._embed_model)
            if not self.chroma_url:
                self._index = Index(self.directory / "chroma", self._embedder)
            else:
                client = open_client(self.directory, self.chroma_url)
                name = f"llmos-k-{kernel_id(self.directory)}"
                url = self.chroma_url
                embedder = self._embedder
                self._shared = SharedChunks(client, embedder, shared_name(embedder), url)
                self._index = Index(self.directory, embedder, name, client=client, url=url)
        return self._index

    @property
    def shared(self) -> SharedChunks | None:
        """The server's collection of mounted chunks, keyed by content and shared with
        other kernels (`SharedChunks`); None with the embedded index."""
        _ = self.index
        return self._shared

    def _check(self, user: str, path: str, bit: int, verb: str) -> None:
        """`bit` (4 read, 2 write) on the node or, if absent, its nearest existing parent;
        read (search) on every ancestor: a private home hides everything under it."""
        if user == ROOT:
            return
        for a in ancestors(path):
            row = self.store.row(a)
            if row is not None and not _can(row["owner"], row["mode"], user, 4):
                raise PermissionDenied(f"{verb} {path}: {a} is private to {row['owner']}")
        row = self.store.row(path)
        target = path
        while row is None and target != "/":
            target = parent(target)
            row = self.store.row(target)
        if target == "/home" and is_under(path, f"/home/{user}"):
            return  # an agent's own home is created on its first write
        if row is not None and not _can(row["owner"], row["mode"], user, bit):
            raise PermissionDenied(f"{verb} {path}: permission denied for {user}")

    def _writable(self, path: str) -> None:
        if path == "/" or path.count("/") == 1:
            raise ReadOnly(f"{path}: top-level directories cannot be changed")
        for p in [path, *ancestors(path)]:
            row = self.store.row(p)
            if row is not None and row["readonly"]:
                raise ReadOnly(f"{path}: read-only ({p} is read-only)")
        if is_under(path, "/proc"):
            raise ReadOnly(f"{path}: /proc is read-only")

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
        row = self.store.need(path)
        return _stat(row, len(row["content"]))

    def exists(self, path: str) -> bool:
        path = normalize(path)
        if ProcView.covers(path):
            return self.proc is not None and self.proc.stat(path) is not None
        return self.store.row(path) is not None

    def ls(self, path: str = "/", user: str = ROOT) -> list[Stat]:
        path = normalize(path)
        if ProcView.covers(path):
            st = self._virtual(path, user, "ls")
            return [st] if st.kind == "file" or self.proc is None else self.proc.entries(path)
        self._check(user, path, 4, "ls")
        if self.store.need(path)["kind"] == "file":
            return [self.stat(path, user)]
        prefix = path.rstrip("/") + "/"
        cur = self.db.execute(
            "SELECT path, kind, owner, mode, length(content) AS size, version, mtime, "
            "readonly, source FROM nodes WHERE substr(path, 1, ?) = ? "
            "AND instr(substr(path, ?), '/') = 0 AND path != '/' ORDER BY path",
            (len(prefix), prefix, len(prefix) + 1),
        )
        out = [_stat(row, row["size"]) for row in cur]
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
        if row["kind"] != "file":
            raise FsError(f"{path}: is a directory")
        text = str(row["content"])
        return text[start:end] if (start or end is not None) else text

    def write(self, path: str, content: str, user: str = ROOT) -> int:
        """Replace the file's content; returns its new version once committed."""
        path = normalize(path)
        if not isinstance(content, str):
            raise FsError("content must be text")
        self._writable(path)
        self._check(user, path, 2, "write")
        with self.store.tx() as c:
            return self.store.put(c, path, content, user)

    def append(self, path: str, content: str, user: str = ROOT) -> int:
        path = normalize(path)
        self._writable(path)
        self._check(user, path, 2, "append")
        with self.store.tx() as c:
            row = self.store.row(path)
            old = str(row["content"]) if row is not None else ""
            return self.store.put(c, path, old + content, user, tail=content)

    def mkdir(self, path: str, user: str = ROOT, *, parents: bool = True) -> None:
        path = normalize(path)
        self._writable(path)
        self._check(user, path, 2, "mkdir")
        with self.store.tx() as c:
            row = self.store.row(path)
            if row is not None:
                if row["kind"] == "dir":
                    return
                raise FsError(f"{path}: a file is there")
            if not parents and self.store.row(parent(path)) is None:
                raise NotFound(f"{parent(path)}: no such directory")
            self.store.mkparents(c, path, user)
            self.store.add_user_dir(c, path, user)

    def chmod(self, path: str, mode: int, user: str = ROOT) -> None:
        path = normalize(path)
        owner = self.store.need(path)["owner"]
        if user not in (ROOT, owner):
            raise PermissionDenied(f"chmod {path}: only its owner {owner} may")
        with self.store.tx() as c:
            c.execute("UPDATE nodes SET mode = ? WHERE path = ?", (mode & 0o777, path))

    def rm(self, path: str, user: str = ROOT, *, recursive: bool = False) -> int:
        """Remove a file, an empty directory, or (recursive) a tree; returns nodes removed."""
        path = normalize(path)
        self._writable(path)
        self._check(user, parent(path), 2, "rm")
        self.store.need(path)
        nodes = self.store.subtree(path)
        if len(nodes) > 1 and not recursive:
            raise FsError(f"{path}: directory not empty (use recursive)")
        for p, _kind in nodes:
            self._check(user, p, 2, "rm")
        with self.store.tx() as c:
            self.store.delete_nodes(c, nodes)
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
        self.store.need(src)
        if is_under(dst, src):
            raise FsError(f"cannot copy {src} into itself ({dst})")
        if _is_dir(self.store.row(dst)):
            dst = dst.rstrip("/") + "/" + src.rsplit("/", 1)[1]
            if _is_dir(self.store.row(dst)):
                raise FsError(f"{dst}: already exists")
        self._writable(dst)
        self._check(user, dst, 2, "write")
        nodes = self.store.subtree(src)
        files = 0
        with self.store.tx() as c:
            for p, kind in nodes:
                target = dst + p[len(src) :]
                if kind == "dir":
                    if self.store.row(target) is None:
                        self.store.mkparents(c, target, user)
                        self.store.add_dir(c, target, user, 0o755)
                else:
                    content = str(self.store.need(p)["content"])
                    self.store.put(c, target, content, user)
                    files += 1
            if move:
                self.store.delete_nodes(c, nodes)
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

    def _tree(self, root: str) -> list[tuple[str, str]]:
        """(path, kind) under `root`, the /proc view's nodes included, in path order."""
        nodes = self.store.subtree(root)
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
            "SELECT version, mtime, COALESCE(size, length(content)) AS size FROM versions "
            "WHERE path = ? ORDER BY version",
            (path,),
        )
        rows = [dict(row) for row in cur]
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
        if not rows or int(rows[-1]["version"]) != version or int(rows[0]["delta"]) != 0:
            raise NotFound(f"{path}: no version {version}")
        return "".join(str(r["content"]) for r in rows)

    def rollback(self, path: str, version: int, user: str = ROOT) -> int:
        """Make `version`'s content current again, as a new version (history is kept)."""
        path = normalize(path)
        self._writable(path)
        self._check(user, path, 2, "rollback")
        text = self._version_text(path, version)
        with self.store.tx() as c:
            return self.store.put(c, path, text, user)

    # -- the index ---------------------------------------------------------------------
    def search(self, query: str, root: str = "/", k: int = 5, user: str = ROOT) -> list[Hit]:
        """Top-k chunks by meaning under `root`, best first, with scores and source paths."""
        root = normalize(root)
        self._check(user, root, 4, "search")
        if k < 1 or k > 100:
            raise FsError("k must be between 1 and 100")
        self.sync_index()
        index = self.index
        vector = index.embedder.embed([query])[0]
        shared = self._shared
        if shared is None or not (root == "/" or is_under(root, "/mnt")):
            return self._search_own(index, vector, root, k, user)
        hits = self._search_shared(shared, vector, root, k, user)
        if root == "/":  # both collections: merged by score (both are cosine, one model)
            hits += self._search_own(index, vector, root, k, user)
            hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:k]

    def _search_own(self, index: Index, vector: Any, root: str, k: int, user: str) -> list[Hit]:
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

    def _search_shared(
        self, shared: SharedChunks, vector: Any, root: str, k: int, user: str
    ) -> list[Hit]:
        """Chunks of mounted texts this kernel holds under `root`. The shared collection
        also holds other kernels' texts: a chunk is shown only under a path of ours whose
        text it is, so nothing of theirs shows. The nearest chunks overall are tried first;
        when too few are ours, the search is filtered by our texts' hashes."""
        total = shared.count()
        if total == 0:
            return []

        def ours(rows: list[tuple[str, str, float, int]]) -> list[tuple[str, Hit]]:
            held = self._holders(sorted({sha for _, sha, _, _ in rows}), root)
            return [
                (cid, Hit(p, score, "", chunk))
                for cid, sha, score, chunk in rows
                for p in held.get(sha, [])
                if user == ROOT or self._visible(user, p)
            ]

        wide = min(max(k * 16, 40), total)
        found = ours(shared.nearest(vector, wide))
        if len(found) < k and wide < total:
            shas = sorted(self._holders(None, root))
            found = ours(shared.nearest(vector, min(k * 4, total), shas)) if shas else []
        found = found[:k]
        texts = shared.texts(sorted({cid for cid, _ in found}))
        return [replace(hit, text=texts.get(cid, "")) for cid, hit in found]

    def _holders(self, shas: list[str] | None, root: str) -> dict[str, list[str]]:
        """sha -> mounted files under `root` with that text (of these shas; None: all)."""
        base = "/mnt" if root == "/" else root
        prefix = base.rstrip("/") + "/"
        sql = (
            "SELECT path, sha FROM nodes WHERE kind = 'file' AND length(content) > 0 "
            "AND (path = ? OR substr(path, 1, ?) = ?)"
        )
        args: list[Any] = [base, len(prefix), prefix]
        out: dict[str, list[str]] = {}
        batches = [None] if shas is None else [shas[i : i + 500] for i in range(0, len(shas), 500)]
        for part in batches:
            q = sql if part is None else sql + f" AND sha IN ({','.join('?' * len(part))})"
            for r in self.db.execute(q + " ORDER BY path", args + list(part or [])):
                out.setdefault(str(r["sha"]), []).append(str(r["path"]))
        return out

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
        return [str(r["path"]) for r in cur] + ([top] if top in ("/tmp", "/etc") else [])


def _can(owner: str, mode: int, user: str, bit: int) -> bool:
    if user == ROOT:
        return True
    shift = 6 if owner == user else 0
    return bool(mode & (bit << shift))


def _is_dir(row: sqlite3.Row | None) -> bool:
    return row is not None and row["kind"] == "dir"


def _stat(row: sqlite3.Row, size: int) -> Stat:
    return Stat(
        row["path"], row["kind"], row["owner"], row["mode"], size, row["version"],
        row["mtime"], bool(row["readonly"]), row["source"],
    )  # fmt: skip
