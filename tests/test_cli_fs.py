"""`llmos fs ...` and `llmos qa` on the real memory filesystem (SQLite, Chroma, MiniLM):
embedded on a data directory (`--local`), and through a real daemon on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from llmos.cli import app
from llmos.memory.index import Embedder
from tests.conftest import HashEmbedder, one_line_error

runner = CliRunner()

DOCS = {
    "tea.md": "Green tea is steeped in water at eighty degrees Celsius for two minutes; "
    "boiling water makes it bitter.",
    "bikes.txt": "A bicycle chain needs a drop of oil on every link every few hundred "
    "kilometres, and a wipe afterwards.",
    "notes/volcano.md": "Stratovolcanoes are steep cones built from layers of lava and ash "
    "thrown out by explosive eruptions.",
}


def fs(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, ["fs", *args], input=input)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (host / name).parent.mkdir(parents=True, exist_ok=True)
        (host / name).write_text(text)
    (host / "photo.png").write_bytes(b"\x89PNG not text")  # skipped: not a text file
    return host


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, minilm: Embedder) -> Path:
    # `llmos fs --local` boots a kernel that indexes with MiniLM: `minilm` marks every
    # test on this data directory `torch`
    return tmp_path_factory.mktemp("cli-data")


@pytest.fixture(scope="module")
def mounted(data_dir: Path, docs: Path) -> str:
    """The docs folder mounted at /mnt/docs in the module's data directory; mount's output."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_DATA_DIR", str(data_dir))
        return ok(fs("mount", str(docs), "docs", "--local", "--progress"))


