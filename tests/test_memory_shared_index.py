"""The memory index on a Chroma server that several kernels share (`chroma_url`).

A real server (`chroma run`, the installed package's CLI) on loopback for the module, and
kernels with their own data dirs and the real MiniLM: a mounted corpus is embedded once
for all of them, each kernel's own files stay its own, and `fsck --rebuild` restores what
a wiped server lost.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from llmos.config import load_settings
from llmos.errors import ConfigError
from llmos.kernel.kernel import Kernel
from llmos.memory.fs import MemoryFS
from llmos.memory.index import Embedder
from tests.conftest import scripted_factory
from tests.servers import server_process

NOTES = {
    "garden.md": "The orchids in the greenhouse need misting twice a week in summer.",
    "bikes.md": "Replace the chain on the road bike every 3000 kilometres.",
    "bread.md": "Sourdough starter: feed it flour and water daily, keep it warm.",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _chroma_server(path: Path) -> Iterator[str]:
    """`chroma run` on loopback, storing in `path`; its URL once its heartbeat answers."""
    chroma = Path(sys.executable).parent / "chroma"
    if not chroma.exists():
        pytest.fail(f"the chroma CLI is missing beside {sys.executable} (pip install chromadb)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(chroma), "run", "--path", str(path / "db"), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with server_process(cmd, f"{url}/api/v2/heartbeat", path / "server.log", what="chroma run"):
        yield url


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Chroma server on loopback for this module, stopped at its end."""
    with _chroma_server(tmp_path_factory.mktemp("chroma")) as url:
        yield url


