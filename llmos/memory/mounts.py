"""Host folders mounted read-only under `/mnt/<name>`: mount (or re-sync), umount, list.

Which host files a mount takes, and why it leaves the others, is `mountscan`'s; this module
copies what it takes into the store and leaves the index to `sync`. A mounted file keeps
its host file's mtime (`source_mtime`), so a re-sync reads only what changed on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmos.memory import mountscan
from llmos.memory.paths import BadPath, normalize
from llmos.memory.store import ROOT, FsError, NotFound, Store, sha256
from llmos.memory.sync import IndexSync

BATCH = 500  # files stored per transaction: bounds one transaction's size


class Mounts:
    """The mounts of one store. `report(phase, done, total)` hears reading as "read"."""

    def __init__(
        self, store: Store, sync: IndexSync, report: Callable[[str, int, int], None]
    ) -> None:
        self._store = store
        self._sync = sync
        self._report = report

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
        store = self._store
        host = Path(host).expanduser().resolve()
        if not host.is_dir():
            raise FsError(f"{host} is not a folder")
        if "/" in name or name in ("", ".", ".."):
            raise BadPath(f"mount name {name!r} must be a single name")
        root = normalize(f"/mnt/{name}")
        known = store.db.execute("SELECT host FROM mounts WHERE name = ?", (name,)).fetchone()
        if known is not None and Path(known["host"]) != host:
            raise FsError(f"/mnt/{name} is already mounted from another folder")
        files, skipped = mountscan.scan(
            host, include=include, exclude=exclude, max_bytes=max_file_bytes
        )
        stats: dict[str, Any] = {
            "files": 0, "added": 0, "updated": 0, "unchanged": 0, "removed": 0,
        }  # fmt: skip
        seen: set[str] = set()
        with store.tx() as c:
            c.execute("INSERT OR IGNORE INTO mounts(name, host) VALUES (?, ?)", (name, str(host)))
            if store.row(root) is None:
                store.add_dir(c, root, ROOT, 0o555, readonly=True, source=str(host))
        with _Batches(store) as batch:
            for i, (f, rel) in enumerate(files, 1):
                try:
                    vpath = normalize(f"{root}/{rel}")
                except BadPath as exc:
                    skipped.append(mountscan.Skip(rel, "bad name", str(exc)))
                    continue
                mtime = f.stat().st_mtime
                row = store.row(vpath)
                if row is not None and row["source_mtime"] == mtime:
                    stats["unchanged"] += 1  # read as text before, and not touched since
                else:
                    try:
                        text = mountscan.read_text(f)
                    except mountscan.NotText as exc:
                        skipped.append(mountscan.Skip(rel, exc.reason, exc.detail))
                        continue  # (not seen: a file that became binary leaves the mount)
                    if row is not None and row["sha"] == sha256(text):
                        batch.c.execute(
                            "UPDATE nodes SET source_mtime = ? WHERE path = ?", (mtime, vpath)
                        )
                        stats["unchanged"] += 1
                    else:
                        store.put(
                            batch.c, vpath, text, ROOT, mode=0o444, readonly=True,
                            source=str(f), source_mtime=mtime,
                        )  # fmt: skip
                        stats["updated" if row is not None else "added"] += 1
                        batch.stored()
                seen.add(vpath)
                if progress is not None:
                    progress(i, len(files))
                self._report("read", i, len(files))
            gone = [
                (p, kind) for p, kind in store.subtree(root) if kind == "file" and p not in seen
            ]
            store.delete_nodes(batch.c, gone)
            stats["removed"] = len(gone)
        stats["files"] = len(seen)
        skipped.sort(key=lambda sk: sk.path)
        stats["skipped"] = len(skipped)
        stats["skipped_by"] = mountscan.skip_counts(skipped)
        stats["skipped_files"] = [sk.as_dict() for sk in skipped[: mountscan.SKIPPED_LISTED]]
        if index:
            stats["indexed"] = self._sync.sync()
        return stats

    def umount(self, name: str) -> int:
        """Remove /mnt/<name> and all under it; returns nodes removed. Host files stay."""
        store = self._store
        root = normalize(f"/mnt/{name}")
        if store.db.execute("SELECT 1 FROM mounts WHERE name = ?", (name,)).fetchone() is None:
            raise NotFound(f"/mnt/{name} is not mounted")
        nodes = store.subtree(root)
        with store.tx() as c:
            store.delete_nodes(c, nodes)
            c.execute("DELETE FROM mounts WHERE name = ?", (name,))
        return len(nodes)

    def table(self) -> dict[str, str]:
        """Mount name → host folder."""
        rows = self._store.db.execute("SELECT name, host FROM mounts")
        return {str(r["name"]): str(r["host"]) for r in rows}


class _Batches:
    """Transactions of at most BATCH stored files: `c` is the open one, `stored()` counts a
    file and commits the batch when it is full. A failure rolls back only the open batch;
    committed ones stay, and a re-sync finds them unchanged."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._count = 0
        self._tx = store.tx()
        self.c = self._tx.__enter__()

    def stored(self) -> None:
        self._count += 1
        if self._count >= BATCH:
            self._tx.__exit__(None, None, None)
            self._tx = self._store.tx()
            self.c = self._tx.__enter__()
            self._count = 0

    def __enter__(self) -> _Batches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._tx.__exit__(*exc)  # commits, or on an exception rolls back and re-raises
