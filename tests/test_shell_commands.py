"""Pilot tests, one or more per shell command and dialog, on the scripted model.

Memory-FS and host-command syscalls are stand-ins here (registered the same way a real
subsystem registers its own), so these tests pin the shell's side of each seam: argument
mapping, capabilities, approval and display. A missing subsystem must read "not available".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.core.syscall import syscall
from llmos.errors import ToolFailed
from llmos.kernel.kernel import Kernel
from llmos.kernel.oneshot import MEMORY_CAPS
from llmos.shell.app import HELP, LlmosShell
from llmos.shell.screens import ApprovalScreen, FsBrowser, HelpScreen
from tests.conftest import scripted_factory

# -- a stand-in memory FS and shell.exec -----------------------------------------------------
FILES: dict[str, str] = {}
DIRS: set[str] = set()
RAN: list[str] = []


def _reset_fs() -> None:
    FILES.clear()
    DIRS.clear()
    DIRS.update({"/", "/home", "/etc", "/etc/prompts", "/mnt"})
    FILES["/etc/prompts/system"] = "You are helpful."
    FILES["/home/notes.txt"] = "llamas hum at dawn"
    RAN.clear()


def _children(path: str) -> list[dict[str, Any]]:
    base = path.rstrip("/") + "/"
    out = {}
    for p in sorted(DIRS | set(FILES)):
        if p != "/" and p.startswith(base) and "/" not in p[len(base) :]:
            out[p] = {"path": p, "type": "dir" if p in DIRS else "file"}
    return list(out.values())


@syscall("fs.ls", capability="fs.read")
async def fs_ls(ctx: Any, path: str = "/") -> list[dict[str, Any]]:
    """List a directory."""
    if path.rstrip("/") not in DIRS and path not in DIRS:
        raise ToolFailed(f"no such directory: {path}")
    return _children(path)


@syscall("fs.read")
async def fs_read(ctx: Any, path: str) -> str:
    """Read a file."""
    if path not in FILES:
        raise ToolFailed(f"no such file: {path}")
    return FILES[path]


@syscall("fs.write")
async def fs_write(ctx: Any, path: str, content: str) -> dict[str, Any]:
    """Write a file."""
    FILES[path] = content
    return {"path": path, "version": 1}


@syscall("fs.rm", capability="fs.write")
async def fs_rm(ctx: Any, path: str) -> None:
    """Remove a path."""
    FILES.pop(path, None)
    DIRS.discard(path)


@syscall("fs.mkdir", capability="fs.write")
async def fs_mkdir(ctx: Any, path: str) -> None:
    """Make a directory."""
    DIRS.add(path)


@syscall("fs.search", capability="fs.read")
async def fs_search(ctx: Any, query: str, k: int = 3, path: str = "/") -> list[dict[str, Any]]:
    """Semantic search (here: substring)."""
    return [
        {"path": p, "score": 0.9}
        for p, text in FILES.items()
        if p.startswith(path) and any(w in text for w in query.split())
    ][:k]


def _read_host(host_path: str, name: str) -> dict[str, str]:
    return {f"/mnt/{name}/{f.name}": f.read_text() for f in Path(host_path).iterdir()}


@syscall("fs.mount")
async def fs_mount(ctx: Any, host: str, name: str) -> str:
    """Mount a host folder."""
    DIRS.add(f"/mnt/{name}")
    FILES.update(_read_host(host, name))
    return f"mounted {host} at /mnt/{name}"


@syscall("fs.umount")
async def fs_umount(ctx: Any, name: str) -> str:
    """Unmount."""
    DIRS.discard(f"/mnt/{name}")
    for p in [p for p in FILES if p.startswith(f"/mnt/{name}/")]:
        del FILES[p]
    return f"unmounted /mnt/{name}"


@syscall("qa.ask")
async def qa_ask(ctx: Any, question: str, scope: str = "/", k: int = 3) -> dict[str, Any]:
    """Answer from the memory FS."""
    return {"answer": f"asked {question!r} in {scope}", "sources": [scope]}


@syscall("shell.exec", risk="high")
async def shell_exec(ctx: Any, command: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Run a host command (stand-in: records it)."""
    RAN.append(command)
    return {"exit_code": 0, "stdout": f"ran: {command}\n", "stderr": "", "timed_out": False}


