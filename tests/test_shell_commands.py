"""Pilot tests, one or more per shell command and dialog, on the scripted model.

The subsystems behind the commands are the real ones: the memory FS (SQLite + Chroma, with
a hash embedder in MiniLM's place) and the sandboxed `shell.exec`, so these tests pin the
shell's side of each seam against the result shapes those syscalls really return: argument
mapping, capabilities, approval and display. A missing subsystem must read "not available".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.widgets import Input

from llmos.kernel.kernel import Kernel
from llmos.kernel.oneshot import MEMORY_CAPS
from llmos.memory import prompts
from llmos.memory.fs import MemoryFS
from llmos.shell.app import COMMANDS, HELP, LlmosShell
from llmos.shell.screens import ApprovalScreen, FsBrowser, HelpScreen
from tests.conftest import HashEmbedder, scripted_factory


# -- helpers ------------------------------------------------------------------------------------
async def wait_for(pilot: Any, cond: Callable[[], bool], steps: int = 400) -> None:
    for _ in range(steps):
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not met in time:\n" + text(pilot.app)[-1500:])


def text(app: LlmosShell) -> str:
    return "\n".join(app.out.lines)


async def make_kernel(settings: Any, *, fs: bool = True, sh: bool = True, **kw: Any) -> Kernel:
    """A scripted kernel with its real memory FS, holding the prompt templates and one note
    (`fs=False`/`sh=False`: the memory and host-command subsystems absent altogether)."""
    kernel = Kernel(settings, backend_factory=scripted_factory(**kw), embedder=HashEmbedder())
    await kernel.start()
    absent = (() if fs else ("fs.", "qa.")) + (() if sh else ("shell.exec",))
    specs = kernel.syscalls.specs
    for name in [n for n in specs if n.startswith(absent)]:
        del specs[name]
    if fs:
        seed(kernel.memory)
    return kernel


def seed(fs: MemoryFS) -> None:
    prompts.install_defaults(fs)
    fs.write("/home/notes.txt", "llamas hum at dawn")


async def typed(pilot: Any, app: LlmosShell, line: str, expect: str) -> None:
    """Enter a command line: its text put in the prompt at once, then a real Enter (key by
    key typing cost 1-4 s a command; the Tab-completion tests press keys themselves)."""
    prompt = app.query_one("#prompt", Input)
    prompt.focus()
    prompt.value = line
    prompt.cursor_position = len(line)
    await pilot.press("enter")
    await wait_for(pilot, lambda: expect in text(app))


class Held:
    """Programs that stay alive until released, so the panel and signals have a target."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def program(self, ctx: Any, label: str = "") -> int:
        ctx.print(f"held {label}")
        await self.release.wait()
        ctx.print(f"released {label}")
        return 0


# -- tests --------------------------------------------------------------------------------------
async def test_help_lists_every_command_and_f1_opens_the_help_screen(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await typed(pilot, app, "help", "Ctrl+C stops")
        for cmd in ("ps", "top", "kill", "nice", "run", "spawn", "logs", "ls", "cat", "write",
                    "rm", "mkdir", "search", "mount", "umount", "qa", "models", "prompts",
                    "history", "clear", "help", "exit"):  # fmt: skip
            assert f"\n  {cmd} " in HELP, cmd
        assert all(f"\n  {c.name} " in HELP for c in COMMANDS.values())  # from the one table
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))
        await pilot.press(*"clear", "enter")
        await wait_for(pilot, lambda: "Ctrl+C stops" not in text(app))
    await kernel.shutdown()


async def test_process_panel_follows_kernel_events_and_signals(settings: Any) -> None:
    kernel = await make_kernel(settings)
    held = Held()
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        proc = await kernel.spawn(held.program, "a", name="holder")
        # No command typed: the spawn event alone puts the row in the panel.
        await wait_for(pilot, lambda: app.panel.is_valid_row_index(0))
        assert app.panel.get_row(str(proc.pid))[1] == "holder"
        await typed(pilot, app, f"kill -STOP {proc.pid}", f"sent STOP to {proc.pid}")
        await wait_for(pilot, lambda: app.panel.get_row(str(proc.pid))[2] == "stopped")
        await typed(pilot, app, f"kill -CONT {proc.pid}", f"sent CONT to {proc.pid}")
        await wait_for(pilot, lambda: app.panel.get_row(str(proc.pid))[2] == "running")
        await typed(pilot, app, f"nice {proc.pid} 5", f"pid {proc.pid} nice 5")
        assert kernel.procs[proc.pid].nice == 5
        assert app.panel.get_row(str(proc.pid))[3] == "5"
        await typed(pilot, app, "ps", "holder")
        await typed(pilot, app, "top", "live processes")
        assert app.panel.has_class("hidden")
        await pilot.press("ctrl+t")
        assert not app.panel.has_class("hidden")
        await typed(pilot, app, f"kill {proc.pid}", f"sent TERM to {proc.pid}")
        await wait_for(pilot, lambda: app.panel.get_row(str(proc.pid))[2] == "exited")
        await typed(pilot, app, "kill -KILL 999", "error: no process 999")
        await typed(pilot, app, "kill -HUP 1", "error:")
        await typed(pilot, app, "nice 1 x", "error: not a number")
    await kernel.shutdown()