@pytest.fixture
def local(data_dir: Path, mounted: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command of the test works on the module's data directory."""
    monkeypatch.setenv("LLMOS_DATA_DIR", str(data_dir))
    return data_dir


def test_mount_shows_progress_and_counts(mounted: str, docs: Path) -> None:
    assert f"mounted {docs} at /mnt/docs: 3 files (3 added, 0 updated" in mounted
    assert "3 indexed" in mounted
    assert "reading files" in mounted and "indexing chunks" in mounted  # the progress bar
    assert "3/3" in mounted


def test_remount_is_a_resync(local: Path, docs: Path) -> None:
    out = json.loads(ok(fs("mount", str(docs), "docs", "--local", "--json", "--no-progress")))
    assert (out["added"], out["updated"], out["unchanged"], out["removed"]) == (0, 0, 3, 0)


def test_ls_cat_find_grep(local: Path) -> None:
    lines = ok(fs("ls", "/mnt/docs", "--local")).splitlines()
    assert [ln.split()[-1] for ln in lines] == [
        "/mnt/docs/bikes.txt", "/mnt/docs/notes/", "/mnt/docs/tea.md",
    ]  # fmt: skip
    assert lines[0].startswith("-r--r--r-- root")  # mounted files are read-only
    entries = json.loads(ok(fs("ls", "/mnt/docs/notes", "--local", "--json")))
    assert [(e["path"], e["kind"], e["size"]) for e in entries] == [
        ("/mnt/docs/notes/volcano.md", "file", len(DOCS["notes/volcano.md"]))
    ]
    assert ok(fs("cat", "/mnt/docs/tea.md", "--local")) == DOCS["tea.md"] + "\n"
    assert ok(fs("find", "*.md", "/mnt", "--local")).split() == [
        "/mnt/docs/notes/volcano.md", "/mnt/docs/tea.md",
    ]  # fmt: skip
    assert ok(fs("grep", r"\boil\b|lava", "/mnt/docs", "--local")).splitlines() == [
        f"/mnt/docs/bikes.txt:1:{DOCS['bikes.txt']}",
        f"/mnt/docs/notes/volcano.md:1:{DOCS['notes/volcano.md']}",
    ]


def test_search_finds_the_right_file(local: Path) -> None:
    out = ok(fs("search", "how hot should the water be for green tea", "/mnt/docs", "--local"))
    assert out.splitlines()[0].split()[1] == "/mnt/docs/tea.md"
    hits = json.loads(ok(fs("search", "lubricating a bike", "-k", "2", "--local", "--json")))
    assert len(hits) == 2 and hits[0]["path"] == "/mnt/docs/bikes.txt"
    assert hits[0]["score"] > hits[1]["score"]


def test_write_mkdir_history_rollback_rm(local: Path) -> None:
    assert ok(fs("mkdir", "/home/me/notes", "--local")) == "made /home/me/notes/\n"
    assert "notes" in ok(fs("ls", "/home/me", "--local"))
    path = "/home/me/notes/plan.txt"
    assert ok(fs("write", path, "first draft", "--local")) == f"wrote {path} (version 1)\n"
    assert ok(fs("write", path, "--local", input="second draft\n")) == f"wrote {path} (version 2)\n"
    assert ok(fs("cat", path, "--local")) == "second draft\n\n"
    history = ok(fs("history", path, "--local")).splitlines()
    assert [h.split()[0] for h in history] == ["v1", "v2"]
    assert history[0].endswith(f"{len('first draft')} chars")
    out = ok(fs("rollback", path, "1", "--local"))
    assert out == f"{path}: version 1 restored as version 3\n"
    assert ok(fs("cat", path, "--local")) == "first draft\n"
    assert len(json.loads(ok(fs("history", path, "--local", "--json")))) == 3
    # the write is searchable too (the index catches up from its journal)
    hits = json.loads(ok(fs("search", "a draft of the plan", "/home/me", "--local", "--json")))
    assert hits[0]["path"] == path
    assert "not empty" in one_line_error(fs("rm", "/home/me/notes", "--local"))
    assert ok(fs("rm", path, "--local")) == f"removed {path}\n"
    assert "no such file" in one_line_error(fs("cat", path, "--local"))
    ok(fs("write", "/home/me/notes/b.txt", "b", "--local"))
    assert ok(fs("rm", "-r", "/home/me/notes", "--local")) == "removed /home/me/notes\n"
    assert "no such file" in one_line_error(fs("ls", "/home/me/notes", "--local"))


def test_fsck_repairs_and_rebuilds(local: Path) -> None:
    report = json.loads(ok(fs("fsck", "--local", "--json")))
    assert report["files"] >= 3 and report["reindexed"] == 0 and report["orphans"] == 0
    rebuilt = json.loads(ok(fs("fsck", "--rebuild", "--local", "--json")))
    assert rebuilt["reindexed"] == rebuilt["files"] == report["files"]
    assert rebuilt["chunks"] == report["chunks"]
    out = ok(fs("search", "explosive eruptions of ash", "/mnt/docs", "-k", "1", "--local"))
    assert out.split()[1] == "/mnt/docs/notes/volcano.md"
    assert ok(fs("fsck", "--local")).splitlines()[0].split()[0] == "files"


def test_errors_are_one_line(local: Path, tmp_path: Path) -> None:
    assert "escapes the root" in one_line_error(fs("cat", "/../etc/passwd", "--local"))
    assert "outside the namespace" in one_line_error(fs("ls", "/usr", "--local"))
    assert "no such file" in one_line_error(fs("cat", "/mnt/docs/none.md", "--local"))
    assert "read-only" in one_line_error(fs("write", "/mnt/docs/tea.md", "x", "--local"))
    assert "read-only" in one_line_error(fs("rm", "/mnt/docs/tea.md", "--local"))
    assert "read-only" in one_line_error(fs("rollback", "/mnt/docs/tea.md", "1", "--local"))
    ok(fs("write", "/tmp/once.txt", "v1", "--local"))
    assert "no version 9" in one_line_error(fs("rollback", "/tmp/once.txt", "9", "--local"))
    assert "no history" in one_line_error(fs("history", "/tmp/never.txt", "--local"))
    assert "not a folder" in one_line_error(fs("mount", str(tmp_path / "nope"), "x", "--local"))
    assert "not mounted" in one_line_error(fs("umount", "nothing", "--local"))
    assert "not both" in one_line_error(fs("ls", "--local", "--url", "http://127.0.0.1:9"))
    out = one_line_error(fs("ls", "/", "--url", f"http://127.0.0.1:{_free_port()}"))
    assert "cannot reach the llmos daemon" in out


def test_umount_removes_files_and_index(data_dir: Path, docs: Path, tmp_path: Path) -> None:
    # a second mount of its own, so the module's /mnt/docs stays for the other tests
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_DATA_DIR", str(data_dir))
        ok(fs("mount", str(docs / "notes"), "geo", "--local", "--no-progress"))
        hits = json.loads(ok(fs("search", "lava cones", "/mnt/geo", "--local", "--json")))
        assert [h["path"] for h in hits] == ["/mnt/geo/volcano.md"]
        assert ok(fs("umount", "geo", "--local")) == "unmounted /mnt/geo (2 entries)\n"
        hits = json.loads(ok(fs("search", "lava cones", "-k", "5", "--local", "--json")))
        assert all(not h["path"].startswith("/mnt/geo") for h in hits)
        assert "no such file" in one_line_error(fs("ls", "/mnt/geo", "--local"))


def test_proc_lists_the_embedded_kernels_own_process(local: Path) -> None:
    entries = json.loads(ok(fs("ls", "/proc", "--local", "--json")))
    assert [e["path"] for e in entries] == ["/proc/1"]  # the one process of this command
    status = ok(fs("cat", "/proc/1/status", "--local"))
    assert "name:\tcli:fs.read\n" in status and "state:\trunning\n" in status
    assert "read-only" in one_line_error(fs("write", "/proc/1/status", "x", "--local"))


def test_qa_cites_the_mounted_source(local: Path, real_model_path: Path) -> None:
    question = "At what temperature is green tea steeped?"
    args = ["qa", question, "--scope", "/mnt/docs", "-k", "1", "--max-tokens", "24", "--local"]
    out = json.loads(ok(runner.invoke(app, [*args, "--json"])))
    assert out["sources"] == ["/mnt/docs/tea.md"]
    assert isinstance(out["answer"], str) and out["answer"]
    args[1] = "How often should a bicycle chain be oiled?"
    text = ok(runner.invoke(app, args))
    assert text.rstrip().endswith("sources:\n  /mnt/docs/bikes.txt")


def test_mount_says_what_it_skipped_and_empty_scopes_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm: Embedder
) -> None:
    """Plain text without a known suffix is mounted; the rest is counted by reason (and
    listed with --verbose); search and qa over a scope with nothing indexed are one line."""
    monkeypatch.setenv("LLMOS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLMOS_MOUNT_MAX_FILE_BYTES", "4096")
    host = tmp_path / "plain"
    host.mkdir()
    (host / "README").write_text("Basil wants six hours of sun a day and warm soil.")
    (host / "NOTES.0").write_text("Version-like name: thyme survives a dry summer.")
    (host / "big.log").write_text("x" * 5000)
    (host / "photo").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (host / ".git").mkdir()
    (host / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (host / "skip.me").write_text("left out by a glob")
    args = ["mount", str(host), "plain", "--local", "--no-progress", "--exclude", "*.me"]
    lines = ok(fs(*args, "--verbose")).splitlines()
    assert lines == [
        f"mounted {host.resolve()} at /mnt/plain: 2 files (2 added, 0 updated, 0 unchanged, "
        "0 removed); 2 indexed; skipped 4: excluded 2, binary 1, too large 1",
        "  .git/  excluded (by default)",
        "  big.log  too large (4.9 KB > mount_max_file_bytes 4.0 KB)",
        "  photo  binary (PNG image)",
        "  skip.me  excluded (--exclude *.me)",
    ]
    out = json.loads(ok(fs(*args, "--include", "README", "--json")))
    assert (out["files"], out["unchanged"], out["removed"]) == (1, 1, 1)
    assert out["skipped_by"] == {"excluded": 5}  # (not matched by --include: not read)
    hits = json.loads(ok(fs("search", "how much sun for basil", "/mnt/plain", "--local", "--json")))
    assert hits[0]["path"] == "/mnt/plain/README"

    empty = tmp_path / "binaries"
    empty.mkdir()
    (empty / "x.bin").write_bytes(b"\x00\x01")
    out = ok(fs("mount", str(empty), "bin", "--local")).rstrip()
    assert out.endswith(
        "0 files (0 added, 0 updated, 0 unchanged, 0 removed); 0 indexed; skipped 1: binary 1"
    )
    want = "error: nothing indexed under /mnt/bin"
    assert one_line_error(fs("search", "basil", "/mnt/bin", "--local")) == want
    qa_args = ["qa", "how much sun?", "--scope", "/mnt/bin", "--local"]
    assert one_line_error(runner.invoke(app, qa_args)) == want


def test_fsck_progress_shows_without_a_terminal(local: Path) -> None:
    """Asked for (--progress) with stderr not a terminal: plain lines with counts and rate,
    not a bar that a file shows only at the end."""
    out = ok(fs("fsck", "--rebuild", "--local", "--progress"))
    progress = [ln for ln in out.splitlines() if ln.startswith("indexing chunks: ")]
    assert progress and progress[-1].split(",")[0].endswith("(100%)"), out
    assert "chunks/s" in progress[-1]
    quiet = ok(fs("fsck", "--local"))  # quick work, not asked: only the report
    assert quiet.splitlines()[0].split()[0] == "files"


# -- through a daemon -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, hash_embedder: HashEmbedder
) -> Iterator[tuple[str, Any]]:
    from tests.test_server import serve_scripted

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
        with serve_scripted(tmp_path_factory.mktemp("daemon"), embedder=hash_embedder) as s:
            yield s