STAND_INS = [fs_ls, fs_read, fs_write, fs_rm, fs_mkdir, fs_search, fs_mount, fs_umount, qa_ask]


# -- helpers ------------------------------------------------------------------------------------
async def wait_for(pilot: Any, cond: Callable[[], bool], steps: int = 400) -> None:
    for _ in range(steps):
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not met in time")


def text(app: LlmosShell) -> str:
    return "\n".join(app.out.lines)


async def make_kernel(settings: Any, *, fs: bool = True, sh: bool = True, **kw: Any) -> Kernel:
    """A scripted kernel whose memory and host-command syscalls are the stand-ins above
    (`fs=False`/`sh=False`: those subsystems absent altogether)."""
    _reset_fs()
    kernel = Kernel(settings, backend_factory=scripted_factory(**kw))
    await kernel.start()
    specs = kernel.syscalls.specs
    for name in [n for n in specs if n.startswith(("fs.", "qa.")) or n == "shell.exec"]:
        del specs[name]
    for fn in (STAND_INS if fs else []) + ([shell_exec] if sh else []):
        spec = fn.__syscall__  # type: ignore[attr-defined]
        specs[spec.name] = spec
    return kernel


async def typed(pilot: Any, app: LlmosShell, line: str, expect: str) -> None:
    app.query_one("#prompt").focus()
    await pilot.press(*line, "enter")
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
        assert FILES["/home/me/todo"] == "buy hay"
        await typed(pilot, app, "cat /home/me/todo", "buy hay")
        await typed(pilot, app, 'search "hum" /home', "/home/notes.txt")
        await typed(pilot, app, f"mount {host} docs", "mounted")
        await typed(pilot, app, "cat /mnt/docs/a.md", "alpacas graze")
        await typed(pilot, app, "umount docs", "unmounted /mnt/docs")
        await typed(pilot, app, 'qa "who hums?" --scope /home', "asked 'who hums?' in /home")
        await typed(pilot, app, "rm /home/me/todo", "removed /home/me/todo")
        assert "/home/me/todo" not in FILES
        await typed(pilot, app, "cat /home/me/todo", "error: no such file: /home/me/todo")
        await typed(pilot, app, "prompts", "system")
        await typed(pilot, app, "prompts system", "You are helpful.")
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
        await pilot.press(*"!ls -la", "enter")
        dialog = await _approval(pilot, app)
        assert "$ ls -la" in str(dialog.query_one("#what").render())
        assert RAN == []  # nothing runs before the answer
        await pilot.click("#once")
        await wait_for(pilot, lambda: "ran: ls -la" in text(app))
        assert RAN == ["ls -la"] and "[exit 0]" in text(app)
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
        assert RAN == []
    await kernel.shutdown()


async def test_always_approves_the_rest_of_that_process_only(settings: Any) -> None:
    kernel = await make_kernel(settings)
    done = asyncio.Event()

    async def agent(ctx: Any) -> int:
        for cmd in ("one", "two"):
            await ctx.sys.shell.exec(command=cmd)
        done.set()
        return 0

    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        proc = await kernel.spawn(agent, caps=["shell.exec"], name="agent")
        await _approval(pilot, app)
        await pilot.press("a")
        await wait_for(pilot, done.is_set)
        assert RAN == ["one", "two"]  # the second call asked nobody
        assert (proc.pid, "shell.exec") in app.always
        # Another process still asks.
        await pilot.press(*"!three", "enter")
        await _approval(pilot, app)
        await pilot.press("y")
        await wait_for(pilot, lambda: RAN == ["one", "two", "three"])
    await kernel.shutdown()


async def test_killing_a_process_closes_its_approval_dialog(settings: Any) -> None:
    kernel = await make_kernel(settings)

    async def agent(ctx: Any) -> int:
        await ctx.sys.shell.exec(command="never")
        return 0

    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=(120, 40)) as pilot:
        proc = await kernel.spawn(agent, caps=["shell.exec"], name="agent")
        await _approval(pilot, app)
        kernel.signal(proc.pid, "KILL")
        await wait_for(pilot, lambda: not isinstance(app.screen, ApprovalScreen))
        assert RAN == [] and proc.exit_reason == "killed"
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
