"""Journal → index: how the Chroma index follows SQLite.

The index is derived. Every change leaves a row in `index_journal` in the same transaction
as its content; `sync` re-indexes the paths the journal names and only then deletes those
rows, so a crash at any point leaves work to redo, never a file the index silently lacks.
`fsck` also compares the whole index against SQLite, for an index that was lost or edited.
"""

from __future__ import annotations

from collections.abc import Callable

from llmos.memory.index import Index, SharedChunks
from llmos.memory.paths import is_under, scope_key
from llmos.memory.store import Store, sha256

BATCH = 500  # paths per query: an fsck after a crash may have 10,000 of them
EMPTY = sha256("")  # an empty file has no chunks, so the index never holds its hash


class IndexSync:
    """Applies a store's journal to its index. `index` opens the index on first use (it
    loads MiniLM); `report(phase, done, total)` hears embedding progress as "index".

    `shared` gives the shared collection of mounted chunks when the index is on a Chroma
    server (None: embedded, where /mnt is indexed by path like every other file)."""

    def __init__(
        self,
        store: Store,
        index: Callable[[], Index],
        report: Callable[[str, int, int], None],
        shared: Callable[[], SharedChunks | None] = lambda: None,
    ) -> None:
        self._store = store
        self._index = index
        self._shared = shared
        self._report = report

    def sync(self) -> int:
        """Apply the index journal; returns files re-indexed. Safe to repeat after a crash:
        the journal rows go only after Chroma has the chunks."""
        rows = self._store.db.execute("SELECT id, path FROM index_journal ORDER BY id").fetchall()
        if not rows:
            return 0
        last = rows[-1]["id"]
        paths = sorted({str(r["path"]) for r in rows})
        self.reindex(paths)
        with self._store.tx() as c:
            c.execute("DELETE FROM index_journal WHERE id <= ?", (last,))
        return len(paths)

    def _files(self, paths: list[str]) -> list[tuple[str, str, str]]:
        """(path, sha, content) of those paths that are files, in batches (no query per file)."""
        out = []
        for i in range(0, len(paths), BATCH):
            part = paths[i : i + BATCH]
            marks = ",".join("?" * len(part))
            rows = self._store.db.execute(
                f"SELECT path, sha, content FROM nodes WHERE kind = 'file' AND path IN ({marks})",
                part,
            ).fetchall()
            out += [(str(r["path"]), str(r["sha"]), str(r["content"])) for r in rows]
        return out

    def reindex(self, paths: list[str], *, force: bool = False) -> None:
        """Bring these paths' index entries in line with SQLite. A path that is no file any
        more leaves the index. With a shared collection, mounted files' texts go there
        (`force`: embedded again even if stored, for a rebuild) and leave nothing to remove."""
        files = self._files(paths)
        shared = self._shared()
        own = paths if shared is None else [p for p in paths if not _mounted(p)]
        if own:
            keep = set(own)
            items = [(p, scope_key(p), s, text) for p, s, text in files if p in keep]
            self._index().replace(own, items, progress=lambda d, t: self._report("index", d, t))
        if shared is not None:
            texts = {s: text for p, s, text in files if _mounted(p)}
            if texts:
                shared.add(texts, force=force, progress=lambda d, t: self._report("index", d, t))

    def fsck(self, *, rebuild: bool = False) -> dict[str, int]:
        """Check the index against SQLite and repair it: journal replay, then any file whose
        indexed hash differs or is missing, and index entries for files that are gone.

        With a shared collection, `rebuild` drops this kernel's own collection and embeds
        its mounted texts again over theirs in the shared one; it never drops the shared
        collection (other kernels search it)."""
        index = self._index()
        shared = self._shared()
        if shared is not None:
            # the server may have lost or dropped them since they were opened
            index.reopen()
            shared.reopen()
        replayed = self.sync()
        if rebuild:
            index.reset()
        indexed = index.indexed()
        truth = {
            str(r["path"]): str(r["sha"])
            for r in self._store.db.execute("SELECT path, sha FROM nodes WHERE kind = 'file'")
        }
        mine = truth if shared is None else {p: s for p, s in truth.items() if not _mounted(p)}
        stale = [p for p, s in mine.items() if indexed.get(p) != s and s != EMPTY]
        orphans = [p for p in indexed if p not in mine]
        if orphans:
            index.delete_paths(orphans)
        chunks = 0
        if shared is not None:
            mounted = {p: s for p, s in truth.items() if _mounted(p) and s != EMPTY}
            whole = set() if rebuild else shared.complete(sorted(set(mounted.values())))
            stale += [p for p, s in mounted.items() if s not in whole]
        if stale:
            self.reindex(stale, force=rebuild)
        if shared is not None:  # this kernel's view: its own chunks and its mounted texts'
            held = shared.stored(sorted({s for p, s in truth.items() if _mounted(p)}))
            chunks = sum(len(nums) for nums, _of in held.values())
        return {
            "files": len(truth),
            "replayed": replayed,
            "reindexed": len(stale),
            "orphans": len(orphans),
            "chunks": index.count() + chunks,
        }


def _mounted(path: str) -> bool:
    return is_under(path, "/mnt")