async def test_status_bar_shows_models_throughput_kv_and_memory(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    app.memory_probe = lambda: 123.0
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.model_ready)
        await typed(pilot, app, "hi there", "You said: hi there")
        await wait_for(pilot, lambda: app.current_pid is None)
        bar = str(app.query_one("#stats").render())
        assert settings.default_model in bar and "tok/s" in bar and "mem 123 MB" in bar
        assert "KV " in bar
    await kernel.shutdown()


async def test_run_streams_a_program_file(settings: Any, tmp_path: Path) -> None:
    prog = tmp_path / "greet.py"
    prog.write_text("async def main(ctx, who):\n    ctx.print('hello', who)\n    return 3\n")
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await typed(pilot, app, f"run {prog} world", "hello world")
        await wait_for(pilot, lambda: "exited 3]" in text(app))
        await typed(pilot, app, f"run {tmp_path / 'nope.py'}", "error: no such program")
    await kernel.shutdown()


async def test_spawn_a_named_program_and_follow_its_logs(settings: Any) -> None:
    kernel = await make_kernel(settings)
    held = Held()
    await kernel.start()
    kernel.programs["holder"] = held.program
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await typed(pilot, app, 'spawn holder "task one"', "holder started")
        pid = max(kernel.procs)
        await wait_for(pilot, lambda: "held task one" in kernel.procs[pid].stdout.getvalue())
        await typed(pilot, app, f"logs {pid}", "held task one")
        await typed(pilot, app, f"logs {pid} -f", f"> logs {pid} -f")
        await wait_for(pilot, lambda: app.following == pid)
        held.release.set()
        await wait_for(pilot, lambda: "released task one" in text(app))
        await wait_for(pilot, lambda: f"[end of pid {pid} log" in text(app))
        await typed(pilot, app, "spawn nosuch x", "error: not available: no program named")
        await typed(pilot, app, "logs 4242", "error: no process 4242")
    await kernel.shutdown()


async def test_ctrl_c_stops_following_a_log(settings: Any) -> None:
    kernel = await make_kernel(settings)
    held = Held()
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        proc = await kernel.spawn(held.program, "x", name="holder")
        await typed(pilot, app, f"logs {proc.pid} -f", "held x")
        await wait_for(pilot, lambda: app.following == proc.pid)
        await pilot.press("ctrl+c")
        await wait_for(pilot, lambda: app.following is None)
        assert proc.alive  # following stopped; the process was not touched
        held.release.set()
    await kernel.shutdown()


async def test_memory_fs_commands(settings: Any, tmp_path: Path) -> None:
    host = tmp_path / "docs"
    host.mkdir()
    (host / "a.md").write_text("alpacas graze")
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await typed(pilot, app, "ls /", "/home/")
        await typed(pilot, app, "mkdir /home/me", "made /home/me")
        await typed(pilot, app, 'write /home/me/todo "buy hay"', "wrote /home/me/todo")
        assert kernel.memory.read("/home/me/todo") == "buy hay"
        await typed(pilot, app, "cat /home/me/todo", "buy hay")
        await typed(pilot, app, "ls /home", "/home/me/\n/home/notes.txt")  # dirs by their kind
        await typed(pilot, app, 'search "hum" /home', "/home/notes.txt")
        app.query_one("#prompt").focus()
        await pilot.press(*f"mount {host} docs", "enter")
        await _approval(pilot, app)
        await pilot.press("y")  # fs.mount is high risk: the user confirms it
        await wait_for(pilot, lambda: f"mounted {host} at /mnt/docs: 1 files" in text(app))
        await typed(pilot, app, "cat /mnt/docs/a.md", "alpacas graze")
        await typed(pilot, app, "umount docs", "> umount docs\nremoved: ")
        await typed(pilot, app, 'qa "who hums?" --scope /home', "sources:")
        assert "/home/notes.txt" in text(app).rsplit("sources:", 1)[1]
        await typed(pilot, app, "rm /home/me/todo", "removed /home/me/todo")
        assert not kernel.memory.exists("/home/me/todo")
        await typed(pilot, app, "cat /home/me/todo", "error: /home/me/todo: no such file")
        await typed(pilot, app, "prompts", "summarize")  # template names, as prompt.render's
        await typed(pilot, app, "prompts system", "You are {name}, an agent running on llmos.")
        # Each of these ran as its own process with only the syscall's capability.
        caps = {p.name: p.caps for p in kernel.procs.values()}
        assert caps["sh:fs.write"] == MEMORY_CAPS
    await kernel.shutdown()


