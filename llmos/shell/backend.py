"""What the shell's commands act on: an embedded kernel, or a daemon over HTTP.

Both backends answer one interface (`Backend`), so every command is written once and the
shell never asks which backend it has: `LocalBackend` wraps a `Kernel` in this process
(approval dialogs, process events, KV figures); `RemoteBackend` wraps
`llmos.client.AsyncClient` (the daemon's approval policy decides, the process panel is
polled). What differs between them is a method or property here. Errors come out as
`CommandError` or `LlmosError`, shown by the shell as one `error:` line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmos.config import Settings
from llmos.core.process import ProcessState
from llmos.errors import LlmosError

# The person at the shell owns the memory FS (as the server's trusted caller does); other
# syscalls run with exactly their own capability (llmos.kernel.oneshot decides both).

REMOTE_APPROVAL = "approval follows the daemon's policy"

# The syscall table's approver: (ctx, spec, validated args) -> approved?
Approver = Callable[[Any, Any, dict[str, Any]], Awaitable[bool]]
# Called on each process event (the process, the event's name).
ProcessListener = Callable[[Any, str], None]


class CommandError(Exception):
    """A command's failure, shown as one `error:` line."""


@dataclass(frozen=True)
class Ended:
    """How a process ended: its exit code, the reason, and a one-line message if it failed."""

    code: int
    reason: str | None = None
    message: str | None = None

    @property
    def stopped(self) -> bool:
        """Ended by a signal (Ctrl+C, kill), not by its own doing."""
        return self.code < 0 or self.reason in ("killed", "terminated", "cancelled")


@dataclass(frozen=True)
class Ask:
    """One capability an app asks for: its name, the manifest's one-line reason, its risk."""

    cap: str
    reason: str
    risk: str


@dataclass
class AppReview:
    """An app about to be installed, for the grant dialog: what it is and what it asks for.
    `source` is what the install is given (the daemon reads it); `staged` is the local
    backend's checked copy, discarded by `app_discard` whatever the answer."""

    name: str
    version: str
    author: str
    description: str
    source: str
    asks: list[Ask]
    entries: dict[str, str]
    staged: Any = None


def _review_of(manifest: Any, source: str, staged: Any = None) -> AppReview:
    from llmos.apps.store import capability_risk, known_capabilities

    known = known_capabilities()
    asks = [
        Ask(cap, reason, capability_risk(cap, known) or "unknown")
        for cap, reason in manifest.capabilities.items()
    ]
    entries = {k: e.description for k, e in manifest.entries.items()}
    return AppReview(
        manifest.name, manifest.version, manifest.author, manifest.description, source, asks,
        entries, staged,
    )  # fmt: skip


def _app_row(app: Any) -> dict[str, Any]:
    """An installed app as `GET /v1/apps` lists it (so both backends answer alike)."""
    m = app.manifest
    return {
        "name": app.name, "version": m.version, "description": m.description,
        "granted": list(app.granted), "requested": dict(m.capabilities),
        "entries": {k: e.description for k, e in m.entries.items()},
    }  # fmt: skip


def row_alive(row: dict[str, Any]) -> bool:
    """Whether a `ps` row (local or the daemon's) is a live process."""
    return ProcessState(row["state"]).alive


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


