"""`llmos models pull`: real huggingface_hub against a loopback hub (tests/hubserver.py).

Nothing here reaches the internet: `HF_ENDPOINT` points at the loopback hub, huggingface_hub's
telemetry (which would ask its import-time endpoint for a registry) is off, and its token file
and home are in a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.config import load_settings
from llmos.errors import HubError, NotEnoughSpace
from llmos.kernel.models import ModelLibrary
from llmos.ops import pull as pull_mod
from llmos.ops.pull import choose, pull
from tests.conftest import one_line_error
from tests.hubserver import COMMIT, TOKEN, Hub, Repo, tiny_gguf

runner = CliRunner()
REPO = "acme/tiny-GGUF"
Q4 = "tiny.Q4_K_M.gguf"
Q8 = "tiny.Q8_0.gguf"


@pytest.fixture(autouse=True)
def _hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The network allowed for these tests only, and huggingface_hub kept off the user's
    token and off any hub but the loopback one."""
    import huggingface_hub.constants as hf

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # (huggingface_hub copied these at import, perhaps before this test set the variables)
    monkeypatch.setattr(hf, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


@pytest.fixture
def data_dir() -> Path:
    return load_settings().data_dir


@contextmanager
def serve(monkeypatch: pytest.MonkeyPatch, repos: dict[str, Repo]) -> Iterator[Hub]:
    """A loopback hub serving `repos`, with HF_ENDPOINT pointing at it."""
    with Hub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    files = {Q4: tiny_gguf(15), Q8: tiny_gguf(7), "README.md": b"# tiny"}
    with serve(monkeypatch, {REPO: Repo(files)}) as h:
        yield h


def nothing_left(data_dir: Path) -> None:
    """No model registered and no file, whole or half, under the models folder."""
    catalog = data_dir / "models.json"
    assert not catalog.exists() or json.loads(catalog.read_text()) == {}
    models = data_dir / "models"
    assert not models.exists() or not [p for p in models.rglob("*") if p.is_file()]


def pull_cli(*args: str) -> Any:
    return runner.invoke(app, ["models", "pull", *args])


# -- the happy paths -----------------------------------------------------------------------
def test_pull_by_quant_downloads_checks_and_registers(hub: Hub, data_dir: Path) -> None:
    r = pull_cli(REPO, "--quant", "q8_0")
    assert r.exit_code == 0, r.output
    assert "pulled tiny.q8_0: llama Q8_0" in r.output and "sha256 checked" in r.output
    path = data_dir / "models" / "acme" / "tiny-GGUF" / Q8
    assert path.read_bytes() == tiny_gguf(7)
    assert not list(path.parent.glob("*.incomplete"))
    # the listing, the file's metadata and the file itself, all at the listed commit
    assert [(s.method, s.path) for s in hub.seen] == [
        ("GET", f"/api/models/{REPO}"),
        ("HEAD", f"/{REPO}/resolve/{COMMIT}/{Q8}"),
        ("GET", f"/{REPO}/resolve/{COMMIT}/{Q8}"),
    ]
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    entry = next(e for e in listed if e["name"] == "tiny.q8_0")
    assert entry["path"] == str(path)
    assert entry["lineage"] == {
        "source": "hub",
        "repo": REPO,
        "file": Q8,
        "revision": COMMIT,
        "sha256": hashlib.sha256(tiny_gguf(7)).hexdigest(),
    }
    # pulling again finds the checked file in place: nothing is fetched
    before = len(hub.seen)
    r = pull_cli(REPO, "--file", Q8, "--name", "again")
    assert r.exit_code == 0 and "already here" in r.output, r.output
    assert [s.method for s in hub.seen[before:]] == ["GET"]  # the listing only


def test_pull_file_name_and_revision(hub: Hub, data_dir: Path) -> None:
    r = pull_cli(REPO, "--file", Q4, "--name", "mine", "--revision", "main")
    assert r.exit_code == 0, r.output
    assert hub.seen[0].path == f"/api/models/{REPO}/revision/main"
    assert ModelLibrary(data_dir).get("mine").meta["quantization"] == "Q4_K_M"  # type: ignore[index]


def test_a_git_file_is_checked_by_its_blob_id(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    with serve(
        monkeypatch, {"acme/small": Repo({"small.gguf": tiny_gguf(n_floats=64)}, lfs=False)}
    ):
        got = pull(ModelLibrary(data_dir), "acme/small")
    assert got.entry.name == "small"
    assert got.entry.lineage["sha256"] == hashlib.sha256(tiny_gguf(n_floats=64)).hexdigest()  # type: ignore[index]


def test_an_interrupted_transfer_resumes_with_a_range_request(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """The hub hangs up mid-file; huggingface_hub asks for the rest (Range) and the file is
    whole. (It resumes from what it has written, in blocks of DOWNLOAD_CHUNK_SIZE, 10 MB:
    the file is larger than one block. Its one-second wait before retrying is made instant.)"""
    import huggingface_hub.constants as hf
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd.time, "sleep", lambda s: None)

    content = tiny_gguf(n_floats=3 * 1024 * 1024)  # 12 MB
    cut = hf.DOWNLOAD_CHUNK_SIZE + 4096
    seen: list[tuple[int, int]] = []
    with serve(monkeypatch, {REPO: Repo({Q4: content}, cuts=[cut])}) as hub:
        got = pull(ModelLibrary(data_dir), REPO, progress=lambda d, t: seen.append((d, t)))
    first, second = hub.ranges()
    assert first is None
    assert second is not None and second.startswith("bytes=")
    assert 0 < int(second[len("bytes=") : -1]) <= cut
    assert got.entry.path.read_bytes() == content
    assert seen[-1] == (len(content), len(content))


def test_a_pull_cut_short_resumes_where_it_stopped(hub: Hub, data_dir: Path) -> None:
    """An earlier run left part of the file (Ctrl-C, the network gone for good): the next
    run asks only for the rest."""
    content = tiny_gguf(15)
    sha = hashlib.sha256(content).hexdigest()
    partial = data_dir / "models" / "acme" / "tiny-GGUF" / f"{Q4}.{sha[:16]}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(content[:100_000])
    got = pull(ModelLibrary(data_dir), REPO, file=Q4)
    assert hub.ranges() == ["bytes=100000-"]
    assert (got.resumed_from, got.downloaded) == (100_000, len(content) - 100_000)
    assert got.entry.path.read_bytes() == content
    assert not partial.exists()


def test_a_network_gone_for_good_keeps_the_part_for_next_time(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """huggingface_hub retries five times, a second apart; past that the pull says how far it
    got and keeps the part, and the next run finishes it. (The wait is made instant here.)"""
    import huggingface_hub.constants as hf
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd.time, "sleep", lambda s: None)
    content = tiny_gguf(n_floats=3 * 1024 * 1024)
    cuts = [hf.DOWNLOAD_CHUNK_SIZE + 4096] + [0] * 20  # a block, then nothing, for long
    with serve(monkeypatch, {REPO: Repo({Q4: content}, cuts=cuts)}) as hub:
        out = one_line_error(pull_cli(REPO))
        assert "stopped at 10.0 MB of 12.0 MB" in out, out
        assert "run the same command again to resume" in out
        (part,) = (data_dir / "models").rglob("*.incomplete")
        assert part.stat().st_size == hf.DOWNLOAD_CHUNK_SIZE
        assert not [e for e in ModelLibrary(data_dir).list() if not e.builtin]
        hub.repos[REPO].cuts.clear()  # the network is back
        r = pull_cli(REPO)
        assert r.exit_code == 0 and "resumed at 10.0 MB" in r.output, r.output
        assert hub.ranges()[-1] == f"bytes={hf.DOWNLOAD_CHUNK_SIZE}-"
    assert not list((data_dir / "models").rglob("*.incomplete"))
    assert ModelLibrary(data_dir).get("tiny.q4_k_m").path.read_bytes() == content


# -- choosing the file ------------------------------------------------------------------------
def test_several_ggufs_without_a_terminal_name_the_choices(hub: Hub, data_dir: Path) -> None:
    out = one_line_error(pull_cli(REPO))
    assert "choose one with --file or --quant" in out and Q4 in out and Q8 in out
    nothing_left(data_dir)


def test_a_terminal_is_asked(hub: Hub, data_dir: Path) -> None:
    asked: list[Sequence[str]] = []

    def ask(names: Sequence[str]) -> str:
        asked.append(names)
        return names[1]

    got = pull(ModelLibrary(data_dir), REPO, ask=ask)
    assert asked == [[Q4, Q8]]
    assert got.entry.lineage["file"] == Q8  # type: ignore[index]


def test_choose() -> None:
    names = ["README.md", "m.Q4_K.gguf", "m.Q4_K_M.gguf", "m.Q4_K_S.gguf", "sub/m.Q8_0.gguf"]
    assert choose("r", names, quant="q4_k") == "m.Q4_K.gguf"  # a whole word wins
    assert choose("r", names, quant="Q8") == "sub/m.Q8_0.gguf"
    with pytest.raises(HubError, match="2 GGUF files matching Q4_K_"):
        choose("r", names, quant="Q4_K_")
    with pytest.raises(HubError, match="no GGUF file matches IQ2"):
        choose("r", names, quant="IQ2")
    with pytest.raises(HubError, match=r"is not a \.gguf file"):
        choose("r", names, file="README.md")
    with pytest.raises(HubError, match="has no such file"):
        choose("r", names, file="x.gguf")
    assert choose("r", ["README.md", "only.gguf"]) == "only.gguf"


def test_a_bad_name_fails_before_any_download(hub: Hub, data_dir: Path) -> None:
    out = one_line_error(pull_cli(REPO, "--file", Q4, "--name", "no spaces"))
    assert "invalid model name" in out
    assert hub.ranges() == []
    nothing_left(data_dir)


# -- the errors: one line, exit code 2, nothing left behind ----------------------------------
def test_missing_repo(hub: Hub, data_dir: Path) -> None:
    out = one_line_error(pull_cli("acme/nothing-here", "--quant", "Q4_K_M"))
    assert "no model repo acme/nothing-here" in out
    nothing_left(data_dir)


def test_missing_revision(hub: Hub, data_dir: Path) -> None:
    assert "no such revision" in one_line_error(pull_cli(REPO, "--revision", "v9"))
    nothing_left(data_dir)


def test_gated_repo_says_how_to_log_in(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    with serve(monkeypatch, {"acme/gated": Repo({Q4: tiny_gguf()}, gated=True)}) as hub:
        out = one_line_error(pull_cli("acme/gated"))
        assert "gated" in out and "HF_TOKEN" in out
        nothing_left(data_dir)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        r = pull_cli("acme/gated")
        assert r.exit_code == 0, r.output
    assert hub.seen[-1].headers["authorization"] == f"Bearer {TOKEN}"


def test_repo_without_gguf(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    files = {"model.safetensors": b"\0" * 64, "config.json": b"{}"}
    with serve(monkeypatch, {"acme/torch-only": Repo(files)}):
        assert "has no GGUF file" in one_line_error(pull_cli("acme/torch-only"))
    nothing_left(data_dir)


def test_connection_refused(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    out = one_line_error(pull_cli(REPO, "--quant", "Q4_K_M"))
    assert "cannot reach" in out
    nothing_left(data_dir)


def test_offline_mode_is_honoured(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = one_line_error(pull_cli(REPO, "--quant", "Q4_K_M"))
    assert "offline" in out and "HF_HUB_OFFLINE" in out
    assert hub.seen == []
    nothing_left(data_dir)


def test_hash_mismatch(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    repo = Repo({Q4: tiny_gguf()}, listed_sha256={Q4: "ab" * 32})
    with serve(monkeypatch, {REPO: repo}) as hub:
        out = one_line_error(pull_cli(REPO))
    assert "does not match the hub's hash" in out
    assert len(hub.ranges()) == 1  # it was downloaded, then refused
    nothing_left(data_dir)


def test_not_a_gguf_after_all(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    with serve(monkeypatch, {REPO: Repo({"fake.gguf": b"PK\x03\x04 a zip in disguise"})}):
        out = one_line_error(pull_cli(REPO))
    assert "not a usable GGUF" in out and "not a GGUF file" in out
    nothing_left(data_dir)


def test_full_disk_is_found_before_downloading(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    real = shutil.disk_usage

    def small_disk(path: Any) -> Any:
        return real(path)._replace(free=1000)

    monkeypatch.setattr(pull_mod.shutil, "disk_usage", small_disk)
    out = one_line_error(pull_cli(REPO, "--quant", "Q4_K_M"))
    assert "not enough disk space" in out and "1000 B free" in out
    assert hub.ranges() == []
    nothing_left(data_dir)
    with pytest.raises(NotEnoughSpace):
        pull(ModelLibrary(data_dir), REPO, quant="Q4_K_M")


def test_the_cli_leaves_the_network_on_for_pull_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmos import cli

    for argv, offline in ((["models", "pull", "--help"], False), (["models", "--help"], True)):
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(sys, "argv", ["llmos", *argv])
        with pytest.raises(SystemExit):
            cli.main()
        assert (os.environ.get("HF_HUB_OFFLINE") == "1") is offline
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_at_a_terminal_it_asks_and_draws_a_bar(hub: Hub, tmp_path: Path) -> None:
    """`llmos models pull` in a pseudo-terminal: a numbered list to choose from (a bad answer
    is asked again), then huggingface_hub's bar."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    # As a user's shell has it: without the offline switch, and without the progress-bar
    # switch that loading MiniLM earlier in this test process leaves in the environment.
    unset = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    pid, fd = pty.fork()
    if pid == 0:  # the child: llmos as a user runs it (never back into pytest)
        try:
            os.execve(sys.executable, [sys.executable, "-m", "llmos", "models", "pull", REPO], env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # (0 columns: no bar)
    out, answered = b"", False
    while select.select([fd], [], [], 30)[0]:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child is gone
            break
        if not data:
            break
        out += data
        if b"which file" in out and not answered:
            os.write(fd, b"7\n2\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert f"  1  {Q4}" in text and f"  2  {Q8}" in text
    assert "a number from 1 to 2" in text
    assert f"{Q8}: 100%" in text  # the bar, at its end
    assert "pulled tiny.q8_0: llama Q8_0" in text