def test_remote_commands(daemon: tuple[str, Any], docs: Path) -> None:
    url = daemon[0]
    kernel = daemon[1].state.api.kernel
    assert ok(fs("mkdir", "/home/api/box", "--url", url)) == "made /home/api/box/\n"
    path = "/home/api/box/tea.txt"
    assert ok(fs("write", path, DOCS["tea.md"], "--url", url)).startswith(f"wrote {path}")
    ok(fs("write", path, "Oolong is steeped hotter, near ninety degrees.", "--url", url))
    assert [h["version"] for h in json.loads(ok(fs("history", path, "--url", url, "--json")))] == [
        1, 2,
    ]  # fmt: skip
    assert ok(fs("rollback", path, "1", "--url", url)).endswith("restored as version 3\n")
    assert ok(fs("cat", path, "--url", url)) == DOCS["tea.md"] + "\n"
    entries = json.loads(ok(fs("ls", "/home/api/box", "--url", url, "--json")))
    assert [e["path"] for e in entries] == [path]
    hits = json.loads(
        ok(fs("search", "green tea temperature", "/home/api", "--url", url, "--json"))
    )
    assert hits[0]["path"] == path
    # the daemon's own kernel did the work: its memory has the file

    assert kernel.memory.read(path) == DOCS["tea.md"]
    # the daemon answers qa.ask (scripted model) with the retrieved source cited
    out = json.loads(
        ok(
            runner.invoke(
                app, ["qa", "tea?", "--scope", "/home/api", "-k", "1", "--url", url, "--json"]
            )
        )
    )
    assert out["sources"] == [path]
    assert "read-only" in one_line_error(fs("write", "/proc/1/x", "y", "--url", url))
    assert "no such file" in one_line_error(fs("cat", "/home/api/none", "--url", url))
    assert ok(fs("rm", "-r", "/home/api/box", "--url", url)) == "removed /home/api/box\n"