class Backend(Protocol):
    """What the shell acts on. Process rows are `ps` dicts (pid, name, state, nice, model,
    tokens, tok_s, wait_s, exit_code); memory-FS results are the `fs.*` syscalls' own."""

    where: str
    # Seconds between fetches of the process rows; None: `attach`'s listener hears every
    # process event, so the shell redraws on events and never polls.
    poll_s: float | None
    # Whether the shell loads the default model at start (showing progress); False: the
    # other side loads models on demand, so the shell is ready at once.
    preload_model: bool

    @property
    def kernel(self) -> Any:
        """The embedded kernel; CommandError where there is none."""

    @property
    def started(self) -> bool: ...

    @property
    def notice(self) -> str | None:
        """A line on how this backend differs from the shell's defaults (who approves),
        for the status bar once started and for `help`; None: nothing to say."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    def attach(self, approver: Approver, listener: ProcessListener) -> Callable[[], None]:
        """Route approval requests to `approver` and process events to `listener`, where
        the backend has them; returns the function that undoes both."""

    def describe(self, memory_mb: Callable[[], float]) -> str:
        """The status bar's last part: what the kernel holds, or where it is."""

    async def load_model(self, name: str, progress: Callable[[float], None]) -> None: ...
    async def unload_model(self, name: str) -> None: ...
    async def models(self) -> list[tuple[str, str, bool]]: ...
    async def poll(self) -> None: ...
    def rows(self) -> list[dict[str, Any]]: ...
    def engines(self) -> list[dict[str, Any]]: ...
    async def ps(self) -> list[dict[str, Any]]: ...
    async def top(self) -> dict[str, Any]: ...
    def pids(self) -> list[int]: ...

    def alive(self, pid: int) -> bool:
        """Whether the process may still be running (so a signal may reach it)."""

    async def check(self, pid: int) -> None: ...
    async def signal(self, pid: int, sig: str, reason: str | None = None) -> None: ...
    async def renice(self, pid: int, nice: int) -> None: ...

    def programs(self) -> str:
        """The programs `spawn` can start, as a line for a usage error."""

    async def spawn(self, program: str, *args: Any, name: str, model: str | None) -> int: ...
    async def run_file(self, path: str, args: list[str], model: str | None) -> int: ...
    def follow(self, pid: int) -> AsyncIterator[str]: ...
    async def wait(self, pid: int) -> Ended: ...
    async def state(self, pid: int) -> str: ...
    async def logs(self, pid: int) -> str: ...
    async def syscall(self, name: str, args: dict[str, Any]) -> Any: ...

    # Apps (docs/APPS.md): rows as `GET /v1/apps` lists them (name, version, description,
    # granted, requested {cap: reason}, entries {entry: description}).
    async def apps(self) -> list[dict[str, Any]]: ...

    async def app_search(self, words: list[str]) -> list[dict[str, Any]]:
        """The index's matches: name, version, description, source, origin."""

    async def app_review(self, source: str) -> AppReview:
        """Fetch and check the app `source` names (a path or an index name) for the grant
        dialog; an app already installed is an error here, before anyone is asked."""

    async def app_install(self, review: AppReview, grant: list[str]) -> dict[str, Any]:
        """Install the reviewed app holding exactly `grant` (the rest it asks for denied)."""

    async def app_discard(self, review: AppReview) -> None:
        """Drop what `app_review` fetched (nothing left once installed)."""

    async def app_run(self, name: str, entry: str | None, args: list[str]) -> int:
        """Start an app's entry as `llmos app run` does (llmos/apps/launch.py): a process
        named after it holding exactly its grants, with its manifest's model, its entries
        programs `APP.ENTRY`; returns the pid."""

    async def app_remove(self, name: str, purge: bool) -> bool:
        """Uninstall; `purge` also deletes /home/NAME. True if a home was removed."""


