"""Semantic search with real MiniLM embeddings and a real Chroma index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llmos.memory.fs import MemoryFS
from llmos.memory.index import Embedder

DATA = Path(__file__).parent / "data" / "retrieval"


@pytest.fixture(scope="module")
def embedder(minilm: Embedder) -> Embedder:
    return minilm  # retrieval quality is MiniLM's: a missing model fails, never skips


def _pdf(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica (enough for pypdf's extractor)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1,
        xref,
    )
    return bytes(out)


def test_retrieval_set_recall_at_3(tmp_path: Path, embedder: Embedder) -> None:
    fs = MemoryFS(tmp_path / "m", embedder=embedder)
    stats = fs.mount(DATA / "docs", "kb")
    assert stats["added"] == len(list((DATA / "docs").iterdir()))
    queries = json.loads((DATA / "queries.json").read_text())
    found = 0
    for item in queries:
        hits = fs.search(item["q"], "/mnt/kb", k=3)
        assert all(h.path.startswith("/mnt/kb/") for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        found += any(h.path == f"/mnt/kb/{item['doc']}" for h in hits)
    recall = found / len(queries)
    assert recall >= 0.9, f"recall@3 {recall:.2f}"


def test_mount_resync_changes_only(tmp_path: Path, embedder: Embedder) -> None:
    host = tmp_path / "host"
    shutil.copytree(DATA / "docs", host)
    (host / "report.pdf").write_bytes(_pdf("The quarterly zeppelin budget is forty thousand"))
    (host / "image.png").write_bytes(b"\x89PNG not text")
    fs = MemoryFS(tmp_path / "m", embedder=embedder)
    seen: list[tuple[int, int]] = []
    first = fs.mount(host, "docs", progress=lambda i, n: seen.append((i, n)))
    assert first["added"] == 13 and seen[-1] == (13, 13)
    assert "zeppelin budget" in fs.read("/mnt/docs/report.pdf")
    assert fs.search("airship finances", "/mnt/docs", k=1)[0].path == "/mnt/docs/report.pdf"

    before = fs.index.embedded_chunks
    again = fs.mount(host, "docs")
    assert again == {**again, "added": 0, "updated": 0, "removed": 0, "unchanged": 13}
    assert fs.index.embedded_chunks == before  # an unchanged folder embeds nothing

    os.utime(host / "chess.md")  # touched, same bytes: still nothing to embed
    (host / "tides.txt").write_text("Tides now describe the rings of Saturn and ice moons.")
    (host / "guitar.md").unlink()
    third = fs.mount(host, "docs")
    assert (third["updated"], third["removed"], third["unchanged"]) == (1, 1, 11)
    assert fs.index.embedded_chunks == before + 1
    assert fs.search("rings of Saturn", "/mnt/docs", k=1)[0].path == "/mnt/docs/tides.txt"
    assert all(h.path != "/mnt/docs/guitar.md" for h in fs.search("guitar tuning", k=10))

    assert fs.umount("docs") == 13  # the directory and its 12 files
    assert fs.search("guitar tuning", k=5) == []


def test_search_scope_and_privacy(tmp_path: Path, embedder: Embedder) -> None:
    fs = MemoryFS(tmp_path / "m", embedder=embedder)
    fs.write("/home/alice/diary.md", "I buried the treasure under the old oak tree.", "alice")
    fs.write("/home/bob/diary.md", "Bob hid the gold coins beneath a tree stump.", "bob")
    fs.write("/tmp/shared/oak.md", "Oak trees live for centuries.", "bob")
    assert {h.path for h in fs.search("where is the treasure hidden", "/home", 5)} == {
        "/home/alice/diary.md",
        "/home/bob/diary.md",
    }
    bob_sees = {h.path for h in fs.search("treasure hidden under a tree", "/", 5, user="bob")}
    assert "/home/alice/diary.md" not in bob_sees
    assert {"/home/bob/diary.md", "/tmp/shared/oak.md"} <= bob_sees
    top = fs.search("where is the treasure hidden", "/home/alice", 5)
    assert [h.path for h in top] == ["/home/alice/diary.md"]


def test_scoped_search_equals_chroma_filtered_query(tmp_path: Path, embedder: Embedder) -> None:
    """Search tries the nearest chunks overall first and filters by scope only when too few
    are in scope: both paths must give what Chroma's own filtered query gives."""
    fs = MemoryFS(tmp_path / "m", embedder=embedder)
    for i in range(60):  # a crowded scope of near neighbours...
        fs.write(f"/home/crowd/n{i:02d}.md", f"Tea note {i}: steep green tea at 80 degrees.")
    fs.write("/home/thin/only.md", "Brewing tea: black tea wants boiling water.")  # ...a thin one
    fs.write("/home/thin/other.md", "The bicycle chain needs oil every month.")
    fs.sync_index()
    vec = embedder.embed(["how hot should the water be for tea"])[0]

    def filtered(scope: str, k: int) -> list[tuple[str, str, int]]:
        rows = fs.index.query(vec, k, {"scope": scope})
        return [(p, text, chunk) for p, text, _, chunk in rows]

    query = "how hot should the water be for tea"
    for root, k in (("/home/crowd", 5), ("/home/thin", 2), ("/home/thin", 1)):
        got = [(h.path, h.text, h.chunk) for h in fs.search(query, root, k)]
        assert got == filtered(root, k), root
    assert [h.path for h in fs.search(query, "/home/thin", 1)] == ["/home/thin/only.md"]


def test_appending_embeds_only_the_new_tail(tmp_path: Path, embedder: Embedder) -> None:
    """A growing log (the assistant's recall) must not be embedded again from the start on
    every sync: unchanged chunks keep their vectors, identical to a fresh embedding."""
    fs = MemoryFS(tmp_path / "m", embedder=embedder)
    turns = [f"**user**: question {i} about the {w} garden\n\n" for i, w in
             enumerate(["rose", "tulip", "cactus", "fern", "orchid", "lily"] * 8)]  # fmt: skip
    fs.write("/home/a/log.md", "".join(turns[:40]), "a")
    fs.sync_index()
    first = fs.index.embedded_chunks
    assert first >= 2
    fs.append("/home/a/log.md", "".join(turns[40:]), "a")
    fs.sync_index()
    added = fs.index.embedded_chunks - first
    kept = fs.index.known(["/home/a/log.md"])
    assert 1 <= added < len(kept), (added, len(kept))  # only the tail, not the whole file
    for doc, vec in kept.values():  # every stored vector is its own text's vector
        fresh = embedder.embed([doc])[0]
        assert abs(float(sum(a * b for a, b in zip(vec, fresh, strict=True))) - 1) < 1e-4
    assert fs.search("which garden had orchids", "/home/a", 1)[0].path == "/home/a/log.md"


def test_fsck_rebuilds_a_lost_index(tmp_path: Path, embedder: Embedder) -> None:
    fs = MemoryFS(tmp_path / "m", embedder=embedder)
    fs.mount(DATA / "docs", "kb")
    fs.write("/tmp/a.md", "a note about volcanic ash clouds")
    want = [h.path for h in fs.search("volcanic eruption", k=3)]
    fs.index.client.delete_collection("memory")  # the index is derived; lose it entirely
    fs.close()
    fs2 = MemoryFS(tmp_path / "m", embedder=embedder)
    report = fs2.fsck()
    assert report["reindexed"] == 13 and report["files"] == 13, report
    assert [h.path for h in fs2.search("volcanic eruption", k=3)] == want
