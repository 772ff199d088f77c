"""The Kernel: owns the model manager, the process table, the syscall table and every task.

    async with Kernel() as k:
        p = await k.spawn(main, "arg")
        code = await k.wait(p.pid)

Every process is an asyncio task the kernel owns and reaps; nothing is fire-and-forget.
A crashing program becomes an exited process with its traceback in its log; the kernel and
the other processes keep running.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from llmos.config import Settings, load_settings
from llmos.core.context import Context
from llmos.core.process import Budgets, OutputStream, Process, ProcessState, Program, Signal
from llmos.core.sampling import SamplingParams
from llmos.core.syscall import SyscallTable
from llmos.errors import GenerationError, NoSuchProcess, UserError
from llmos.kernel import registry
from llmos.kernel.chat import Message, choose_format, render_chat, resolve_format
from llmos.kernel.engine import EngineCore, Generation
from llmos.kernel.models import ModelEntry, ModelLibrary, ModelManager
from llmos.kernel.proctable import ProcTable
from llmos.kernel.routing import Needs, choose
from llmos.kernel.services import Services
from llmos.memory.fs import MemoryFS
from llmos.memory.index import Embedder
from llmos.memory.service import open_embedder, open_memory

T = TypeVar("T")
log = logging.getLogger("llmos.kernel")
DEFAULT_CAPS = frozenset({"llm.*", "time.*", "calc", "text.*", "proc.ps", "sys.*"})
ProcessListener = Callable[[Process, str], None]
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # llmos/


def _is_ours(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def program_traceback(exc: BaseException) -> str:
    """A crashed program's traceback without llmos's own frames (the kernel's task, the
    syscall proxy and table, a tool's internals): the program's author can act on their
    frames only, and the last line still names the error. A program that is itself part of
    llmos (a built-in) keeps every frame; the process's log always does."""
    top = traceback.TracebackException.from_exception(exc)
    if all(_is_ours(f.filename) for f in top.stack):
        return "".join(top.format())
    todo, seen = [top], set()
    while todo:  # the exception, its cause/context chain, and any group members
        te = todo.pop()
        if id(te) in seen:
            continue
        seen.add(id(te))
        te.stack = traceback.StackSummary.from_list(
            [f for f in te.stack if not _is_ours(f.filename)]
        )
        todo.extend(t for t in (te.__cause__, te.__context__) if t is not None)
        todo.extend(getattr(te, "exceptions", None) or [])
    return "".join(top.format())


class Kernel:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend_factory: Callable[..., Any] | None = None,
        syscall_modules: Iterable[Any] | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self._services = Services(self)
        if embedder is not None:  # a test's (or an embedder shared with another kernel)
            self._services.provide(open_embedder, embedder)
        self.library = ModelLibrary(self.settings.data_dir)
        self._backend_factory = backend_factory
        self.syscalls = SyscallTable(policy=dict(self.settings.approvals))
        self.procs: dict[int, Process] = {}
        self._pids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[ProcessListener] = []
        self._syscall_modules = syscall_modules
        self.proctable: ProcTable | None = None  # the persistent process table and audit log
        self.programs: dict[str, Program] = {}  # named programs `proc.spawn` may start
        self.booted = False
        self.boot_time = time.time()
        # Reaped processes kept in `procs` for `ps`/`wait`, oldest first; older ones live
        # on in the SQLite table only, so a long-running daemon does not grow without bound.
        self.keep_reaped = self.settings.keep_reaped
        self.shutdown_grace_s = 5.0  # how long shutdown waits for killed programs to unwind
        self._reaped: deque[int] = deque()

    # -- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Kernel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        if self.booted:
            return
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        for spec, plugin in registry.load_tools(self._syscall_modules or ()):
            try:
                self.syscalls.register(spec)
            except ValueError as exc:  # a plug-in can't take a name already registered
                if not plugin:
                    raise
                log.warning("tool plug-in: %s", exc)
        self.proctable = self.service(_open_proctable)
        self.syscalls.audit = self.proctable.audit
        for pname, prog in registry.load_programs().items():
            self.programs.setdefault(pname, prog)  # programs set before start() win
        for provide, plugin in registry.load_providers():  # syscalls known at run time (MCP)
            try:
                await provide(self)
            except Exception as exc:  # a plug-in's failure costs its own syscalls
                if not plugin:
                    raise
                log.warning("provider plug-in failed: %s: %s", type(exc).__name__, exc)
        self.booted = True

    async def shutdown(self) -> None:
        for proc in list(self.procs.values()):
            if proc.alive:
                self.signal(proc.pid, Signal.KILL, reason="kernel shutdown")
        if self._tasks:  # a program that swallows its cancellation can't hold the kernel
            _, stubborn = await asyncio.wait(list(self._tasks), timeout=self.shutdown_grace_s)
            for task in stubborn:
                task.cancel()
        self.syscalls.audit = None  # the process table closes with the other services
        await self._services.aclose_all()
        await asyncio.to_thread(self._services.close_all)
        self.proctable = None
        self.booted = False

    def service(self, open: Callable[[Any], T]) -> T:
        """The kernel's instance of a declared service, opened by `open(kernel)` on first
        use and closed at shutdown (see `llmos/kernel/services.py`)."""
        return self._services.get(open)

    @property
    def models(self) -> ModelManager:
        """The loaded models (a declared service: their engines stop at shutdown)."""
        return self.service(_open_models)

    @property
    def memory(self) -> MemoryFS:
        """The memory filesystem (a declared service: opened on first use)."""
        return self.service(open_memory)

    @property
    def embedder(self) -> Embedder:
        """The embedder the memory FS indexes with and `/v1/embeddings` serves."""
        return self.service(open_embedder)

    # -- events -------------------------------------------------------------------------
    def listen(self, fn: ProcessListener) -> Callable[[], None]:
        """Call `fn(process, event)` on spawn/state/exit; returns an unsubscribe function."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def _emit(self, proc: Process, event: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(proc, event)
            except Exception:  # a listener's bug must not break the kernel
                pass

    def _set_state(self, proc: Process, state: ProcessState) -> None:
        if proc.state is state or (state.alive and not proc.state.alive):
            return  # the dead stay dead (a KILLed program may still be unwinding)
        proc.state = state
        if state is ProcessState.EXITED:
            self._reap(proc)
        self._emit(proc, "state")

    def _reap(self, proc: Process) -> None:
        if self.proctable is not None:  # the table says reaped too, not zombie
            self.proctable.upsert(proc)
        self._reaped.append(proc.pid)
        while len(self._reaped) > self.keep_reaped:
            pid = self._reaped.popleft()
            old = self.procs.get(pid)
            if old is not None and old.state is ProcessState.EXITED:
                del self.procs[pid]

    # -- processes ----------------------------------------------------------------------
    async def spawn(
        self,
        program: Program | str,
        *args: Any,
        name: str | None = None,
        caps: Iterable[str] | None = None,
        nice: int = 0,
        model: str | None = None,
        parent: int | None = None,
        budgets: Budgets | dict[str, Any] | None = None,
    ) -> Process:
        """Start `program(ctx, *args)` as a new process.

        `caps` are its capability grants (default: DEFAULT_CAPS); `budgets` its limits."""
        if not self.booted:
            await self.start()
        if isinstance(program, str):
            program = self._named_program(program)
        try:
            limits = Budgets.parse(budgets)
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad budgets: {exc}") from None
        pid = next(self._pids)
        boot = self.proctable.boot if self.proctable is not None else 0
        log_path = self.settings.data_dir / "logs" / f"{boot}-{pid}.log"
        proc = Process(
            pid=pid, name=name or str(getattr(program, "__name__", "proc")), program=program,
            args=args, parent=parent, nice=nice, model=model,
            caps=frozenset(DEFAULT_CAPS if caps is None else caps), budgets=limits,
            stdout=OutputStream(log_path=log_path), log_path=log_path,
            stderr=OutputStream(log_path=log_path.with_suffix(".err.log")),
            program_ref=registry.program_ref(program),
        )  # fmt: skip
        self.procs[pid] = proc
        if parent is not None and parent in self.procs:
            self.procs[parent].children.append(pid)
        proc.state = ProcessState.READY
        if self.proctable is not None:
            self.proctable.upsert(proc)
        self._emit(proc, "spawn")
        task = asyncio.get_running_loop().create_task(self._run(proc), name=f"pid-{pid}")
        proc.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return proc

    async def _run(self, proc: Process) -> None:
        ctx = Context(self, proc)
        if not proc.alive:  # killed before its task first ran
            return
        self._set_state(proc, ProcessState.RUNNING)
        if self.proctable is not None:
            self.proctable.mark(self.proctable.boot, proc.pid, ProcessState.RUNNING.value)
        code, reason = 0, "exit"
        timer = None
        if proc.budgets.wall_time_s is not None:
            timer = asyncio.get_running_loop().call_later(
                proc.budgets.wall_time_s,
                self.over_budget, proc, f"wall time {proc.budgets.wall_time_s} s",
            )  # fmt: skip
        try:
            result = await proc.program(ctx, *proc.args)
            proc.result = result
            if isinstance(result, int) and not isinstance(result, bool):
                code = result
        except asyncio.CancelledError:
            code = -Signal.TERM.value
            reason = proc.term_reason or "terminated"
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:
            if proc.alive:  # a KILLed program's unwinding errors are nobody's business
                proc.error = program_traceback(exc)
                line = f"\n[pid {proc.pid} crashed: {type(exc).__name__}: {exc}]\n"
                proc.stdout.write(line)  # where it was always shown
                proc.stdout.write_log(traceback.format_exc())  # the log keeps every frame
                proc.stderr.write(line.lstrip("\n") + proc.error)
            code, reason = 1, "crashed"
        finally:
            if timer is not None:
                timer.cancel()
            self._end_generations(proc)
        self._finish(proc, code, reason)

    def _finish(self, proc: Process, code: int, reason: str) -> None:
        """End a process: exit status, state, orphans, streams, waiters, table. Once only:
        a KILL ends the process here at once, before its task has finished unwinding."""
        if proc._done.is_set():
            return
        self._end_generations(proc)
        proc.exit_code = code
        proc.exit_reason = reason
        proc.ended = time.time()
        parent = self.procs.get(proc.parent) if proc.parent is not None else None
        self._set_state(
            proc,
            ProcessState.ZOMBIE if parent is not None and parent.alive else ProcessState.EXITED,
        )
        # Orphans: the kernel reaps this process's ended children and adopts its live ones.
        for cpid in proc.children:
            child = self.procs.get(cpid)
            if child is None:
                continue
            child.parent = None
            if child.state is ProcessState.ZOMBIE:
                self._set_state(child, ProcessState.EXITED)
        if proc.scratch is not None:
            import shutil

            shutil.rmtree(proc.scratch, ignore_errors=True)
        proc.stdout.close()
        proc.stderr.close()
        proc._runnable.set()
        proc._done.set()
        if self.proctable is not None:
            self.proctable.upsert(proc)
            self.proctable.flush()
        self._emit(proc, "exit")

    def get(self, pid: int) -> Process:
        proc = self.procs.get(pid)
        if proc is None:
            raise NoSuchProcess(f"no process {pid}")
        return proc

    async def wait(self, pid: int) -> int:
        if pid not in self.procs and self.proctable is not None:
            row = self.proctable.row(pid)  # ended and dropped from memory (`keep_reaped`)
            if row is not None and row["exit_code"] is not None:
                return int(row["exit_code"])
        proc = self.get(pid)
        code = await proc.wait()
        if proc.state is ProcessState.ZOMBIE:
            self._set_state(proc, ProcessState.EXITED)  # reaped
        return code

    def signal(self, pid: int, sig: Signal | str | int, *, reason: str | None = None) -> None:
        proc = self.get(pid)
        sig = Signal.parse(sig)
        if not proc.alive:
            return
        if sig is Signal.KILL:
            # Immediate: the process is dead now, whatever its program does with the
            # cancellation; its later syscalls fail (`Context.call`).
            self._finish(proc, -Signal.KILL.value, reason or "killed")
            if proc.task is not None:
                proc.task.cancel()
        elif sig is Signal.TERM:
            # Cooperative: the program sees CancelledError (or `ctx.terminating`) and may
            # clean up; it exits with -15 unless it returns a code of its own.
            proc.terminating = True
            proc.term_reason = reason or "terminated"
            proc._runnable.set()
            if proc.task is not None:
                proc.task.cancel()
        elif sig is Signal.STOP:
            proc._runnable.clear()
            for eng, sid in list(proc.generations):
                eng.pause(sid)
            self._set_state(proc, ProcessState.STOPPED)
            if self.proctable is not None:
                self.proctable.mark(self.proctable.boot, proc.pid, proc.state.value)
        elif sig is Signal.CONT:
            proc._runnable.set()
            for eng, sid in list(proc.generations):
                eng.resume(sid)
            self._set_state(
                proc, ProcessState.BLOCKED if proc.generations else ProcessState.RUNNING
            )
            if self.proctable is not None:
                self.proctable.mark(self.proctable.boot, proc.pid, ProcessState.RUNNING.value)

    def over_budget(self, proc: Process, what: str) -> None:
        """Kill a process that went over one of its budgets, saying which."""
        if proc.alive:
            line = f"[pid {proc.pid} killed: over budget: {what}]\n"
            proc.stdout.write("\n" + line)  # where it was always shown
            proc.stderr.write(line)
            self.signal(proc.pid, Signal.KILL, reason=f"budget: {what}")

    def _named_program(self, name: str) -> Program:
        prog = self.programs.get(name)
        if prog is None:
            raise NoSuchProcess(
                f"no program named {name!r} (known: {', '.join(sorted(self.programs))})"
            )
        return prog

    def history(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Process rows from the persistent table, this boot's and earlier ones'."""
        return self.proctable.history(limit=limit) if self.proctable is not None else []

    async def restart_lost(self, boot: int, pid: int) -> Process:
        """Start again a process an earlier kernel lost, from its persisted row."""
        import json

        assert self.proctable is not None
        rows = [r for r in self.proctable.lost() if r["boot"] == boot and r["pid"] == pid]
        if not rows:
            raise NoSuchProcess(f"no lost process {pid} from boot {boot}")
        row = rows[0]
        program = registry.resolve_program(row["program"], self.programs)
        proc = await self.spawn(
            program, *json.loads(row["args"] or "[]"), name=row["name"],
            caps=json.loads(row["caps"] or "[]"), model=row["model"],
            budgets=json.loads(row["budgets"] or "{}"),
        )  # fmt: skip
        self.proctable.mark(boot, pid, "restarted")
        return proc

    def renice(self, pid: int, nice: int) -> None:
        proc = self.get(pid)
        proc.nice = nice
        for eng, sid in list(proc.generations):
            eng.renice(sid, nice)

    def _end_generations(self, proc: Process) -> None:
        for eng, sid in list(proc.generations):
            eng.kill(sid)
        proc.generations.clear()

    def ps(self) -> list[dict[str, Any]]:
        """Per-process rows: state, priority, model, tokens, tok/s, queue wait, TTFT, swaps."""
        return [p.info() for p in self.procs.values()]

    def top(self) -> dict[str, Any]:
        """Kernel-wide figures: per loaded model, active sequences, KV cells, steps/s."""
        return {
            "processes": sum(1 for p in self.procs.values() if p.alive),
            "models": [lm.engine.snapshot() for lm in list(self.models.loaded.values())]
            + [eng.snapshot() for eng in list(self.models.remotes.values())],
        }

    # -- generation ---------------------------------------------------------------------
    async def engine(
        self, model: str | None = None, *, progress: Callable[[float], None] | None = None
    ) -> EngineCore:
        """The engine of a model, loading it in a worker thread if needed.

        `progress(fraction)` is called from the loading thread while weights load."""
        name, _ = self.split_model(model)
        lm = self.models.loaded.get(name)
        if lm is not None:
            lm.last_used = time.monotonic()
            return lm.engine
        return await asyncio.to_thread(self.models.get, name, progress=progress)

    def split_model(self, model: str | None) -> tuple[str, ModelEntry | None]:
        """A model id as (the model whose engine runs it, the LoRA adapter to apply):
        `base+adapter`, an adapter's own name, or a plain model (no adapter)."""
        name = model or self.settings.default_model
        if name in self.models.loaded:
            return name, None
        return self.library.resolve(name)

    async def render_chat(
        self, messages: list[Message], model: str | None = None, *, chat_format: str | None = None
    ) -> list[int] | list[Message]:
        """Prompt tokens for a conversation, from the model's own chat template unless a
        format is given (per call, or per model in the `chat_formats` setting); a GGUF
        without a template uses its family's well-known format where there is one. A
        remote model gets the messages themselves (its server applies its template)."""
        name = model or self.settings.default_model
        if name in self.settings.routes or self.models.remote(name) is not None:
            return messages  # rendered for the model a route picks, or by the remote server
        engine = await self.engine(model)
        text, add_special = self.chat_text(engine, messages, chat_format=chat_format)
        return engine.backend.tokenize(text, add_special=add_special)

    def chat_text(
        self,
        engine: EngineCore,
        messages: list[Message],
        *,
        chat_format: str | None = None,
        add_generation_prompt: bool = True,
    ) -> tuple[str, bool]:
        """A conversation as `engine`'s model reads it: the text, and whether tokenizing it
        adds the special tokens (False when the template wrote BOS itself)."""
        backend = engine.backend
        special = backend.special_tokens()
        gguf_template = backend.chat_template()
        fmt = choose_format(
            requested=chat_format,
            configured=self.settings.chat_formats.get(engine.name),
            has_template=gguf_template is not None,
            architecture=backend.architecture(),
        )
        template = resolve_format(fmt.spec) if fmt.spec else gguf_template
        text = render_chat(
            messages, template, special=special, model=engine.name,
            add_generation_prompt=add_generation_prompt,
        )  # fmt: skip
        bos = special.get("bos_token")
        return text, not (bos and text.startswith(bos))

    async def generate(
        self,
        proc: Process,
        prompt: str | list[int] | list[Message],
        params: SamplingParams | None = None,
        *,
        model: str | None = None,
        stream: bool = True,
    ) -> Generation:
        """Generate for a process on the shared engine (or a remote model's), streaming to
        its stdout. A route's name (the `routes` setting) picks the model (`route`); when
        the one picked fails before any output, the next candidate serves."""
        name = model or proc.model or self.settings.default_model
        if name not in self.settings.routes:
            return await self._generate_on(proc, prompt, params, name, stream)
        candidates, why = self.route(name, proc.nice, self.needs(name, prompt, params))
        for i, chosen in enumerate(candidates):
            target = prompt
            if _is_messages(prompt) and self.models.remote(chosen) is None:
                target = await self.render_chat(cast(list[Message], prompt), chosen)
            proc.last_route = why if i == 0 else f"{why}; {candidates[i - 1]} failed"
            before = proc.tokens
            try:
                return await self._generate_on(proc, target, params, chosen, stream)
            except GenerationError as exc:
                if proc.tokens != before or i + 1 == len(candidates) or isinstance(exc, UserError):
                    # output went out (it cannot move), nothing is left to try, or the
                    # request itself is at fault (a grammar no model could parse)
                    raise
                log.info(
                    "route %s: %s failed (%s); trying %s", name, chosen, exc, candidates[i + 1]
                )
        raise AssertionError("unreachable: route() returns at least one candidate")

    def route(self, name: str, nice: int, needs: Needs | None = None) -> tuple[list[str], str]:
        """The models of route `name` to try for a request at `nice` that needs `needs`, in
        order, and why (the policy: kernel/routing.py). Deterministic given its inputs."""
        s = self.settings
        models = list(s.routes[name])
        fits = {m: self.models.fit(m) for m in models}
        return choose(
            name, models, fits, needs or Needs(tokens=0),
            nice=nice, low_nice=s.route_low_nice, queue_limit=s.route_queue_limit,
        )  # fmt: skip

    def needs(
        self, route: str, prompt: str | list[int] | list[Message], params: SamplingParams | None
    ) -> Needs:
        """What a request asks of the model a route picks. A text's tokens are counted by
        the first of the route's local models that is loaded, else estimated at four bytes
        a token; a conversation adds four a message for its template."""
        p = params or SamplingParams()
        chat = _is_messages(prompt)
        if isinstance(prompt, list) and not chat:
            n, estimated = len(prompt), False
        else:
            msgs = cast(list[Message], prompt) if chat else []
            text = "\n".join(_text(m.get("content")) for m in msgs) if chat else str(prompt)
            models = self.settings.routes[route]
            lm = next((x for m in models if (x := self.models.loaded.get(m)) is not None), None)
            n = len(lm.engine.backend.tokenize(text)) if lm else len(text.encode()) // 4
            remote = any(self.models.remote(m) is not None for m in models)
            n, estimated = n + 4 * len(msgs), chat or lm is None or remote
        return Needs(
            tokens=n + (p.max_tokens or 1), chat=chat, grammar=p.grammar is not None,
            json_schema=p.json_schema is not None, estimated=estimated,
        )  # fmt: skip

    async def _generate_on(
        self,
        proc: Process,
        prompt: str | list[int] | list[Message],
        params: SamplingParams | None,
        model: str,
        stream: bool,
    ) -> Generation:
        base, adapter = self.split_model(model)
        engine: Any = self.models.remote(base) or await self.engine(base)
        proc.last_model = f"{engine.name}+{adapter.name}" if adapter else engine.name
        gen = engine.generate(
            prompt, params, nice=proc.nice, owner=proc.pid,
            adapter=str(adapter.path) if adapter else None,
        )  # fmt: skip
        key = (engine, gen.id)
        proc.generations.add(key)
        if not proc._runnable.is_set():
            engine.pause(gen.id)
        self._set_state(proc, ProcessState.BLOCKED)
        try:
            limit = proc.budgets.max_tokens
            async for chunk in gen:
                if stream:
                    proc.stdout.write(chunk)
                if limit is not None and proc.tokens + gen.stats.generated > limit:
                    self.over_budget(proc, f"max_tokens {limit}")
                    # Stop here: with the rest of the reply already queued the task may not
                    # suspend again, and a cancel that is never delivered kills nothing.
                    raise asyncio.CancelledError
        finally:
            proc.generations.discard(key)
            proc.tokens += gen.stats.generated
            proc.gen_stats.append(gen.stats)
            if proc.state is ProcessState.BLOCKED:
                self._set_state(proc, ProcessState.RUNNING)
        return gen


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return str(content or "")


def _is_messages(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)


# The kernel's own services (memory/service.py declares the memory FS and the embedder).
def _open_models(kernel: Kernel) -> ModelManager:
    return ModelManager(kernel.settings, kernel.library, backend_factory=kernel._backend_factory)


def _open_proctable(kernel: Kernel) -> ProcTable:
    return ProcTable(kernel.settings.data_dir / "kernel.db")