class LocalBackend:
    """The kernel in this process."""

    where = "local kernel"
    poll_s: float | None = None  # the kernel's process events redraw the panel
    preload_model = True
    notice = None  # approvals: the shell's own dialogs

    def __init__(self, settings: Settings, kernel: Any = None) -> None:
        self.settings = settings
        self._kernel = kernel
        self.own_kernel = kernel is None

    @property
    def kernel(self) -> Any:
        if self._kernel is None:
            from llmos.kernel.kernel import Kernel

            self._kernel = Kernel(self.settings)
        return self._kernel

    @property
    def started(self) -> bool:
        return self._kernel is not None

    async def start(self) -> None:
        await self.kernel.start()

    async def close(self) -> None:
        if self.own_kernel and self._kernel is not None:
            await self._kernel.shutdown()

    def attach(self, approver: Approver, listener: ProcessListener) -> Callable[[], None]:
        syscalls = self.kernel.syscalls
        syscalls.approver = approver
        unlisten = self.kernel.listen(listener)

        def detach() -> None:
            unlisten()
            if syscalls.approver == approver:  # not one another shell set meanwhile
                syscalls.approver = None

        return detach

    def describe(self, memory_mb: Callable[[], float]) -> str:
        snaps = self.engines()
        kv = sum(s.get("kv_cells_used", 0) for s in snaps)  # (a remote model has none)
        kv_all = sum(s.get("kv_cells", 0) for s in snaps)
        return f"KV {kv}/{kv_all} | mem {memory_mb():.0f} MB"

    async def load_model(self, name: str, progress: Callable[[float], None]) -> None:
        await self.kernel.engine(name, progress=progress)

    async def unload_model(self, name: str) -> None:
        await asyncio.to_thread(self.kernel.models.unload, name)

    async def models(self) -> list[tuple[str, str, bool]]:
        """(name, file, loaded) for every model the library knows."""
        loaded = set(self.kernel.models.loaded)
        return [(e.name, e.path.name, e.name in loaded) for e in self.kernel.library.list()]

    # -- processes ---------------------------------------------------------------------
    async def poll(self) -> None:
        """Nothing to fetch: the rows are read from the kernel when drawn."""

    def rows(self) -> list[dict[str, Any]]:
        return self.kernel.ps()  # type: ignore[no-any-return]

    def engines(self) -> list[dict[str, Any]]:
        return self.kernel.top()["models"]  # type: ignore[no-any-return]

    async def ps(self) -> list[dict[str, Any]]:
        return self.rows()

    async def top(self) -> dict[str, Any]:
        return self.kernel.top()  # type: ignore[no-any-return]

    def pids(self) -> list[int]:
        return list(self.kernel.procs)

    def alive(self, pid: int) -> bool:
        proc = self.kernel.procs.get(pid)
        return proc is not None and proc.alive

    async def check(self, pid: int) -> None:
        self.kernel.get(pid)  # NoSuchProcess if unknown

    async def signal(self, pid: int, sig: str, reason: str | None = None) -> None:
        try:
            self.kernel.signal(pid, sig, reason=reason)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    async def renice(self, pid: int, nice: int) -> None:
        self.kernel.renice(pid, nice)

    def programs(self) -> str:
        return ", ".join(sorted(self.kernel.programs)) or "none"

    async def spawn(self, program: str, *args: Any, name: str, model: str | None) -> int:
        if program not in self.kernel.programs:
            raise CommandError(
                f"not available: no program named {program!r} (programs: {self.programs()})"
            )
        proc = await self.kernel.spawn(program, *args, name=name, model=model)
        return int(proc.pid)

    async def run_file(self, path: str, args: list[str], model: str | None) -> int:
        from llmos.kernel.loader import ProgramError, load_program

        try:
            main = load_program(path)
        except ProgramError as exc:
            raise CommandError(str(exc)) from None
        proc = await self.kernel.spawn(main, *args, name=Path(path).stem, model=model)
        return int(proc.pid)

    async def follow(self, pid: int) -> AsyncIterator[str]:
        async for chunk in self.kernel.get(pid).stdout.follow():
            yield chunk

    async def wait(self, pid: int) -> Ended:
        code = await self.kernel.wait(pid)
        proc = self.kernel.get(pid)
        return Ended(code, proc.exit_reason, proc.message)

    async def state(self, pid: int) -> str:
        return str(self.kernel.get(pid).state.value)

    async def logs(self, pid: int) -> str:
        proc = self.kernel.get(pid)
        text = str(proc.stdout.getvalue())
        if not text and proc.log_path is not None and proc.log_path.is_file():
            text = proc.log_path.read_text(encoding="utf-8", errors="replace")
        return text

    # -- syscalls ----------------------------------------------------------------------
    def has_syscall(self, name: str) -> bool:
        return name in self.kernel.syscalls.specs

    async def syscall(self, name: str, args: dict[str, Any]) -> Any:
        """One syscall in its own process with just that capability (memory-FS calls: the
        shell user's), so permissions, approval and audit apply as to any agent."""
        from llmos.kernel.oneshot import run_syscall

        # A command typed before the boot after the first frame has run boots the kernel
        # itself (start is idempotent), so its syscalls are registered when it looks.
        await self.kernel.start()
        spec = self.kernel.syscalls.specs.get(name)
        if spec is None:
            raise CommandError(
                f"not available: the kernel has no {name} syscall (its subsystem is not installed)"
            )
        fields = spec.args_model.model_fields
        unknown = [k for k, v in args.items() if k not in fields and v is not None]
        if unknown:
            raise CommandError(f"{name} takes no {', '.join(unknown)}: {spec.signature()}")
        return await run_syscall(self.kernel, name, args, label=f"sh:{name}")

    # -- apps --------------------------------------------------------------------------
    def _store(self) -> Any:
        from llmos.apps.store import AppStore

        return AppStore(self.settings.data_dir)

    async def apps(self) -> list[dict[str, Any]]:
        return [_app_row(a) for a in await asyncio.to_thread(self._store().list)]

    async def app_search(self, words: list[str]) -> list[dict[str, Any]]:
        from llmos.apps.index import search

        found = await asyncio.to_thread(search, words, self.settings.app_index)
        keys = ("name", "version", "description", "source", "origin")
        return [{k: getattr(x, k) for k in keys} for x in found]

    async def app_review(self, source: str) -> AppReview:
        # Fetching (an index URL, a git clone) and checking (importing each entry) block:
        # they run in a thread so the shell stays responsive.
        staged = await asyncio.to_thread(self._stage, source)
        try:
            if (self._store().root / staged.manifest.name).exists():
                raise CommandError(
                    f"{staged.manifest.name} is already installed (app remove it first, or "
                    f"llmos app update {staged.manifest.name})"
                )
            return await asyncio.to_thread(_review_of, staged.manifest, source, staged)
        except BaseException:
            staged.discard()
            raise

    def _stage(self, source: str) -> Any:
        from llmos.apps.index import materialize

        store = self._store()
        with materialize(source, self.settings.app_index) as local:
            return store.stage(local.path, record=local.record)

    async def app_install(self, review: AppReview, grant: list[str]) -> dict[str, Any]:
        from llmos.apps.store import decide

        requested = [a.cap for a in review.asks]
        decision = decide(requested, grant=grant, deny=[c for c in requested if c not in grant])
        installed = await asyncio.to_thread(self._store().install, review.staged, decision)
        return _app_row(installed)

    async def app_discard(self, review: AppReview) -> None:
        if review.staged is not None:
            review.staged.discard()

    async def app_run(self, name: str, entry: str | None, args: list[str]) -> int:
        from llmos.apps.launch import load_entries, spawn_app
        from llmos.kernel.loader import ProgramError

        app = self._store().get(name)
        try:
            main, programs = await asyncio.to_thread(load_entries, app, entry)
        except ProgramError as exc:
            raise CommandError(str(exc)) from None
        proc = await spawn_app(self.kernel, app, main, programs, args)
        return int(proc.pid)

    async def app_remove(self, name: str, purge: bool) -> bool:
        await asyncio.to_thread(self._store().remove, name)
        if not purge:
            return False
        # Through the kernel's own memory FS (the shell user's fs.rm, audited), not a second
        # handle on its SQLite store as `llmos app remove --purge` opens.
        home = f"/home/{name}"
        entries = await self.syscall("fs.ls", {"path": "/home"})
        if not any(e["path"] == home for e in entries):
            return False
        await self.syscall("fs.rm", {"path": home, "recursive": True})
        return True


