"""`fs.*` syscalls over the kernel's MemoryFS.

Two gates, both needed: the process's capability grants name the path
(`fs.read:/home/self/**`, where `self` means the process's own name), and the path's owner
and mode admit the process (its name is its identity). Work that may embed runs in a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from llmos.core.context import Context
from llmos.core.syscall import AuditScope, capability_allows, syscall
from llmos.errors import PermissionDenied
from llmos.memory import prompts
from llmos.memory.core import core_append, core_read, core_replace
from llmos.memory.fs import MemoryFS
from llmos.memory.paths import normalize
from llmos.memory.service import open_memory


def _memory(ctx: Context) -> MemoryFS:
    """The kernel's filesystem, a declared service opened on first use (so a kernel that
    never touches memory never loads SQLite tables, Chroma or torch)."""
    return ctx.kernel.service(open_memory)


class _AuditedFS:
    """The kernel's filesystem as a built-in agent uses it on a process's behalf (the
    assistant's memory): each read, write and append is an audit row of that process,
    named `kernel:fs.read` and so on, with a digest of the path (`AuditScope`, as for the
    syscalls themselves)."""

    _AUDITED = frozenset({"read", "write", "append"})

    def __init__(self, fs: MemoryFS, ctx: Context) -> None:
        self._fs = fs
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        audit = self._ctx.kernel.syscalls.audit
        if name not in self._AUDITED or audit is None:
            return attr

        def call(path: str, *args: Any, **kw: Any) -> Any:
            with AuditScope(audit, self._ctx.pid, f"kernel:fs.{name}", {"path": path}):
                return attr(path, *args, **kw)

        return call


def audited_memory(ctx: Context) -> MemoryFS:
    """The kernel's filesystem for a process: what it reads and writes shows in the audit log."""
    return cast("MemoryFS", _AuditedFS(_memory(ctx), ctx))


def _user(ctx: Context) -> str:
    caps = ctx.process.caps
    return "root" if "*" in caps or "fs.*" in caps else ctx.process.name


def _gate(ctx: Context, capability: str, path: str) -> tuple[MemoryFS, str, str]:
    path = normalize(path)
    name = ctx.process.name
    grants = [g.replace("/home/self", f"/home/{name}") for g in ctx.process.caps]
    if not (
        capability_allows(grants, capability, path)
        or capability_allows(grants, capability, path.rstrip("/") + "/")  # a dir's own grant
    ):
        raise PermissionDenied(f"process {ctx.pid} may not {capability} {path}")
    return _memory(ctx), path, _user(ctx)


@syscall("fs.ls", capability="fs.read")
async def fs_ls(ctx: Context, path: str = "/") -> list[dict[str, Any]]:
    """List a directory: names with kind, owner, mode, size, version."""
    fs, p, user = _gate(ctx, "fs.read", path)
    return [s.as_dict() for s in fs.ls(p, user)]


@syscall("fs.stat", capability="fs.read")
async def fs_stat(ctx: Context, path: str) -> dict[str, Any]:
    """A path's kind, owner, mode, size, version and mtime."""
    fs, p, user = _gate(ctx, "fs.read", path)
    return fs.stat(p, user).as_dict()


@syscall("fs.read", capability="fs.read")
async def fs_read(ctx: Context, path: str, start: int = 0, end: int | None = None) -> str:
    """Read a file's text, or the characters [start, end) of it."""
    fs, p, user = _gate(ctx, "fs.read", path)
    return fs.read(p, user, start=start, end=end)


@syscall("fs.write", capability="fs.write")
async def fs_write(ctx: Context, path: str, content: str) -> dict[str, Any]:
    """Replace a file's content (creating it); returns the committed version."""
    fs, p, user = _gate(ctx, "fs.write", path)
    return {"path": p, "version": fs.write(p, content, user)}


@syscall("fs.append", capability="fs.write")
async def fs_append(ctx: Context, path: str, content: str) -> dict[str, Any]:
    """Append text to a file (creating it); returns the committed version."""
    fs, p, user = _gate(ctx, "fs.write", path)
    return {"path": p, "version": fs.append(p, content, user)}


@syscall("fs.mkdir", capability="fs.write")
async def fs_mkdir(ctx: Context, path: str) -> dict[str, Any]:
    """Create a directory and any missing parents."""
    fs, p, user = _gate(ctx, "fs.write", path)
    fs.mkdir(p, user)
    return {"path": p}


@syscall("fs.rm", capability="fs.write", risk="medium")
async def fs_rm(ctx: Context, path: str, recursive: bool = False) -> dict[str, Any]:
    """Remove a file or empty directory; recursive removes a whole tree."""
    fs, p, user = _gate(ctx, "fs.write", path)
    return {"path": p, "removed": fs.rm(p, user, recursive=recursive)}


@syscall("fs.mv", capability="fs.write")
async def fs_mv(ctx: Context, src: str, dst: str) -> dict[str, Any]:
    """Move a file or tree."""
    fs, s, user = _gate(ctx, "fs.write", src)
    _, d, _ = _gate(ctx, "fs.write", dst)
    return {"moved": fs.mv(s, d, user)}


@syscall("fs.cp", capability="fs.write")
async def fs_cp(ctx: Context, src: str, dst: str) -> dict[str, Any]:
    """Copy a file or tree."""
    fs, s, user = _gate(ctx, "fs.read", src)
    _, d, _ = _gate(ctx, "fs.write", dst)
    return {"copied": fs.cp(s, d, user)}


@syscall("fs.find", capability="fs.read")
async def fs_find(ctx: Context, pattern: str = "*", path: str = "/") -> list[str]:
    """Paths under `path` whose name matches a glob."""
    fs, p, user = _gate(ctx, "fs.read", path)
    return fs.find(p, pattern, user)


@syscall("fs.grep", capability="fs.read")
async def fs_grep(ctx: Context, pattern: str, path: str = "/") -> list[dict[str, Any]]:
    """Lines matching a regular expression in files under `path`."""
    fs, p, user = _gate(ctx, "fs.read", path)
    return [{"path": a, "line": n, "text": t} for a, n, t in fs.grep(pattern, p, user)]


@syscall("fs.search", capability="fs.read")
async def fs_search(
    ctx: Context, query: str, path: str | None = None, k: int = 5
) -> list[dict[str, Any]]:
    """Semantic search: the top-k chunks by meaning under `path`, with scores and paths."""
    fs, p, user = _gate(ctx, "fs.read", path or "/")
    hits = await asyncio.to_thread(fs.search, query, p, k, user)
    if not hits:  # nothing there at all, or nothing this caller may see: say which
        fs.require_indexed(p)
    return [h.as_dict() for h in hits]


@syscall("fs.history", capability="fs.read")
async def fs_history(ctx: Context, path: str) -> list[dict[str, Any]]:
    """A file's versions."""
    fs, p, user = _gate(ctx, "fs.read", path)
    return fs.history(p, user)


@syscall("fs.rollback", capability="fs.write")
async def fs_rollback(ctx: Context, path: str, version: int) -> dict[str, Any]:
    """Make an old version current again (as a new version)."""
    fs, p, user = _gate(ctx, "fs.write", path)
    return {"path": p, "version": fs.rollback(p, version, user)}


@syscall("fs.mount", capability="fs.mount", risk="high")
async def fs_mount(
    ctx: Context,
    host: str,
    name: str,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> dict[str, Any]:
    """Mount (or re-sync) a host folder read-only at /mnt/<name>: its text files (by
    content), only those matching an `include` glob if any, none matching an `exclude` one.
    Counts what was added, updated, skipped (and why)."""
    fs, _, _ = _gate(ctx, "fs.mount", f"/mnt/{name}")
    return await asyncio.to_thread(
        fs.mount,
        host,
        name,
        include=include or (),
        exclude=exclude or (),
        max_file_bytes=ctx.kernel.settings.mount_max_file_bytes,
    )


@syscall("fs.umount", capability="fs.mount", risk="medium")
async def fs_umount(ctx: Context, name: str) -> dict[str, int]:
    """Unmount /mnt/<name>."""
    fs, _, _ = _gate(ctx, "fs.mount", f"/mnt/{name}")
    return {"removed": fs.umount(name)}


@syscall("fs.fsck", capability="fs.admin")
async def fs_fsck(ctx: Context, rebuild: bool = False) -> dict[str, int]:
    """Check the semantic index against the files and repair it."""
    fs = _memory(ctx)
    return await asyncio.to_thread(fs.fsck, rebuild=rebuild)


@syscall("qa.ask", capability="qa.ask")
async def qa_ask(
    ctx: Context, question: str, scope: str = "/", k: int = 4, max_tokens: int = 128
) -> dict[str, Any]:
    """Answer a question from memory (RetrievalQA over `scope`); cites the source paths."""
    from llmos.memory.qa import ask  # langchain loads only when a question is asked

    fs, p, _user = _gate(ctx, "fs.read", scope)
    # Before the chain (and the model): no answer made up from an empty context. SQLite
    # decides, as the index catches up from its journal before any search.
    fs.require_indexed(p)
    return await ask(ctx, fs, question, p, k, max_tokens)


@syscall("prompt.render", capability="prompt.render")
async def prompt_render(ctx: Context, name: str, values: dict[str, str]) -> str:
    """Render /etc/prompts/<name>.txt with `values`; a missing variable is named."""

    fs, _, user = _gate(ctx, "fs.read", f"{prompts.PROMPT_DIR}/{name}.txt")
    return prompts.render(prompts.load(fs, name, user), **values)


@syscall("memory.core", capability="memory.core")
async def memory_core(ctx: Context) -> dict[str, str]:
    """The caller's core memory blocks (persona, human), pinned in its prompts."""

    return core_read(_memory(ctx), ctx.process.name)


@syscall("memory.core_append", capability="memory.core")
async def memory_core_append(ctx: Context, block: str, text: str) -> str:
    """Append a line to one of the caller's core memory blocks."""

    return core_append(_memory(ctx), ctx.process.name, block, text)


@syscall("memory.core_replace", capability="memory.core")
async def memory_core_replace(ctx: Context, block: str, old: str, new: str) -> str:
    """Replace text in one of the caller's core memory blocks."""

    return core_replace(_memory(ctx), ctx.process.name, block, old, new)


@syscall("memory.recall", capability="memory.core")
async def memory_recall(ctx: Context, query: str, k: int = 5) -> list[dict[str, Any]]:
    """Search the caller's own conversation log and summaries by meaning."""
    fs = _memory(ctx)
    name = ctx.process.name
    hits = await asyncio.to_thread(fs.search, query, f"/home/{name}/recall", k, name)
    return [h.as_dict() for h in hits]