class Counting:
    """The real embedder, counting the texts it embeds (the seam below the index)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.texts = 0

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        self.texts += len(texts)
        return self.inner.embed(texts, batch_size)


@asynccontextmanager
async def _kernel(data: Path, url: str, embedder: Any) -> AsyncIterator[Kernel]:
    settings = load_settings(data_dir=data, chroma_url=url)
    async with Kernel(settings, backend_factory=scripted_factory(), embedder=embedder) as k:
        yield k


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = tmp_path_factory.mktemp("notes")
    for name, text in NOTES.items():
        (host / name).write_text(text)
    return host


async def test_a_kernel_writes_and_searches_on_the_server(
    tmp_path: Path, chroma_url: str, minilm: Embedder
) -> None:
    async with _kernel(tmp_path / "a", chroma_url, minilm) as k:
        fs = k.memory
        assert fs.chroma_url == chroma_url and fs.shared is not None
        fs.write("/home/ann/trip.md", "We take the night train to Vienna on Friday.")
        fs.write("/tmp/shop.md", "Buy eggs, milk and a new umbrella.")
        hits = fs.search("railway journey to Austria", k=1)
        assert hits[0].path == "/home/ann/trip.md" and "Vienna" in hits[0].text
        assert fs.search("groceries", "/tmp", k=1)[0].path == "/tmp/shop.md"
        assert fs.index.count() == 2  # in this kernel's own collection on the server
    # a restarted kernel on the same data dir finds its collection again
    async with _kernel(tmp_path / "a", chroma_url, minilm) as k:
        assert k.memory.index.count() == 2
        assert k.memory.search("train", "/home/ann", k=1)[0].path == "/home/ann/trip.md"


async def test_two_kernels_share_a_mounted_corpus(
    tmp_path: Path, chroma_url: str, corpus: Path, minilm: Embedder
) -> None:
    emb_a, emb_b = Counting(minilm), Counting(minilm)
    async with (
        _kernel(tmp_path / "a", chroma_url, emb_a) as a,
        _kernel(tmp_path / "b", chroma_url, emb_b) as b,
    ):
        assert a.memory.index.name != b.memory.index.name  # private collections
        first = a.memory.mount(corpus, "notes")
        assert first["added"] == 3 and emb_a.texts == 3  # one chunk per small note
        shared = a.memory.shared
        assert shared is not None
        stored = shared.count()

        second = b.memory.mount(corpus, "docs")  # same folder, another mount name
        assert second["added"] == 3 and second["indexed"] == 3
        assert emb_b.texts == 0  # found already embedded: nothing embedded again
        assert shared.count() == stored
        assert b.memory.index.count() == 0  # and nothing copied into B's own collection

        hit_a = a.memory.search("how often to water orchids", "/mnt/notes", k=1)[0]
        hit_b = b.memory.search("how often to water orchids", "/mnt/docs", k=1)[0]
        assert (hit_a.path, hit_b.path) == ("/mnt/notes/garden.md", "/mnt/docs/garden.md")
        assert hit_a.text == hit_b.text == NOTES["garden.md"]
        assert b.memory.search("bicycle maintenance", k=1)[0].path == "/mnt/docs/bikes.md"
        report = b.memory.fsck()
        assert (report["reindexed"], report["orphans"], report["chunks"]) == (0, 0, 3), report

        # a changed file: B embeds only its new text, A still sees the old one it holds
        (corpus / "bread.md").write_text("Rye bread needs a longer, cooler proof than wheat.")
        emb_b.texts = 0  # (B's searches embedded their queries)
        again = b.memory.mount(corpus, "docs")
        assert again["updated"] == 1 and emb_b.texts == 1
        assert "Sourdough" in a.memory.search("starter", "/mnt/notes/bread.md", k=1)[0].text
        assert "Rye" in b.memory.search("proofing rye", "/mnt/docs", k=1)[0].text
        (corpus / "bread.md").write_text(NOTES["bread.md"])


async def test_private_files_do_not_leak_between_kernels(
    tmp_path: Path, chroma_url: str, minilm: Embedder
) -> None:
    host = tmp_path / "a-only"
    host.mkdir()
    (host / "plan.md").write_text("The secret rendezvous is at the lighthouse at midnight.")
    async with (
        _kernel(tmp_path / "a", chroma_url, minilm) as a,
        _kernel(tmp_path / "b", chroma_url, minilm) as b,
    ):
        a.memory.write("/home/alice/diary.md", "My bank PIN is hidden under the blue teapot.")
        a.memory.write("/etc/motd", "Welcome to kernel A, home of the pelican mascot.")
        a.memory.mount(host, "private")
        b.memory.write("/tmp/b.md", "Kernel B keeps a shopping list of apples and pears.")
        for query in ("bank PIN teapot", "pelican mascot", "secret rendezvous lighthouse"):
            hits = b.memory.search(query, k=5)
            assert [h.path for h in hits] == ["/tmp/b.md"], hits
        assert b.memory.search("lighthouse", "/mnt", k=5) == []
        assert a.memory.search("bank PIN", k=1)[0].path == "/home/alice/diary.md"
        assert a.memory.search("lighthouse", "/mnt", k=1)[0].path == "/mnt/private/plan.md"


def test_an_unreachable_server_is_one_clear_error(tmp_path: Path, hash_embedder: Any) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    fs = MemoryFS(tmp_path / "m", embedder=hash_embedder, chroma_url=url)
    fs.write("/tmp/a.md", "kept in SQLite, the truth, while the index is away")
    with pytest.raises(ConfigError, match=rf"Chroma server at {url} \(chroma_url\) does not"):
        fs.search("anything")
    assert fs.read("/tmp/a.md").startswith("kept") and fs.pending() == 1
    fs.close()
    with pytest.raises(ConfigError, match="chroma_url"):
        load_settings(chroma_url="127.0.0.1:8000")  # no scheme
    bad = MemoryFS(tmp_path / "n", embedder=hash_embedder, chroma_url="http://h:1/x")
    with pytest.raises(ConfigError, match="no path"):
        bad.fsck()
    bad.close()


def test_a_server_lost_mid_work_is_one_clear_error(tmp_path: Path, hash_embedder: Any) -> None:
    with _chroma_server(tmp_path) as url:
        fs = MemoryFS(tmp_path / "m", embedder=hash_embedder, chroma_url=url)
        fs.write("/tmp/a.md", "indexed while the server is up")
        assert fs.search("server up", k=1)[0].path == "/tmp/a.md"
    fs.write("/tmp/b.md", "written after the server went away")
    with pytest.raises(ConfigError, match=rf"Chroma server at {url} \(chroma_url\) stopped"):
        fs.search("anything")
    assert fs.pending() == 1  # still journaled: the next sync indexes it
    fs.close()


async def test_rebuild_repopulates_a_wiped_server(
    tmp_path: Path, chroma_url: str, corpus: Path, minilm: Embedder
) -> None:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    emb_a, emb_b = Counting(minilm), Counting(minilm)
    async with (
        _kernel(tmp_path / "a", chroma_url, emb_a) as a,
        _kernel(tmp_path / "b", chroma_url, emb_b) as b,
    ):
        a.memory.write("/home/ann/todo.md", "Call the plumber about the leaking tap.")
        b.memory.write("/home/bob/todo.md", "Renew the passport before the summer trip.")
        a.memory.mount(corpus, "notes")
        b.memory.mount(corpus, "notes")
        before = a.memory.fsck()
        port = int(chroma_url.rsplit(":", 1)[1])
        client = chromadb.HttpClient(
            host="127.0.0.1", port=port, settings=ChromaSettings(anonymized_telemetry=False)
        )
        for col in client.list_collections():
            client.delete_collection(col.name)  # the server loses everything
        assert client.list_collections() == []

        emb_a.texts = 0
        report = a.memory.fsck(rebuild=True)
        assert report["files"] == 4 and report["chunks"] == before["chunks"] == 4, report
        assert emb_a.texts == 4  # a rebuild embeds all its files again
        assert a.memory.search("plumber", k=1)[0].path == "/home/ann/todo.md"
        assert a.memory.search("orchids", "/mnt/notes", k=1)[0].path == "/mnt/notes/garden.md"

        emb_b.texts = 0
        fixed = b.memory.fsck()  # B's own collection is gone too; the mount is A's again
        assert fixed["reindexed"] == 1 and emb_b.texts == 1, fixed
        assert b.memory.search("passport", k=1)[0].path == "/home/bob/todo.md"
        assert b.memory.search("sourdough", "/mnt", k=1)[0].path == "/mnt/notes/bread.md"
