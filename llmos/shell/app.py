"""The Textual shell: chat with the assistant, run commands against the kernel.

Every effect goes through the kernel: a chat is an `assistant` process (memory in its home,
so the conversation outlives the shell), a file or host command is a short process that
makes one syscall (so capabilities, approval and audit apply). The kernel is embedded, or
a daemon's with `--connect URL` (llmos.shell.backend: one interface, two backends). The
process panel redraws on the kernel's process events, or every second from a daemon.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Input, Log, Static

from llmos.config import Settings
from llmos.memory.mountscan import mount_summary, skipped_lines
from llmos.memory.prompts import PROMPT_DIR
from llmos.shell.backend import (
    Backend,
    CommandError,
    LocalBackend,
    RemoteBackend,
    row_alive,
)
from llmos.shell.history import CommandHistory

if TYPE_CHECKING:
    from textual.screen import ModalScreen

D = TypeVar("D")

__all__ = ["COMMANDS", "HELP", "Command", "CommandError", "LlmosShell", "UsageError", "command"]

# -- the command table ------------------------------------------------------------------------
Handler = Callable[["LlmosShell", list[str]], Awaitable[None]]
H = TypeVar("H", bound=Handler)
# How Tab completes a command's arguments: process ids, memory-FS paths, model names, or
# installed apps' names.
Completion = Literal["pid", "path", "model", "app"]


class UsageError(CommandError):
    """A command given the wrong arguments: the shell shows the command's usage from the
    table, and this error's text, if any, as a note after it."""


@dataclass(frozen=True)
class Command:
    """One shell command, declared once with `@command` on its handler: `help` lists it,
    `execute` dispatches to it, a `UsageError` from it shows its usage, Tab completes it."""

    name: str
    usage: str
    help: str
    run: Handler
    complete: Completion | None = None
    subcommands: tuple[str, ...] = ()  # what Tab offers as the first argument
    aliases: tuple[str, ...] = ()

    def help_line(self) -> str:
        text = self.help if self.usage == self.name else f"{self.usage}   {self.help}"
        return f"  {self.name:9} {text}\n"


# Every command by its name and its aliases, in the order declared (the order `help` lists).
COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    *,
    help: str,
    usage: str | None = None,
    complete: Completion | None = None,
    subcommands: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> Callable[[H], H]:
    """Declare the decorated `LlmosShell` method as the command `name` (usage: `name` alone
    when it takes no arguments)."""

    def register(run: H) -> H:
        cmd = Command(name, usage or name, help, run, complete, subcommands, aliases)
        for word in (name, *aliases):
            COMMANDS[word] = cmd
        return run

    return register


# What a line may be besides a command (not dispatched by its first word): listed first.
FORMS = (
    ("<text>", "chat with the assistant (streams the answer; it remembers the conversation)"),
    ("!CMD", "run a host command through shell.exec (asks for approval)"),
)
KEYS = "keys: Ctrl+C stops the current answer (or follow), Ctrl+Q quits, Ctrl+T toggles the process panel, Ctrl+B browses files, F1 help, Tab completes, Up/Down history"
PANEL_COLUMNS = ("PID", "NAME", "STATE", "NICE", "MODEL", "TOKENS", "TOK/S", "WAIT")


class CommandInput(Input):
    """The prompt: ↑/↓ walk the history, Tab completes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "history(-1)", "Prev", show=False),
        Binding("down", "history(1)", "Next", show=False),
        Binding("tab", "complete", "Complete", show=False),
    ]

    def action_history(self, step: int) -> None:
        app = self.app
        assert isinstance(app, LlmosShell)
        line = app.hist.previous() if step < 0 else app.hist.next()
        if line is not None:
            self.value = line
            self.cursor_position = len(line)

    async def action_complete(self) -> None:
        app = self.app
        assert isinstance(app, LlmosShell)
        await app.complete()


def _flag(args: list[str], flag: str) -> tuple[bool, list[str]]:
    """Whether `flag` is among a command's arguments, and the arguments without it."""
    return flag in args, [a for a in args if a != flag]


def _host_path(text: str) -> str:
    return str(Path(text).expanduser().resolve())


def _rss_mb() -> float:
    """This process's resident memory, from /proc when there is one."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _fmt(value: Any) -> str:
    """A syscall result as text lines for the output pane."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if {"stdout", "stderr", "exit_code"} <= value.keys():  # a host command's result
            out = str(value["stdout"]) + str(value["stderr"])
            return out.rstrip("\n") + f"\n[exit {value['exit_code']}]"
        return "\n".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "\n".join(_fmt(v) for v in value)
    return str(value)