class RemoteBackend:
    """A running daemon (`llmos serve`), through the async client."""

    started = True
    poll_s: float | None = 1.0  # the daemon sends no process events to a shell
    preload_model = False  # the daemon loads models on demand

    def __init__(
        self, url: str, *, api_key: str | None = None, client: Any = None, app_index: str = ""
    ) -> None:
        from llmos.client import AsyncClient

        self.where = url
        self.app_index = app_index  # where `app install NAME` reads the manifest to review
        self.client = client or AsyncClient(url, api_key=api_key)
        self._rows: list[dict[str, Any]] = []
        self._loaded: list[str] = []

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The daemon's errors, and a daemon gone, as one-line command errors."""
        import httpx

        from llmos.client import ApiError

        try:
            yield
        except ApiError as exc:
            raise CommandError(exc.message) from None
        except httpx.HTTPError as exc:
            raise CommandError(f"daemon unreachable at {self.where}: {exc}") from None

    async def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        with self._errors():
            return await fn(*args, **kw)

    @property
    def kernel(self) -> Any:
        raise CommandError(f"no local kernel: this shell is connected to {self.where}")

    @property
    def notice(self) -> str:
        return f"connected to the daemon at {self.where}: {REMOTE_APPROVAL}"

    async def start(self) -> None:
        await self.poll()

    async def close(self) -> None:
        await self.client.aclose()

    def attach(self, approver: Approver, listener: ProcessListener) -> Callable[[], None]:
        # Nothing to route: the daemon's own policy answers approvals (there is nobody to
        # ask there), and its process rows are polled every `poll_s`.
        return lambda: None

    def describe(self, memory_mb: Callable[[], float]) -> str:
        # The daemon serves no KV figures, and this process's memory is not the kernel's.
        return f"daemon {self.where}"

    async def load_model(self, name: str, progress: Callable[[float], None]) -> None:
        self._loaded = await self._call(self.client.load_model, name)

    async def unload_model(self, name: str) -> None:
        self._loaded = await self._call(self.client.unload_model, name)

    async def models(self) -> list[tuple[str, str, bool]]:
        names = await self._call(self.client.models)
        await self.poll()
        return [(n, "", n in self._loaded) for n in names]

    # -- processes ---------------------------------------------------------------------
    async def poll(self) -> None:
        """Fetch the process rows and the loaded models (the panel draws these)."""
        self._rows = await self._call(self.client.ps)
        self._loaded = list((await self._call(self.client.health)).get("models_loaded", []))

    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def engines(self) -> list[dict[str, Any]]:
        return [{"model": m} for m in self._loaded]  # the daemon serves no engine figures

    async def ps(self) -> list[dict[str, Any]]:
        await self.poll()
        return self._rows

    async def top(self) -> dict[str, Any]:
        await self.poll()
        live = sum(1 for r in self._rows if row_alive(r))
        return {"processes": live, "models": self.engines()}

    def pids(self) -> list[int]:
        return [int(r["pid"]) for r in self._rows]

    def alive(self, pid: int) -> bool:
        # Rows polled a moment ago may not show a process spawned since: only a row that
        # shows it ended says it is not alive.
        return not any(r["pid"] == pid and not row_alive(r) for r in self._rows)

    async def check(self, pid: int) -> None:
        await self._call(self.client.get, pid)

    async def signal(self, pid: int, sig: str, reason: str | None = None) -> None:
        await self._call(self.client.kill, pid, sig)

    async def renice(self, pid: int, nice: int) -> None:
        await self._call(self.client.nice, pid, nice)

    def programs(self) -> str:
        return "assistant, react, rag, ... as the daemon has them"  # it names them on a miss

    async def spawn(self, program: str, *args: Any, name: str, model: str | None) -> int:
        from llmos.client import ApiError

        try:
            info = await self.client.spawn(program, *args, name=name, model=model)
        except ApiError as exc:
            if exc.status == 404 and "program" in exc.message:
                raise CommandError(f"not available: {exc.message}") from None
            raise CommandError(exc.message) from None
        return int(info["pid"])

    async def run_file(self, path: str, args: list[str], model: str | None) -> int:
        # The daemon loads the file itself (it runs on this machine when connected locally).
        info = await self._call(self.client.spawn, None, *args, path=_absolute(path), model=model)
        return int(info["pid"])

    async def follow(self, pid: int) -> AsyncIterator[str]:
        with self._errors():
            async for chunk in self.client.follow(pid):
                yield chunk

    async def wait(self, pid: int) -> Ended:
        while True:  # the daemon caps one wait; a long answer takes several
            info = await self._call(self.client.wait, pid, 300.0)
            if info["exit_code"] is not None:
                break
        code = int(info["exit_code"])
        message = None
        if code != 0:
            message = info.get("message") or f"pid {pid} ended: {info['exit_reason'] or code}"
        return Ended(code, info["exit_reason"], message)

    async def state(self, pid: int) -> str:
        return str((await self._call(self.client.get, pid))["state"])

    async def logs(self, pid: int) -> str:
        return str(await self._call(self.client.logs, pid))

    # -- syscalls ----------------------------------------------------------------------
    def has_syscall(self, name: str) -> bool:
        return True  # the daemon answers for its own table

    async def syscall(self, name: str, args: dict[str, Any]) -> Any:
        from llmos.client import ApiError

        call = {k: v for k, v in args.items() if v is not None}
        try:
            return await self.client.syscall(name, **call)
        except ApiError as exc:
            if exc.code in ("unknown_syscall", "not_available"):
                raise CommandError(f"not available: the daemon has no {name} syscall") from None
            raise CommandError(exc.message) from None

    # -- apps --------------------------------------------------------------------------
    # The daemon's /v1/apps endpoints; the client has no methods for them, so its one
    # request helper is used (errors come out as ApiError, as from its other methods).
    async def apps(self) -> list[dict[str, Any]]:
        return list((await self._call(self.client._call, "GET", "/v1/apps"))["apps"])

    async def app_search(self, words: list[str]) -> list[dict[str, Any]]:
        params = {"q": " ".join(words)}
        found = await self._call(self.client._call, "GET", "/v1/apps/search", params=params)
        return list(found["entries"])

    async def app_review(self, source: str) -> AppReview:
        # The daemon installs in one request with the grants in it, so the review reads the
        # manifest here: from the folder (or archive) when it is on this machine (the
        # daemon is handed its absolute path, as `run prog.py` is), else from this shell's
        # index. The daemon checks it again, and refuses grants it does not ask for.
        from llmos.apps.index import materialize
        from llmos.apps.manifest import load_manifest

        def read() -> tuple[Any, str]:
            with materialize(source, self.app_index) as local:
                manifest = load_manifest(local.path)
            return manifest, _absolute(source) if Path(source).expanduser().exists() else source

        try:
            manifest, sent = await asyncio.to_thread(read)
        except LlmosError as exc:
            raise CommandError(str(exc)) from None
        if any(a["name"] == manifest.name for a in await self.apps()):
            raise CommandError(f"{manifest.name} is already installed (app remove it first)")
        return await asyncio.to_thread(_review_of, manifest, sent)

    async def app_install(self, review: AppReview, grant: list[str]) -> dict[str, Any]:
        body = {"source": review.source, "grant": grant}
        return dict(await self._call(self.client._call, "POST", "/v1/apps", json=body))

    async def app_discard(self, review: AppReview) -> None:
        """Nothing was staged here: the daemon stages inside its install request."""

    async def app_run(self, name: str, entry: str | None, args: list[str]) -> int:
        body = {"entry": entry, "args": args}
        info = await self._call(self.client._call, "POST", f"/v1/apps/{name}/run", json=body)
        return int(info["pid"])

    async def app_remove(self, name: str, purge: bool) -> bool:
        params = {"purge": "true" if purge else "false"}
        out = await self._call(self.client._call, "DELETE", f"/v1/apps/{name}", params=params)
        return bool(out.get("purged", purge))
