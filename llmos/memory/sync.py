"""Journal → index: how the Chroma index follows SQLite.

The index is derived. Every change leaves a row in `index_journal` in the same transaction
as its content; `sync` re-indexes the paths the journal names and only then deletes those
rows, so a crash at any point leaves work to redo, never a file the index silently lacks.
`fsck` also compares the whole index against SQLite, for an index that was lost or edited.
"""

from __future__ import annotations

from collections.abc import Callable

from llmos.memory.index import Index
from llmos.memory.paths import scope_key
from llmos.memory.store import Store, sha256

BATCH = 500  # paths per query: an fsck after a crash may have 10,000 of them


class IndexSync:
    """Applies a store's journal to its index. `index` opens the index on first use (it
    loads MiniLM); `report(phase, done, total)` hears embedding progress as "index"."""

    def __init__(
        self,
        store: Store,
        index: Callable[[], Index],
        report: Callable[[str, int, int], None],
    ) -> None:
        self._store = store
        self._index = index
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

    def reindex(self, paths: list[str]) -> None:
        """Bring these paths' index entries in line with SQLite, in batches (no query per
        file). A path that is no file any more leaves the index."""
        items = []
        for i in range(0, len(paths), BATCH):
            part = paths[i : i + BATCH]
            marks = ",".join("?" * len(part))
            rows = self._store.db.execute(
                f"SELECT path, sha, content FROM nodes WHERE kind = 'file' AND path IN ({marks})",
                part,
            ).fetchall()
            items += [
                (str(r["path"]), scope_key(str(r["path"])), str(r["sha"]), str(r["content"]))
                for r in rows
            ]
        self._index().replace(paths, items, progress=lambda d, t: self._report("index", d, t))

    def fsck(self, *, rebuild: bool = False) -> dict[str, int]:
        """Check the index against SQLite and repair it: journal replay, then any file whose
        indexed hash differs or is missing, and index entries for files that are gone."""
        replayed = self.sync()
        index = self._index()
        if rebuild:
            index.client.delete_collection(index.collection.name)
            index.collection = index.client.get_or_create_collection(
                index.collection.name, metadata={"hnsw:space": "cosine"}
            )
        indexed = index.indexed()
        truth = {
            str(r["path"]): str(r["sha"])
            for r in self._store.db.execute("SELECT path, sha FROM nodes WHERE kind = 'file'")
        }
        # An empty file has no chunks, so the index never holds its hash.
        stale = [p for p, s in truth.items() if indexed.get(p) != s and s != sha256("")]
        orphans = [p for p in indexed if p not in truth]
        if orphans:
            index.delete_paths(orphans)
        if stale:
            self.reindex(stale)
        return {
            "files": len(truth),
            "replayed": replayed,
            "reindexed": len(stale),
            "orphans": len(orphans),
            "chunks": index.count(),
        }