async def test_memory_fs_commands_say_not_available_without_the_subsystem(settings: Any) -> None:
    kernel = await make_kernel(settings, fs=False, sh=False)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        for line, name in (("ls /", "fs.ls"), ("cat /x", "fs.read"), ("qa why", "qa.ask"),
                           ("!echo hi", "shell.exec"), ("umount x", "fs.umount")):  # fmt: skip
            await typed(pilot, app, line, f"error: not available: the kernel has no {name}")
    await kernel.shutdown()


async def test_files_browser_opens_a_file(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+b")
        await wait_for(pilot, lambda: isinstance(app.screen, FsBrowser))
        tree = app.screen.query_one("#fs-tree")
        await wait_for(pilot, lambda: len(tree.root.children) > 0)  # type: ignore[attr-defined]
        home = next(n for n in tree.root.children if str(n.label) == "home/")  # type: ignore[attr-defined]
        home.expand()
        await wait_for(pilot, lambda: len(home.children) > 0)
        note = next(n for n in home.children if str(n.label) == "notes.txt")
        tree.select_node(note)  # type: ignore[attr-defined]
        await pilot.press("enter")
        await wait_for(pilot, lambda: "llamas hum at dawn" in text(app))
        assert not isinstance(app.screen, FsBrowser)
    await kernel.shutdown()


async def _approval(pilot: Any, app: LlmosShell) -> ApprovalScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, ApprovalScreen))
    assert isinstance(app.screen, ApprovalScreen)
    return app.screen