def test_remote_mount_follows_the_daemons_approval_policy(
    daemon: tuple[str, Any], docs: Path
) -> None:
    url = daemon[0]
    kernel = daemon[1].state.api.kernel
    out = one_line_error(fs("mount", str(docs), "kb", "--url", url))
    assert "not approved" in out and "approvals" in out  # nobody to ask: denied
    kernel.syscalls.policy["fs.mount"] = "allow"
    try:
        out = ok(fs("mount", str(docs), "kb", "--url", url, "--no-progress"))
    finally:
        del kernel.syscalls.policy["fs.mount"]
    # (what is indexed may include earlier writes still in the index journal)
    assert out.startswith(f"mounted {docs} at /mnt/kb: 3 files (3 added, 0 updated, 0 unchanged")
    hits = json.loads(
        ok(fs("search", "lava and ash", "/mnt/kb", "-k", "1", "--url", url, "--json"))
    )
    assert hits[0]["path"] == "/mnt/kb/notes/volcano.md"
    assert ok(fs("umount", "kb", "--url", url)) == "unmounted /mnt/kb (5 entries)\n"


def test_remote_mount_takes_globs_and_reports_skips(daemon: tuple[str, Any], docs: Path) -> None:
    url = daemon[0]
    kernel = daemon[1].state.api.kernel
    kernel.syscalls.policy["fs.mount"] = "allow"
    try:
        args = ["mount", str(docs), "kb2", "--url", url, "--exclude", "notes", "--verbose"]
        lines = ok(fs(*args)).splitlines()
    finally:
        del kernel.syscalls.policy["fs.mount"]
    assert lines[0].startswith(f"mounted {docs} at /mnt/kb2: 2 files (2 added, 0 updated")
    assert lines[0].endswith("skipped 2: binary 1, excluded 1")
    assert lines[1:] == ["  notes/  excluded (--exclude notes)", "  photo.png  binary (.png file)"]
    assert ok(fs("umount", "kb2", "--url", url)) == "unmounted /mnt/kb2 (3 entries)\n"


