"""summarize: `llmos app run summarize PATH` summarizes a file or a folder into the memory
FS, at /home/summarize/<name>.md, and prints where. PATH is a memory-FS path when one
exists there (`/mnt/notes/todo.md`); otherwise a host path, mounted read-only first."""

import hashlib
import os
import re

from llmos.core.context import Context
from llmos.errors import BadArguments, SyscallError

MAX_FILES = 8  # a folder's first files (by path); the summary says how many were left out
MAX_CHARS = 3000  # of each file: the default model's context is small
PROMPT = "Summarize the text below in two or three sentences. Keep names and facts.\n\n{text}"


def slug(path: str) -> str:
    """A file-name-safe form of a path's last name, without its suffix."""
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")


def where(path: str) -> tuple[str, str]:
    """A host path made absolute, and the name of its mount. (Only string work: the kernel
    reads the host.)"""
    host = os.path.abspath(os.path.expanduser(path))
    return host, f"summarize-{slug(host)[:30]}-{hashlib.sha256(host.encode()).hexdigest()[:6]}"


async def chat(ctx: Context, prompt: str) -> str:
    r = await ctx.sys.llm.chat(
        messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=96, stream=False
    )
    return str(r.text).strip()


async def locate(ctx: Context, path: str) -> tuple[str, str] | None:
    """The memory-FS path to summarize and the source's full name: `path` itself if it
    exists there, else the host file or folder `path` mounted read-only under /mnt; None if
    neither exists."""
    try:
        await ctx.sys.fs.stat(path=path)
        return path, path
    except BadArguments:  # not in the memory FS (a permission error is raised: it is)
        pass
    host, name = where(path)
    try:  # a folder
        await ctx.sys.fs.mount(host=host, name=name)
        return f"/mnt/{name}", host
    except BadArguments:  # not a folder
        pass
    # a file: its folder, narrowed to it
    base = os.path.basename(host)
    try:
        m = await ctx.sys.fs.mount(host=os.path.dirname(host), name=name, include=[base])
    except BadArguments:  # no such folder either
        return None
    return (f"/mnt/{name}/{base}", host) if m["files"] else None


async def main(ctx: Context, path: str = "") -> int:
    if not path:
        ctx.print("usage: llmos app run summarize PATH  (a host or memory-FS file or folder)")
        return 2
    try:
        found = await locate(ctx, path)
        if found is None:
            ctx.print(f"summarize: {path}: no such text file or folder, in memory or on the host")
            return 1
        source, named = found
        st = await ctx.sys.fs.stat(path=source)
        files = [source]
        if st["kind"] == "dir":
            paths = sorted(await ctx.sys.fs.find(pattern="*", path=source))
            files = [p for p in paths if (await ctx.sys.fs.stat(path=p))["kind"] == "file"]
        if not files:
            ctx.print(f"summarize: {path}: no text files to summarize")
            return 1
        parts = []
        for f in files[:MAX_FILES]:
            text = (await ctx.sys.fs.read(path=f))[:MAX_CHARS]
            parts.append((f, " ".join((await chat(ctx, PROMPT.format(text=text))).split())))
        if st["kind"] == "file":
            summary = parts[0][1]
        else:
            # the files' summaries, summarized again (their paths would only distract it)
            summary = await chat(ctx, PROMPT.format(text="\n".join(s for _, s in parts)))
        lines = [f"# Summary of {named}", "", f"Source: {named} (read as {source})", "", summary]
        if st["kind"] == "dir":
            lines += ["", "## Files", ""] + [f"- {f}: {s}" for f, s in parts]
            if len(files) > MAX_FILES:
                lines.append(f"- ... and {len(files) - MAX_FILES} more, not read")
        out = f"/home/{ctx.process.name}/{slug(named) or 'summary'}.md"
        await ctx.sys.fs.write(path=out, content="\n".join(lines) + "\n")
    except SyscallError as exc:
        ctx.print(f"summarize: {exc.kind}: {exc}")
        return 3
    ctx.print(summary)
    ctx.print(f"wrote {out}")
    ctx.process.result = {"path": out, "source": source}
    return 0