async def test_host_command_asks_and_runs_once_approved(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one("#prompt").focus()
        await pilot.press(*"!echo ran-it", "enter")
        dialog = await _approval(pilot, app)
        assert "$ echo ran-it" in str(dialog.query_one("#what").render())
        await pilot.pause(0.1)
        assert "[exit" not in text(app)  # nothing runs before the answer
        await pilot.click("#once")
        await wait_for(pilot, lambda: "[exit 0]" in text(app))
        assert "ran-it\n[exit 0]" in text(app)
        runner = next(p for p in kernel.procs.values() if p.name == "sh:shell.exec")
        assert runner.caps == frozenset({"shell.exec"})  # that capability and nothing else
    await kernel.shutdown()


async def test_denied_host_command_does_not_run(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one("#prompt").focus()
        await pilot.press(*"!rm -rf /", "enter")
        await _approval(pilot, app)
        await pilot.press("n")
        await wait_for(pilot, lambda: "error: shell.exec needs approval" in text(app))
        assert "[exit" not in text(app)
    await kernel.shutdown()


async def test_always_approves_the_rest_of_that_process_only(settings: Any) -> None:
    kernel = await make_kernel(settings)
    done = asyncio.Event()
    ran: list[str] = []

    async def agent(ctx: Any) -> int:
        for word in ("one", "two"):
            ran.append((await ctx.sys.shell.exec(command=f"echo {word}")).stdout.strip())
        done.set()
        return 0

    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        proc = await kernel.spawn(agent, caps=["shell.exec"], name="agent")
        await _approval(pilot, app)
        await pilot.press("a")
        await wait_for(pilot, done.is_set)  # the second call asked nobody
        assert ran == ["one", "two"]
        assert (proc.pid, "shell.exec") in app.always
        # Another process still asks.
        await pilot.press(*"!echo three", "enter")
        await _approval(pilot, app)
        await pilot.press("y")
        await wait_for(pilot, lambda: "three\n[exit 0]" in text(app))
    await kernel.shutdown()


async def test_killing_a_process_closes_its_approval_dialog(settings: Any) -> None:
    kernel = await make_kernel(settings)

    returned = asyncio.Event()

    async def agent(ctx: Any) -> int:
        await ctx.sys.shell.exec(command="echo never")
        returned.set()
        return 0

    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        proc = await kernel.spawn(agent, caps=["shell.exec"], name="agent")
        await _approval(pilot, app)
        kernel.signal(proc.pid, "KILL")
        await wait_for(pilot, lambda: not isinstance(app.screen, ApprovalScreen))
        assert not returned.is_set() and proc.exit_reason == "killed"
    await kernel.shutdown()


async def test_history_walks_with_arrows_and_persists(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await typed(pilot, app, "ps", "PID")
        await typed(pilot, app, "help", "Ctrl+C stops")
        prompt = app.query_one("#prompt")
        await pilot.press("up")
        assert prompt.value == "help"  # type: ignore[attr-defined]
        await pilot.press("up")
        assert prompt.value == "ps"  # type: ignore[attr-defined]
        await pilot.press("down", "down")
        assert prompt.value == ""  # type: ignore[attr-defined]
    await kernel.shutdown()
    # A new session sees the old commands.
    kernel2 = await make_kernel(settings)
    app2 = LlmosShell(settings, kernel=kernel2)
    async with app2.run_test() as pilot:
        await typed(pilot, app2, "history", "   2  help")
        assert "   1  ps" in text(app2)
        await pilot.press("up", "up")
        assert app2.query_one("#prompt").value == "help"  # type: ignore[attr-defined]
    await kernel2.shutdown()


async def test_tab_completes_commands_pids_models_and_paths(settings: Any) -> None:
    kernel = await make_kernel(settings)
    held = Held()
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        proc = await kernel.spawn(held.program, name="holder")
        prompt = app.query_one("#prompt")
        prompt.focus()
        await pilot.press(*"mou", "tab")
        assert prompt.value == "mount "  # type: ignore[attr-defined]
        prompt.value = ""  # type: ignore[attr-defined]
        await pilot.press(*"kill ", "tab")
        assert prompt.value == f"kill {proc.pid} "  # type: ignore[attr-defined]
        prompt.value = ""  # type: ignore[attr-defined]
        await pilot.press(*"models load smol", "tab")
        assert prompt.value == f"models load {settings.default_model} "  # type: ignore[attr-defined]
        prompt.value = ""  # type: ignore[attr-defined]
        await pilot.press(*"cat /ho", "tab")
        assert prompt.value == "cat /home/"  # type: ignore[attr-defined]
        await pilot.press("tab")
        assert prompt.value == "cat /home/notes.txt "  # type: ignore[attr-defined]
        held.release.set()
    await kernel.shutdown()


async def test_models_list_load_unload(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.model_ready)
        await typed(pilot, app, "models", f"* {settings.default_model}")
        await typed(pilot, app, f"models unload {settings.default_model}", "unloaded")
        assert settings.default_model not in kernel.models.loaded
        await typed(pilot, app, "models", f"  {settings.default_model}")
        await typed(pilot, app, f"models load {settings.default_model}", "> models load")
        await wait_for(pilot, lambda: settings.default_model in kernel.models.loaded)
        await typed(pilot, app, "models load nosuch", "error")
    await kernel.shutdown()


async def test_exit_quits(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        app.query_one("#prompt").focus()
        await pilot.press(*"exit", "enter")
        await wait_for(pilot, lambda: not app.is_running)
    await kernel.shutdown()


async def test_usage_errors_come_from_the_command_table(settings: Any) -> None:
    kernel = await make_kernel(settings)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test() as pilot:
        await typed(pilot, app, "kill", f"error: usage: {COMMANDS['kill'].usage}\n")
        await typed(pilot, app, "cat", "error: usage: cat PATH\n")
        await typed(pilot, app, "models load", f"error: usage: {COMMANDS['models'].usage}\n")
        # A command's note follows its usage.
        await typed(pilot, app, "spawn", 'error: usage: spawn NAME "task"  (programs: ')
        assert "assistant" in text(app).rsplit("programs: ", 1)[1]
    await kernel.shutdown()


async def test_a_command_before_the_boot_boots_the_kernel(settings: Any) -> None:
    """The shell boots its kernel after the first frame; a command that comes sooner (a
    fast typist, a pasted line) boots it rather than finding no syscalls."""
    from llmos.shell.backend import LocalBackend

    kernel = Kernel(settings, backend_factory=scripted_factory(), embedder=HashEmbedder())
    backend = LocalBackend(settings, kernel=kernel)
    assert not kernel.booted
    try:
        await backend.syscall("fs.mkdir", {"path": "/home/me"})
        assert kernel.booted and kernel.memory.stat("/home/me").kind == "dir"
    finally:
        await kernel.shutdown()