def test_default_goes_to_a_running_daemon(
    daemon: tuple[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With neither --url nor --local, a daemon answering at the configured port is used;
    /proc then lists the daemon's processes, not an embedded kernel's single one."""
    port = daemon[0].rsplit(":", 1)[1]
    monkeypatch.setenv("LLMOS_SERVER_PORT", port)
    kernel = daemon[1].state.api.kernel
    monkeypatch.setenv("LLMOS_DATA_DIR", str(kernel.settings.data_dir))  # the daemon's own
    ok(fs("write", "/tmp/auto.txt", "through the daemon"))
    names = {p.name for p in kernel.procs.values()}
    assert any(n.endswith("fs.write") for n in names)
    pids = [int(e["path"].rsplit("/", 1)[1]) for e in json.loads(ok(fs("ls", "/proc", "--json")))]
    assert len(pids) > 1 and set(pids) <= set(kernel.procs)
    monkeypatch.setenv("LLMOS_SERVER_PORT", str(_free_port()))  # nobody there: embedded
    monkeypatch.setenv("LLMOS_DATA_DIR", str(tmp_path / "elsewhere"))
    assert "no such file" in one_line_error(fs("cat", "/tmp/auto.txt"))


def test_default_ignores_a_daemon_on_another_data_dir(
    daemon: tuple[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A daemon that owns a different data directory is not this person's: stay embedded."""
    monkeypatch.setenv("LLMOS_SERVER_PORT", daemon[0].rsplit(":", 1)[1])
    monkeypatch.setenv("LLMOS_DATA_DIR", str(tmp_path / "mine"))
    kernel = daemon[1].state.api.kernel
    before = set(kernel.procs)
    ok(fs("write", "/tmp/mine.txt", "stays here"))
    assert set(kernel.procs) == before
    assert ok(fs("cat", "/tmp/mine.txt", "--local")).strip() == "stays here"