class LlmosShell(App[None]):
    TITLE = "llmos"
    CSS = """
    #main { height: 1fr; }
    #out { width: 1fr; height: 1fr; border: round $primary; }
    #procs { width: 62; height: 1fr; border: round $secondary; }
    #procs.hidden { display: none; }
    #bar { height: 1; }
    #status { width: 1fr; height: 1; color: $text-muted; padding: 0 1; }
    #stats { width: auto; height: 1; color: $text-muted; padding: 0 1; }
    CommandInput { dock: bottom; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "cancel", "Stop answer", priority=True),
        Binding("ctrl+t", "toggle_panel", "Processes"),
        Binding("ctrl+b", "files", "Files"),
        Binding("f1", "help_screen", "Help"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        model: str | None = None,
        kernel: Any = None,
        connect: str | None = None,
        api_key: str | None = None,
        agent: str = "assistant",
    ) -> None:
        super().__init__()
        from llmos.config import load_settings

        self.settings = settings or load_settings()
        self.model = model
        self.agent = agent  # the assistant's home: /home/<agent>
        self.backend: Backend = (
            RemoteBackend(connect, api_key=api_key, app_index=self.settings.app_index)
            if connect
            else LocalBackend(self.settings, kernel)
        )
        self.current_pid: int | None = None
        self.following: int | None = None
        self.hist = CommandHistory(self.settings.data_dir / "shell_history")
        self.model_ready = False
        self.always: set[tuple[int, str]] = set()  # (pid, syscall) approved for good
        self.memory_probe: Callable[[], float] = _rss_mb
        self._unattach: Callable[[], None] | None = None  # undoes `backend.attach`
        self._closing = False
        self._panel_due = False
        self._last_panel = 0.0
        self._poller: Any = None  # the timer polling rows a backend sends no events for
        self._chat_lock = asyncio.Lock()  # one assistant answer at a time

    @property
    def kernel(self) -> Any:
        """The embedded kernel (a shell connected to a daemon has none: CommandError)."""
        return self.backend.kernel

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield Log(id="out", highlight=False)
            table: DataTable[str] = DataTable(id="procs", cursor_type="row", zebra_stripes=True)
            yield table
        with Horizontal(id="bar"):
            yield Static("starting kernel...", id="status", markup=False)
            yield Static("", id="stats", markup=False)
        yield CommandInput(placeholder="ask something, or type help", id="prompt")
        yield Footer()

    @property
    def out(self) -> Log:
        return self.query_one("#out", Log)

    @property
    def panel(self) -> DataTable[str]:
        return self.query_one("#procs", DataTable)

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def say(self, text: str) -> None:
        """Whole lines, starting on a fresh line even after a streamed answer."""
        lines = self.out.lines
        prefix = "\n" if lines and lines[-1] else ""
        self.out.write(prefix + text.rstrip("\n") + "\n")

    def stream(self, chunk: str) -> None:
        """Streamed text, wrapped at word boundaries to the pane's width (a Log won't)."""
        width = max(60, self.out.size.width - 4)  # a narrow pane scrolls sideways
        for piece in re.findall(r"\n|[^\S\n]+|\S+", chunk):
            last = self.out.lines[-1] if self.out.lines else ""
            if piece != "\n" and len(last) + len(piece) > width and last.strip():
                self.out.write("\n")
                if piece.isspace():
                    continue
            self.out.write(piece)
        self._tick()

    def on_mount(self) -> None:
        for label in PANEL_COLUMNS:
            # STATE is as wide as its longest value from the start: a column that widens
            # when a row changes is measured only when idle, and a dialog opened meanwhile
            # would keep the unmeasured table painted under it.
            self.panel.add_column(label, width=7 if label == "STATE" else None)
        self.panel.border_title = "processes"
        self.query_one("#prompt", Input).focus()
        if self.backend.started:
            self._attach_backend()  # a kernel handed in may already be running processes
        # The prompt is drawn first; the kernel boots after that first frame, and the model
        # loads in the background after that (a command typed meanwhile boots it on demand).
        self.call_after_refresh(self._boot)

    async def _boot(self) -> None:
        try:
            await self.backend.start()
        except CommandError as exc:  # a daemon that does not answer
            self.set_status(f"not connected: {exc}")
            self.say(f"error: {exc}")
            return
        self._attach_backend()
        if self.backend.notice:
            self.set_status(self.backend.notice)
        self.refresh_panel()
        if self.backend.poll_s is not None:
            self._poller = self.set_interval(self.backend.poll_s, self._poll_soon)
        if self.backend.preload_model:
            self.run_worker(
                self._load_model(self.model or self.settings.default_model), group="load"
            )
        else:
            self.model_ready = True

    def _poll_soon(self) -> None:
        self.run_worker(self._refresh(), group="poll", exclusive=True)

    async def _refresh(self) -> None:
        """Redraw the panel now, with fresh rows (a daemon's are fetched first)."""
        from textual.css.query import NoMatches

        try:
            await self.backend.poll()
            if self._closing:
                return
            self.refresh_panel()
        except CommandError as exc:
            self.set_status(str(exc))
        except NoMatches:  # the screen went away while the daemon answered
            pass

    def _attach_backend(self) -> None:
        """Answer the backend's approval requests and hear its process events."""
        if self._unattach is None:
            self._unattach = self.backend.attach(self.approve, self._on_process_event)

    async def _load_model(self, name: str) -> None:
        self.set_status(f"loading {name}...")

        def progress(fraction: float) -> None:  # called from the loading thread
            self.call_from_thread(self.set_status, f"loading {name}... {fraction:.0%}")

        try:
            await self.backend.load_model(name, progress)
        except Exception as exc:
            self.set_status(f"model {name} failed to load: {exc}")
            self.say(f"error: {exc}")
            return
        if name == (self.model or self.settings.default_model):
            self.model_ready = True
        self.set_status(f"model {name} ready")
        await self._refresh()

    async def on_unmount(self) -> None:
        self._closing = True
        if self._unattach is not None:
            self._unattach()
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        await self.backend.close()

    # -- the process panel and the status bar --------------------------------------------
    def _on_process_event(self, proc: Any, event: str) -> None:
        if not self._panel_due:  # coalesce a burst of events into one redraw
            self._panel_due = True
            self.call_later(self.refresh_panel)

    def refresh_panel(self) -> None:
        self._panel_due = False
        self._last_panel = time.monotonic()
        rows = self.backend.rows()
        table = self.panel
        # The live processes first, then the most recent ended ones.
        live = [r for r in rows if row_alive(r)]
        ended = [r for r in rows if not row_alive(r)][-8:]
        cells = {
            str(r["pid"]): (
                str(r["pid"]), str(r["name"])[:14], str(r["state"]), str(r["nice"]),
                str(r["model"] or "-")[:12], str(r["tokens"]),
                f"{r['tok_s']:.1f}" if r.get("tok_s") else "-",
                f"{r['wait_s']:.2f}" if r.get("wait_s") is not None else "-",
            )
            for r in live + ended
        }  # fmt: skip
        if [k.value for k in table.rows] == list(cells):
            # Same rows in the same order: update in place, so the columns keep their
            # measured widths (a cleared table is re-measured only when next idle).
            for key, values in cells.items():
                for col, value in zip(table.ordered_columns, values, strict=True):
                    if table.get_cell(key, col.key) != value:
                        table.update_cell(key, col.key, value, update_width=True)
        else:
            table.clear()
            for key, values in cells.items():
                table.add_row(*values, key=key)
        self.refresh_stats(rows)

    def refresh_stats(self, rows: list[dict[str, Any]] | None = None) -> None:
        rows = self.backend.rows() if rows is None else rows
        models = ",".join(s["model"] for s in self.backend.engines()) or "no model"
        tok_s = sum(r["tok_s"] or 0.0 for r in rows if row_alive(r))
        where = self.backend.describe(self.memory_probe)
        self.query_one("#stats", Static).update(f"{models} | {tok_s:.1f} tok/s | {where}")

    def _tick(self) -> None:
        """While output streams, redraw the panel's token counts at most 4 times a second."""
        if time.monotonic() - self._last_panel > 0.25:
            self.refresh_panel()

    # -- input ---------------------------------------------------------------------------
    async def on_input_submitted(self, event: Input.Submitted) -> None:
        line = event.value.strip()
        event.input.value = ""
        if not line:
            return
        self.hist.add(line)
        await self.execute(line)

    async def execute(self, line: str) -> None:
        if line.startswith("!"):
            self.say(f"$ {line[1:].strip()}")
            self.run_worker(self._guard(self.host_command(line[1:].strip())), group="cmd")
            return
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        cmd = COMMANDS.get(words[0].lower())
        self.say(f"> {line}")
        if cmd is None:
            self.run_worker(self._guard(self.ask(line)), group="chat")
            return
        self.run_worker(self._guard(self._run(cmd, words[1:])), group="cmd")

    async def _run(self, cmd: Command, args: list[str]) -> None:
        try:
            await cmd.run(self, args)
        except UsageError as exc:
            note = f"  ({exc})" if str(exc) else ""
            raise CommandError(f"usage: {cmd.usage}{note}") from None

    async def _guard(self, coro: Awaitable[None]) -> None:
        from llmos.errors import LlmosError

        try:
            await coro
        except (CommandError, LlmosError) as exc:
            self.say(f"error: {exc}")

    # -- syscalls from the shell -----------------------------------------------------------
    async def syscall(self, name: str, /, **args: Any) -> Any:
        """One syscall, made the backend's way: locally in its own process with just that
        capability (approval and audit apply), remotely through the daemon's endpoint."""
        return await self.backend.syscall(name, args)

    async def dialog(self, screen: ModalScreen[D], default: D) -> D:
        """Open a modal screen and wait for its answer (`default` if it closes without one);
        if the waiting task is cancelled, the screen closes with `default`."""
        fut: asyncio.Future[D] = asyncio.get_running_loop().create_future()

        def done(choice: D | None) -> None:
            if not fut.done():
                fut.set_result(default if choice is None else choice)

        self.push_screen(screen, callback=done)
        try:
            return await fut
        except asyncio.CancelledError:
            if screen.is_current:
                screen.dismiss(default)
            raise

    async def approve(self, ctx: Any, spec: Any, values: dict[str, Any]) -> bool:
        """The syscall table's approver: a modal dialog per call unless always-approved."""
        from llmos.shell.screens import ALLOW_ONCE, ALWAYS, DENY, ApprovalScreen

        if (ctx.pid, spec.name) in self.always:
            return True
        screen = ApprovalScreen(ctx.pid, ctx.process.name, spec.name, spec.risk, values)
        # The asking process killed meanwhile: its dialog closes, as denied.
        choice = await self.dialog(screen, DENY)
        if choice == ALWAYS:
            self.always.add((ctx.pid, spec.name))
        approved = choice in (ALLOW_ONCE, ALWAYS)
        self.say(f"[{spec.name} for pid {ctx.pid}: {'approved' if approved else 'denied'}]")
        return approved

    # -- commands: each declared once, with its usage, help line and completion -----------
    @command(
        "remember",
        usage="remember TEXT",
        help="the assistant keeps a fact about you in its core memory",
    )
    async def cmd_remember(self, args: list[str]) -> None:
        if not args:
            raise UsageError("e.g. remember I live in Paris")
        text = " ".join(args)
        await self.ask(text if text.lower().startswith("remember") else f"remember that {text}")

    @command("ps", help="list processes")
    async def cmd_ps(self, args: list[str]) -> None:
        self.say(f"{'PID':>5} {'NAME':14} {'STATE':9} {'NICE':>4} {'TOKENS':>6} {'TOK/S':>6} EXIT")
        for r in await self.backend.ps():
            tps = f"{r['tok_s']:.1f}" if r["tok_s"] else "-"
            code = "" if r["exit_code"] is None else str(r["exit_code"])
            self.say(
                f"{r['pid']:>5} {r['name'][:14]:14} {r['state']:9} {r['nice']:>4} "
                f"{r['tokens']:>6} {tps:>6} {code}"
            )

    @command("top", help="show or hide the live process panel; kernel-wide figures")
    async def cmd_top(self, args: list[str]) -> None:
        self.action_toggle_panel()
        top = await self.backend.top()
        self.say(f"{top['processes']} live processes")
        from llmos.ops.capacity import predicted

        for s in top["models"]:
            if s.get("remote"):
                state = "up" if s.get("up") else f"down ({s.get('down_reason')})"
                self.say(
                    f"{s['model']}: remote {s['remote']}, {state}, {s['active']} active, "
                    f"{s['waiting']} waiting, {s['requests']} requests, {s['retries']} retries"
                )
                continue
            if "kv_cells" not in s:  # a daemon's model: loaded, figures not served
                self.say(f"{s['model']}: loaded")
                continue
            self.say(
                f"{s['model']}: {s['active']} active, {s['waiting']} waiting, "
                f"KV {s['kv_cells_used']}/{s['kv_cells']}, {s['steps_per_s']:.1f} steps/s, "
                f"{s['tokens_decoded']} tokens decoded"
            )
            f = {**s, **predicted(s)}
            if f.get("arrival_rate") is not None and f.get("utilisation") is not None:
                pred = f.get("wait_predicted_s")
                meas = f.get("wait_measured_s")
                self.say(
                    f"  load: {f['arrival_rate']:.2f} req/s, utilisation {f['utilisation']:.2f}, "
                    f"wait {meas or 0:.2f} s measured / "
                    + (f"{pred:.2f} s predicted" if pred is not None else "overloaded")
                )

    async def _pid(self, text: str) -> int:
        try:
            pid = int(text)
        except ValueError:
            raise CommandError(f"not a pid: {text!r}") from None
        await self.backend.check(pid)  # no such process: an error here
        return pid

    @command(
        "kill",
        usage="kill [-TERM|-KILL|-STOP|-CONT] PID",
        help="send a signal (default TERM)",
        complete="pid",
    )
    async def cmd_kill(self, args: list[str]) -> None:
        sig = "TERM"
        if args and args[0].startswith("-"):
            sig = args.pop(0)[1:].upper()
        if len(args) != 1:
            raise UsageError
        pid = await self._pid(args[0])
        await self.backend.signal(pid, sig)
        self.say(f"sent {sig} to {pid}")
        await self._refresh()

    @command("nice", usage="nice PID N", help="set a process's priority", complete="pid")
    async def cmd_nice(self, args: list[str]) -> None:
        if len(args) != 2:
            raise UsageError
        pid = await self._pid(args[0])
        try:
            value = int(args[1])
        except ValueError:
            raise CommandError(f"not a number: {args[1]!r}") from None
        await self.backend.renice(pid, value)
        self.say(f"pid {pid} nice {value}")
        await self._refresh()

    @command("run", usage="run prog.py [args]", help="run an agent program file as a process")
    async def cmd_run(self, args: list[str]) -> None:
        if not args:
            raise UsageError
        pid = await self.backend.run_file(args[0], args[1:], self.model)
        await self._stream(pid)

    @command(
        "spawn",
        usage='spawn NAME "task"',
        help='start a named program (e.g. spawn react "17*23")',
    )
    async def cmd_spawn(self, args: list[str]) -> None:
        if not args:
            raise UsageError(f"programs: {self.backend.programs()}")
        name = args[0]
        pid = await self.backend.spawn(name, *args[1:], name=name, model=self.model)
        self.say(f"[pid {pid}] {name} started; `logs {pid} -f` follows it")

    @command(
        "logs", usage="logs PID [-f]", help="show a process's output; -f follows it", complete="pid"
    )
    async def cmd_logs(self, args: list[str]) -> None:
        follow, rest = _flag(args, "-f")
        if len(rest) != 1:
            raise UsageError
        pid = await self._pid(rest[0])
        if not follow:
            self.say(await self.backend.logs(pid) or f"[pid {pid}: no output]")
            return
        self.following = pid
        self.set_status(f"following pid {pid} (Ctrl+C stops following)")
        try:
            async for chunk in self.backend.follow(pid):
                if self.following != pid:
                    break
                self.stream(chunk)
        finally:
            if self.following == pid:
                self.following = None
            self.out.write("\n")
        self.say(f"[end of pid {pid} log: {await self.backend.state(pid)}]")

    async def _stream(self, pid: int) -> None:
        self.current_pid = pid
        async for chunk in self.backend.follow(pid):
            self.stream(chunk)
        ended = await self.backend.wait(pid)
        self.out.write("\n")
        if self.current_pid == pid:
            self.current_pid = None
        self.say(f"[pid {pid} exited {ended.code}]")
        if ended.message:
            self.say(ended.message)

    @command("ls", usage="ls [PATH]", help="list a memory-FS directory", complete="path")
    async def cmd_ls(self, args: list[str]) -> None:
        path = args[0] if args else "/"
        entries = await self.list_dir(path)
        self.say("\n".join(n + ("/" if d else "") for n, d in entries) or "(empty)")

    async def list_dir(self, path: str) -> list[tuple[str, bool]]:
        """(absolute path, is a directory) for each entry, as `fs.ls` gives them."""
        return [(e["path"], e["kind"] == "dir") for e in await self.syscall("fs.ls", path=path)]

    @command("cat", usage="cat PATH", help="show a memory-FS file", complete="path")
    async def cmd_cat(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError
        self.say(_fmt(await self.syscall("fs.read", path=args[0])))

    @command("write", usage="write PATH TEXT", help="write a memory-FS file", complete="path")
    async def cmd_write(self, args: list[str]) -> None:
        if len(args) < 2:
            raise UsageError
        await self.syscall("fs.write", path=args[0], content=" ".join(args[1:]))
        self.say(f"wrote {args[0]}")

    @command(
        "rm",
        usage="rm [-r] PATH",
        help="remove a memory-FS path (-r: a whole tree)",
        complete="path",
    )
    async def cmd_rm(self, args: list[str]) -> None:
        recursive, args = _flag(args, "-r")
        if len(args) != 1:
            raise UsageError
        await self.syscall("fs.rm", path=args[0], recursive=recursive or None)
        self.say(f"removed {args[0]}")

    @command("mkdir", usage="mkdir PATH", help="make a memory-FS directory", complete="path")
    async def cmd_mkdir(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError
        await self.syscall("fs.mkdir", path=args[0])
        self.say(f"made {args[0]}")

    @command(
        "search",
        usage='search "query" [PATH]',
        help="semantic search of the memory FS",
        complete="path",
    )
    async def cmd_search(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            raise UsageError
        hits = await self.syscall("fs.search", query=args[0], path=args[1] if args[1:] else None)
        self.say(_fmt(hits) or "(no matches)")

    @command("mount", usage="mount HOSTDIR NAME", help="mount a host folder read-only at /mnt/NAME")
    async def cmd_mount(self, args: list[str]) -> None:
        if len(args) != 2:
            raise UsageError
        host = _host_path(args[0])
        out = await self.syscall("fs.mount", host=host, name=args[1])
        # the counts, and what was skipped and why
        self.say(f"mounted {host} at /mnt/{args[1]}: {mount_summary(out)}")
        for line in skipped_lines(out, limit=20):  # all: `llmos fs mount --verbose`
            self.say(line)

    @command("umount", usage="umount NAME", help="unmount /mnt/NAME", complete="path")
    async def cmd_umount(self, args: list[str]) -> None:
        if len(args) != 1:
            raise UsageError
        self.say(_fmt(await self.syscall("fs.umount", name=args[0])))

    @command(
        "qa",
        usage='qa "question" [--scope PATH]',
        help="answer from the memory FS, citing sources",
    )
    async def cmd_qa(self, args: list[str]) -> None:
        scope = None
        if "--scope" in args:
            i = args.index("--scope")
            if i + 1 >= len(args):
                raise UsageError
            scope = args[i + 1]
            args = args[:i] + args[i + 2 :]
        if not args:
            raise UsageError
        self.say(_fmt(await self.syscall("qa.ask", question=" ".join(args), scope=scope)))

    @command(
        "models",
        usage="models [load NAME | unload NAME]",
        help="list, load or unload models",
        complete="model",
        subcommands=("load", "unload"),
    )
    async def cmd_models(self, args: list[str]) -> None:
        if args and args[0] in ("load", "unload"):
            if len(args) != 2:
                raise UsageError
            if args[0] == "load":
                await self._load_model(args[1])
            else:
                await self.backend.unload_model(args[1])
                self.say(f"unloaded {args[1]}")
                await self._refresh()
            return
        if args:
            raise UsageError
        for name, file, loaded in await self.backend.models():
            self.say(f"{'*' if loaded else ' '} {name:28} {file}".rstrip())
        self.say("(* loaded)")

    @command(
        "app",
        usage="app list | search [WORDS] | install PATH|NAME | run NAME [ENTRY] [ARGS] "
        "| remove NAME [--purge]",
        help="installed apps and the index; install reviews the grants in a dialog",
        complete="app",
        subcommands=("list", "search", "install", "run", "remove"),
    )
    async def cmd_app(self, args: list[str]) -> None:
        subs = {
            "list": self._app_list, "search": self._app_search, "install": self._app_install,
            "run": self._app_run, "remove": self._app_remove,
        }  # fmt: skip
        if not args or args[0] not in subs:
            raise UsageError
        await subs[args[0]](args[1:])

    async def _app_list(self, args: list[str]) -> None:
        if args:
            raise UsageError
        apps = await self.backend.apps()
        if not apps:
            self.say("no apps installed (app search, then app install NAME)")
        for a in apps:
            self.say(f"{a['name']} {a['version']}  {a['description']}")
            self.say(f"  granted: {', '.join(a['granted']) or '-'}")
            denied = [c for c in a["requested"] if c not in a["granted"]]
            if denied:
                self.say(f"  denied:  {', '.join(denied)}")
            self.say(f"  entries: {', '.join(a['entries'])}")

    async def _app_search(self, args: list[str]) -> None:
        found = await self.backend.app_search(args)
        if not found:
            self.say("no app matches" if args else "no apps in the index")
        for x in found:
            self.say(f"{x['name']} {x['version']}  ({x['origin']})  {x['description']}")

    async def _app_install(self, args: list[str]) -> None:
        from llmos.shell.screens import GrantScreen

        if len(args) != 1:
            raise UsageError
        self.set_status(f"checking {args[0]}...")  # a download or a git clone takes a while
        try:
            review = await self.backend.app_review(args[0])
        except BaseException:
            self.set_status(f"{args[0]}: not installed")
            raise
        self.set_status(f"{review.name} {review.version}: tick what you grant, then Install")
        try:
            grant = await self.dialog(GrantScreen(review), None)
            if grant is None:
                self.say(f"cancelled: {review.name} not installed")
                self.set_status(f"{review.name}: not installed")
                return
            app = await self.backend.app_install(review, grant)
        finally:
            await self.backend.app_discard(review)
        self.say(f"installed {app['name']} {app['version']}")
        self.say(f"  granted: {', '.join(app['granted']) or '-'}")
        denied = [c for c in app["requested"] if c not in app["granted"]]
        if denied:
            self.say(f"  denied:  {', '.join(denied)} (llmos app grants {app['name']} --grant CAP)")
        self.set_status(f"installed {app['name']}")

    async def _installed(self, name: str) -> dict[str, Any]:
        for a in await self.backend.apps():
            if a["name"] == name:
                return a
        raise CommandError(f"no app named {name!r} is installed (app list)")

    async def _app_run(self, args: list[str]) -> None:
        if not args:
            raise UsageError
        app = await self._installed(args[0])
        rest = args[1:]
        # The first argument picks the entry when it names one, as `llmos app run` reads it.
        entry = rest.pop(0) if rest and rest[0] in app["entries"] else None
        pid = await self.backend.app_run(app["name"], entry, rest)
        await self._stream(pid)

    async def _app_remove(self, args: list[str]) -> None:
        from llmos.shell.screens import ConfirmScreen

        purge, args = _flag(args, "--purge")
        if len(args) != 1:
            raise UsageError
        app = await self._installed(args[0])
        name = app["name"]
        home = f"/home/{name}"
        what = f"and delete {home}" if purge else f"(its files in {home} stay)"
        question = f"Remove {name} {app['version']} {what}?"
        if not await self.dialog(ConfirmScreen(question, yes="Remove"), False):
            self.say(f"cancelled: {name} not removed")
            return
        home_gone = await self.backend.app_remove(name, purge)
        self.say(f"removed {name}" + (f" and {home}" if home_gone else ""))

    @command(
        "prompts",
        usage="prompts [NAME]",
        help="list the prompt templates in /etc/prompts, or show one",
        complete="path",
    )
    async def cmd_prompts(self, args: list[str]) -> None:
        # A template NAME is the file /etc/prompts/NAME.txt (as `prompt.render` reads it).
        if args:
            path = f"{PROMPT_DIR}/{args[0].removesuffix('.txt')}.txt"
            self.say(_fmt(await self.syscall("fs.read", path=path)))
        else:
            names = [p.rsplit("/", 1)[-1] for p, _ in await self.list_dir(PROMPT_DIR)]
            self.say("\n".join(n.removesuffix(".txt") for n in names) or "(no prompts)")

    @command("history", help="the commands typed so far")
    async def cmd_history(self, args: list[str]) -> None:
        for i, line in enumerate(self.hist.lines, 1):
            self.say(f"{i:>4}  {line}")

    @command("files", help="browse the memory FS (also Ctrl+B)", complete="path")
    async def cmd_files(self, args: list[str]) -> None:
        self.action_files()

    @command("clear", help="clear the screen")
    async def cmd_clear(self, args: list[str]) -> None:
        self.out.clear()

    @command("help", help="this text (F1 opens it as a screen)")
    async def cmd_help(self, args: list[str]) -> None:
        self.say(HELP)
        if self.backend.notice:
            self.say(self.backend.notice)

    @command("exit", help="quit (also Ctrl+Q)", aliases=("quit",))
    async def cmd_exit(self, args: list[str]) -> None:
        self.exit()

    # -- chat and host commands -----------------------------------------------------------
    async def ask(self, question: str) -> None:
        """The question goes to an `assistant` process: it pins the agent's core memory,
        carries the conversation over from its home and streams the answer. Questions
        typed while one is answered wait their turn (each continues the conversation)."""
        async with self._chat_lock:
            await self._ask(question)

    async def _ask(self, question: str) -> None:
        pid = await self.backend.spawn(
            "assistant", question, self.agent, name=self.agent, model=self.model
        )
        self.current_pid = pid
        self.set_status(f"pid {pid} answering... (Ctrl+C stops it)")
        async for chunk in self.backend.follow(pid):
            self.stream(chunk)
        ended = await self.backend.wait(pid)
        self.out.write("\n")
        if self.current_pid == pid:
            self.current_pid = None
        if ended.code == 0:
            self.set_status(f"pid {pid} done")
        elif ended.stopped:
            self.say("[stopped]")
            self.set_status(f"pid {pid} stopped")
        else:
            self.say(f"error: {ended.message or ended.reason}")
            self.set_status(f"pid {pid} failed")
        await self._refresh()

    async def host_command(self, command: str) -> None:
        if not command:
            raise CommandError("usage: !COMMAND")
        self.say(_fmt(await self.syscall("shell.exec", command=command)))

    # -- completion ------------------------------------------------------------------------
    async def candidates(self, value: str) -> tuple[str, list[str]]:
        """(the word being completed, what it could become)."""
        words = value.split(" ")
        word = words[-1]
        if len(words) == 1:
            return word, sorted(c for c in COMMANDS if c.startswith(word))
        cmd = COMMANDS.get(words[0])
        if cmd is None:
            return word, []
        if cmd.subcommands and len(words) == 2:
            options = list(cmd.subcommands)
        elif cmd.complete is not None:
            options = await self._completions(cmd.complete, word)
        else:
            options = []
        return word, [o for o in options if o.startswith(word)]

    async def _completions(self, kind: Completion, word: str) -> list[str]:
        if kind == "pid":
            return [str(p) for p in self.backend.pids()]
        if kind == "model":
            return [name for name, _, _ in await self.backend.models()]
        if kind == "app":
            try:
                return [a["name"] for a in await self.backend.apps()]
            except CommandError:
                return []
        base = word.rsplit("/", 1)[0] + "/" if "/" in word else "/"
        try:
            entries = await self.list_dir(base)
        except CommandError:
            return []
        return [p + ("/" if d else "") for p, d in entries]

    async def complete(self) -> None:
        prompt = self.query_one("#prompt", Input)
        word, options = await self.candidates(prompt.value)
        if not options:
            return
        common = options[0]
        for o in options[1:]:
            while not o.startswith(common):
                common = common[:-1]
        if len(options) == 1 and not common.endswith("/"):
            common += " "
        if len(common) > len(word):
            prompt.value = prompt.value[: len(prompt.value) - len(word)] + common
            prompt.cursor_position = len(prompt.value)
        elif len(options) > 1:
            self.say("  ".join(options))

    # -- actions -----------------------------------------------------------------------------
    def action_cancel(self) -> None:
        pid = self.current_pid
        if pid is not None and self.backend.alive(pid):
            self.run_worker(
                self._guard(self.backend.signal(pid, "KILL", reason="cancelled")),
                group="cancel",
            )
        elif self.following is not None:
            self.following = None
            self.set_status("stopped following")
        else:
            self.set_status("nothing to stop (Ctrl+Q quits)")

    def action_toggle_panel(self) -> None:
        self.panel.toggle_class("hidden")
        self.refresh_panel()

    def action_help_screen(self) -> None:
        from llmos.shell.screens import HelpScreen

        self.push_screen(HelpScreen(HELP))

    def action_files(self) -> None:
        from llmos.shell.screens import FsBrowser

        def opened(path: str | None) -> None:
            if path:
                self.say(f"> cat {path}")
                self.run_worker(self._guard(self.cmd_cat([path])), group="cmd")

        self.push_screen(FsBrowser(self.list_dir), callback=opened)


HELP = (
    "commands:\n"
    + "".join(f"  {form:9} {text}\n" for form, text in FORMS)
    + "".join(cmd.help_line() for word, cmd in COMMANDS.items() if word == cmd.name)
    + KEYS
    + "\n"
)
