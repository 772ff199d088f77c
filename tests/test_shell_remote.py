"""`llmos shell --connect URL`: the shell's commands against a real daemon on loopback.

The daemon runs the scripted engine and the real memory FS (SQLite + Chroma, with the
deterministic hash embedder in MiniLM's place: these pin the shell's plumbing, not retrieval
quality); the shell holds no kernel, only an HTTP client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.cli import app as cli
from llmos.client import Client
from llmos.config import load_settings
from llmos.server import BackgroundServer, create_app
from llmos.shell.app import LlmosShell
from llmos.shell.backend import REMOTE_APPROVAL, RemoteBackend
from tests.conftest import HashEmbedder, scripted_factory
from tests.test_shell_commands import text, typed, wait_for

HOLD = (
    "import asyncio\nasync def main(ctx):\n    ctx.print('holding')\n    await asyncio.sleep(600)\n"
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = load_settings(data_dir=tmp_path_factory.mktemp("daemon") / "data")
    app = create_app(
        settings, backend_factory=scripted_factory(), embedder=HashEmbedder(), preload=True
    )
    server = BackgroundServer(app)
    try:
        yield server.start()
    finally:
        server.stop()


def shell(settings: Any, url: str) -> LlmosShell:
    return LlmosShell(settings, connect=url)


async def connected(pilot: Any, app: LlmosShell) -> None:
    await wait_for(pilot, lambda: app.model_ready)
    assert isinstance(app.backend, RemoteBackend)


async def test_chat_streams_from_the_daemons_assistant(settings: Any, daemon: str) -> None:
    app = shell(settings, daemon)
    async with app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        status = str(app.query_one("#status").render())
        assert daemon in status and REMOTE_APPROVAL in status
        await typed(pilot, app, "hello daemon", "You said: hello daemon")
        await wait_for(pilot, lambda: app.current_pid is None)
        assert "done" in str(app.query_one("#status").render())
        await typed(pilot, app, "ps", "assistant")
        # The assistant ran in the daemon's kernel: its recall log is in the daemon's memory.
        with Client(daemon) as c:
            log = c.syscall("fs.read", path="/home/assistant/recall/log.md")
        assert "**user**: hello daemon\n\n**assistant**: You said: hello daemon\n\n" in log
        with pytest.raises(Exception, match="no local kernel"):
            _ = app.kernel


async def test_ps_kill_and_the_polled_panel(settings: Any, daemon: str, tmp_path: Path) -> None:
    prog = tmp_path / "hold.py"
    prog.write_text(HOLD)
    app = shell(settings, daemon)
    async with app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        with Client(daemon) as c:
            pid = c.spawn(path=str(prog))["pid"]
        # Nothing typed: the panel's poll brings the row in.
        await wait_for(pilot, lambda: str(pid) in app.panel.rows, steps=300)
        assert app.panel.get_row(str(pid))[1:3] == ["hold", "running"]
        await typed(pilot, app, "ps", f"{pid:>5} hold")
        await typed(pilot, app, f"nice {pid} 4", f"pid {pid} nice 4")
        assert app.panel.get_row(str(pid))[3] == "4"
        await typed(pilot, app, f"logs {pid}", "holding")
        await typed(pilot, app, f"kill -STOP {pid}", f"sent STOP to {pid}")
        await wait_for(pilot, lambda: app.panel.get_row(str(pid))[2] == "stopped")
        await typed(pilot, app, f"kill {pid}", f"sent TERM to {pid}")
        await wait_for(pilot, lambda: app.panel.get_row(str(pid))[2] == "exited")
        await typed(pilot, app, "kill 424242", "error: no process 424242")
        await typed(pilot, app, "kill -HUP 1", "error:")


async def test_run_spawn_and_follow(settings: Any, daemon: str, tmp_path: Path) -> None:
    prog = tmp_path / "greet.py"
    prog.write_text("async def main(ctx, who):\n    ctx.print('hello', who)\n    return 3\n")
    app = shell(settings, daemon)
    async with app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        await typed(pilot, app, f"run {prog} world", "hello world")
        await wait_for(pilot, lambda: "exited 3]" in text(app))
        await typed(pilot, app, 'spawn chat "over there"', "chat started")
        pid = int(text(app).rsplit("[pid ", 1)[1].split("]")[0])
        await typed(pilot, app, f"logs {pid} -f", f"[end of pid {pid} log: exited]")
        assert "You said: over there" in text(app)
        await typed(pilot, app, "spawn nosuch x", "error: not available: no built-in program")
        await typed(pilot, app, "models", "* smollm2-135m-instruct")


async def test_memory_fs_commands_and_search(settings: Any, daemon: str) -> None:
    app = shell(settings, daemon)
    async with app.run_test(size=(120, 40)) as pilot:
        await connected(pilot, app)
        await typed(pilot, app, "mkdir /home/me", "made /home/me")
        await typed(pilot, app, 'write /home/me/llamas.md "Llamas hum in the Andes."', "wrote")
        await typed(pilot, app, "cat /home/me/llamas.md", "Llamas hum in the Andes.")
        await typed(pilot, app, "ls /home/me", "/home/me/llamas.md")
        await typed(pilot, app, 'search "animals of South America" /home/me', "llamas.md")
        await typed(pilot, app, 'qa "Where do llamas hum?" --scope /home/me', "sources:")
        assert "/home/me/llamas.md" in text(app).rsplit("sources:", 1)[1]
        await typed(pilot, app, "prompts", "summarize")
        await typed(pilot, app, "top", "live processes")
        app.query_one("#prompt").focus()
        await pilot.press(*"cat /home/me/ll", "tab")
        assert app.query_one("#prompt").value == "cat /home/me/llamas.md "  # type: ignore[attr-defined]
        app.query_one("#prompt").value = ""  # type: ignore[attr-defined]
        await typed(pilot, app, "rm /home/me/llamas.md", "removed /home/me/llamas.md")
        await typed(pilot, app, "cat /home/me/llamas.md", "error: /home/me/llamas.md: no such")
        await typed(pilot, app, "cat /../etc", "error:")
        # A host command follows the daemon's policy: high risk, nobody to ask, denied.
        await typed(pilot, app, "!echo hi", "error:")
        assert "needs approval" in text(app) or "denied" in text(app)


async def test_ctrl_c_kills_the_daemons_answer(settings: Any, tmp_path: Path) -> None:
    slow = scripted_factory(
        responder=lambda c: "word " * 3000, on_decode=lambda e: time.sleep(0.01)
    )
    daemon_settings = load_settings(data_dir=tmp_path / "daemon")
    server = BackgroundServer(
        create_app(daemon_settings, backend_factory=slow, embedder=HashEmbedder(), preload=True)
    )
    url = server.start()
    try:
        app = shell(settings, url)
        async with app.run_test(size=(120, 40)) as pilot:
            await connected(pilot, app)
            app.query_one("#prompt").focus()
            await pilot.press(*"talk forever", "enter")
            await wait_for(pilot, lambda: "word word" in text(app), steps=1000)
            pid = app.current_pid
            assert pid is not None
            await pilot.press("ctrl+c")
            await wait_for(pilot, lambda: "[stopped]" in text(app), steps=1000)
            assert app.is_running and app.current_pid is None
            with Client(url) as c:
                info = c.get(pid)
            assert info["state"] == "exited" and info["exit_code"] < 0
    finally:
        server.stop()


def test_connect_to_nothing_is_one_error_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["shell", "--connect", "http://127.0.0.1:9"])
    assert r.exit_code == 2
    assert r.output.startswith("error: cannot reach the daemon at http://127.0.0.1:9")
    assert len(r.output.strip().splitlines()) == 1
