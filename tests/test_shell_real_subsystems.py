"""The shell's commands against the real subsystems: the memory FS (SQLite + Chroma with
real MiniLM embeddings) and the sandboxed `shell.exec`, through the approval dialog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmos.kernel.kernel import Kernel
from llmos.shell.app import LlmosShell
from llmos.shell.screens import ApprovalScreen
from tests.conftest import scripted_factory
from tests.test_shell_commands import text, typed, wait_for


async def test_memory_fs_commands_on_the_real_filesystem(
    settings: Any, tmp_path: Path, minilm: Any
) -> None:
    host = tmp_path / "docs"
    host.mkdir()
    (host / "llamas.md").write_text("Llamas are domesticated camelids from the Andes.\n")
    (host / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # skipped, and the summary says so
    kernel = Kernel(settings, backend_factory=scripted_factory(), embedder=minilm)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        await typed(pilot, app, "mkdir /home/me", "made /home/me")
        await typed(pilot, app, 'write /home/me/todo.txt "feed the llamas"', "wrote")
        await typed(pilot, app, "cat /home/me/todo.txt", "feed the llamas")
        await typed(pilot, app, "ls /home/me", "todo.txt")
        app.query_one("#prompt").focus()
        await pilot.press(*f"mount {host} docs", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen), steps=1500)
        await pilot.press("y")  # fs.mount is high risk: the user confirms it
        await wait_for(pilot, lambda: "[fs.mount for pid" in text(app), steps=1500)
        await typed(pilot, app, "ls /mnt/docs", "llamas.md")
        assert "1 files (1 added, 0 updated, 0 unchanged, 0 removed)" in text(app)
        assert "indexed; skipped 1: binary 1" in text(app)
        assert "  logo.png  binary (.png file)" in text(app)
        await typed(pilot, app, 'search "animals from South America" /mnt', "/mnt/docs/llamas.md")
        await typed(pilot, app, "umount docs", "removed")
        await typed(pilot, app, "rm /home/me/todo.txt", "removed /home/me/todo.txt")
        await typed(pilot, app, "cat /home/me/todo.txt", "error:")
        await typed(pilot, app, "prompts", "> prompts")
        await typed(pilot, app, "cat /../etc", "error:")  # traversal is the FS's to refuse
    await kernel.shutdown()


async def test_host_command_runs_in_the_real_sandbox_after_approval(settings: Any) -> None:
    kernel = Kernel(settings, backend_factory=scripted_factory())
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one("#prompt").focus()
        await pilot.press(*"!echo sandboxed-hello", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen), steps=1500)
        assert "$ echo sandboxed-hello" in str(app.screen.query_one("#what").render())
        await pilot.press("y")
        await wait_for(pilot, lambda: "[exit 0]" in text(app), steps=1500)
        assert "sandboxed-hello" in text(app)
    await kernel.shutdown()
