"""Mount takes text by content, skips the rest with a reason, and says so; search and qa over
a scope with nothing indexed answer one clear error. Real SQLite and Chroma, real MiniLM."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from llmos.errors import NothingIndexed
from llmos.memory.fs import MemoryFS
from llmos.memory.index import Embedder
from llmos.memory.mountscan import mount_summary, skipped_lines, sniff

TEXTS = {
    "README": "This project keeps notes about the garden.\n",
    "LICENSE": "Permission is hereby granted, free of charge, to any person.\n",
    "NOTES.0": "Version-like suffix: still plain text about tomatoes.\n",
    "Makefile": "all:\n\techo build\n",
    "plan.org": "* TODO water the ferns\n",
    "paper.tex": "\\section{Soil} Loam holds water well.\n",
    "data.csv": "plant,height\nfern,40\n",
    "app.log": "2026-01-01 12:00:00 started\n",
    "docs/guide.md": "# Guide\nPrune roses in early spring.\n",
    "café.txt": "Un café au lait, s'il vous plaît.\n",
}
UTF16 = "Notes saved by a Windows editor: basil likes sun.\n"


def make_tree(host: Path) -> None:
    for name, text in TEXTS.items():
        (host / name).parent.mkdir(parents=True, exist_ok=True)
        (host / name).write_text(text, encoding="utf-8")
    (host / "WINNOTES").write_bytes(codecs.BOM_UTF16_LE + UTF16.encode("utf-16-le"))
    (host / "bom.md").write_bytes(codecs.BOM_UTF8 + b"# With a BOM\n")
    (host / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (host / "picture").write_bytes(b"\x89PNG\r\n\x1a\n" + b"IHDR" * 10)  # magic, no suffix
    (host / "blob.0").write_bytes(b"abc\x00def" * 10)  # NUL bytes
    (host / "latin").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))  # not UTF-8
    (host / "legacy.txt").write_bytes("na\u00efve".encode("latin-1"))  # a text suffix vouches
    (host / "big.txt").write_text("x" * 5000)
    for junk in (".git/HEAD", "node_modules/pkg/index.js", "__pycache__/m.txt", ".venv/a.py"):
        (host / junk).parent.mkdir(parents=True, exist_ok=True)
        (host / junk).write_text("tool files\n")
    (host / ".env").write_text("API_TOKEN=secret\n")  # text, but credentials
    (host / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (host / ".ssh").mkdir()
    (host / ".ssh" / "config").write_text("Host *\n")
    (host / "env").mkdir()
    (host / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a virtualenv by content
    (host / "env" / "site.py").write_text("print('x')\n")


def mounted_files(fs: MemoryFS, name: str) -> set[str]:
    root = f"/mnt/{name}/"
    return {p[len(root) :] for p in fs.find(f"/mnt/{name}") if fs.stat(p).kind == "file"}


def test_mount_takes_text_by_content_and_counts_what_it_skips(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    make_tree(host)
    fs = MemoryFS(tmp_path / "m")
    stats = fs.mount(host, "h", index=False, max_file_bytes=4096)
    text_files = set(TEXTS) | {"WINNOTES", "bom.md", "legacy.txt"}
    assert mounted_files(fs, "h") == text_files
    assert stats["files"] == stats["added"] == len(text_files)
    assert fs.read("/mnt/h/WINNOTES") == UTF16  # UTF-16 by its byte-order mark
    assert fs.read("/mnt/h/bom.md") == "# With a BOM\n"
    assert fs.read("/mnt/h/legacy.txt") == "na\ufffdve"  # kept, as before sniffing
    assert fs.read("/mnt/h/NOTES.0") == TEXTS["NOTES.0"]
    skipped = {(s["path"], s["reason"]) for s in stats["skipped_files"]}
    assert skipped == {
        ("logo.png", "binary"), ("picture", "binary"), ("blob.0", "binary"),
        ("latin", "not utf-8"), ("big.txt", "too large"),
        (".git/", "excluded"), ("node_modules/", "excluded"), ("__pycache__/", "excluded"),
        (".venv/", "excluded"), ("env/", "excluded"),
        (".env", "excluded"), ("id_rsa", "excluded"), (".ssh/", "excluded"),
    }  # fmt: skip
    assert stats["skipped"] == 13
    assert stats["skipped_by"] == {"excluded": 8, "binary": 3, "not utf-8": 1, "too large": 1}
    details = {s["path"]: s["detail"] for s in stats["skipped_files"]}
    assert details["picture"] == "PNG image" and details["env/"] == "a virtualenv"
    assert details["id_rsa"] == details[".ssh/"] == "may hold secrets"
    assert mount_summary(stats).endswith(
        "skipped 13: excluded 8, binary 3, not utf-8 1, too large 1"
    )
    assert "  big.txt  too large (4.9 KB > mount_max_file_bytes 4.0 KB)" in skipped_lines(stats)

    # a re-sync with globs: what they exclude leaves the mount, the rest is unchanged
    again = fs.mount(host, "h", index=False, max_file_bytes=4096, exclude=["*.log", "docs"])
    assert (again["removed"], again["unchanged"]) == (2, len(text_files) - 2)
    assert {"app.log", "docs/guide.md"}.isdisjoint(mounted_files(fs, "h"))
    assert {"app.log", "docs/"} <= {s["path"] for s in again["skipped_files"]}
    only = fs.mount(host, "h", index=False, max_file_bytes=4096, include=["*.md", "README"])
    assert mounted_files(fs, "h") == {"README", "bom.md", "docs/guide.md"}
    why = {s["path"]: s["detail"] for s in only["skipped_files"]}
    assert why["LICENSE"] == "not matched by --include"
    # the size cap off: the big file comes in
    fs.mount(host, "h", index=False, max_file_bytes=0, include=["big.txt"])
    assert mounted_files(fs, "h") == {"big.txt"}


def test_sniff_rules() -> None:
    assert sniff(b"plain words", "", whole=True) == "utf-8"
    assert sniff("caf\u00e9".encode()[:4], "", whole=False) == "utf-8"  # a cut character
    assert sniff(b"%PDF-1.4 ...", "", whole=False) == "pdf"
    assert sniff(codecs.BOM_UTF16_BE + "hi".encode("utf-16-be"), "", whole=True) == "utf-16"
    assert sniff(b"", "", whole=True) == "utf-8"  # an empty file is (empty) text


@pytest.fixture(scope="module")
def embedder(hash_embedder: Embedder) -> Embedder:
    # what these tests check (scopes, slices stored) holds for any embedder: no MiniLM
    return hash_embedder


def test_search_and_qa_scope_with_nothing_indexed(tmp_path: Path, embedder: Embedder) -> None:
    """A mount of binaries only: search there returned Chroma's own ValueError ("Expected
    IDs to be a non-empty list") once other files were indexed; now an empty result from
    the filesystem, and NothingIndexed from the check the syscalls make."""
    host = tmp_path / "bin"
    host.mkdir()
    (host / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (host / "b").write_bytes(b"\x00\x01\x02")
    fs = MemoryFS(tmp_path / "m", embedder=embedder)
    fs.write("/tmp/elsewhere.md", "Notes about something else entirely: the harbour.")
    stats = fs.mount(host, "bin")
    assert (stats["files"], stats["skipped"]) == (0, 2)
    assert fs.search("harbour", "/mnt/bin", k=5) == []
    with pytest.raises(NothingIndexed, match=r"^nothing indexed under /mnt/bin$"):
        fs.require_indexed("/mnt/bin")
    fs.require_indexed("/")  # /tmp/elsewhere.md has text
    fs.require_indexed("/tmp")
    with pytest.raises(NothingIndexed):
        fs.require_indexed("/mnt/nothing/here")


class Interrupted(Exception):
    pass


class CutShort:
    """The real embedder, until `calls` embed calls have been made (a kill mid-fsck)."""

    def __init__(self, real: Embedder, calls: int) -> None:
        self.real = real
        self.calls = calls

    def embed(self, texts: list[str]) -> object:
        if self.calls == 0:
            raise Interrupted
        self.calls -= 1
        return self.real.embed(texts)


def test_an_interrupted_fsck_keeps_what_it_stored(
    tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks are stored slice by slice as they are embedded: an fsck of thousands of files
    cut short keeps its finished slices, and the next run embeds only the rest."""
    import llmos.memory.index as index_mod

    monkeypatch.setattr(index_mod, "EMBED_SLICE", 8)
    fs = MemoryFS(tmp_path / "m", embedder=CutShort(embedder, calls=2))
    for i in range(30):
        fs.write(f"/home/w/n{i:02d}.md", f"Note {i}: the {i}th lantern by the harbour wall.")
    with pytest.raises(Interrupted):
        fs.fsck()
    assert fs.index.count() == 16  # two slices of 8 were stored before the cut
    fs.close()
    again = MemoryFS(tmp_path / "m", embedder=embedder)
    before = again.index.embedded_chunks
    report = again.fsck()
    assert report == {**report, "files": 30, "replayed": 30, "chunks": 30}
    assert again.index.embedded_chunks - before == 14  # the 16 stored were reused
    assert again.search("the 7th lantern", "/home/w", k=1)[0].path == "/home/w/n07.md"
