"""research: `llmos app run research QUESTION PATH...` gives each document (a memory-FS file,
or each file of a folder) to a worker process of its own, which answers QUESTION from it
and sends the answer back with `ipc.send`; the parent lists each document's answer, then
merges them into one short answer."""

from typing import Any

from llmos.core.context import Context
from llmos.core.syscall import capability_allows
from llmos.errors import SyscallError

MAX_DOCS = 8
MAX_CHARS = 2000  # of each document: the default model's context is small
WORKER_CAPS = ("llm.chat", "ipc")
MERGE = (
    "Question: {question}\n\nAnswers found in several documents:\n{answers}\n\n"
    "Combine them into one short answer."
)


async def chat(ctx: Context, prompt: str) -> str:
    r = await ctx.sys.llm.chat(
        messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=64, stream=False
    )
    return " ".join(str(r.text).split())


async def documents(ctx: Context, paths: tuple[str, ...]) -> list[str]:
    """The files named, and the files under the folders named, in order, without repeats."""
    out: list[str] = []
    for p in paths:
        if (await ctx.sys.fs.stat(path=p))["kind"] == "dir":
            for f in sorted(await ctx.sys.fs.find(pattern="*", path=p)):
                if (await ctx.sys.fs.stat(path=f))["kind"] == "file":
                    out.append(f)
        else:
            out.append(p)
    return list(dict.fromkeys(out))


async def spawn_worker(ctx: Context, *args: Any) -> int:
    """A worker child (the app's `worker` entry, program `research.worker`), holding only
    what a worker needs of the capabilities this process has."""
    caps = [c for c in WORKER_CAPS if capability_allows(ctx.process.caps, c)]
    me = ctx.process.name
    pid: int = await ctx.sys.proc.spawn(
        program=f"{me}.worker", args=list(args), caps=caps, name=f"{me}.worker"
    )
    return pid


async def main(ctx: Context, question: str = "", *paths: str) -> int:
    if not question or not paths:
        ctx.print("usage: llmos app run research QUESTION PATH...  (memory-FS files or folders)")
        return 2
    try:
        docs = await documents(ctx, paths)
        if not docs:
            ctx.print("research: no documents there")
            return 1
        if len(docs) > MAX_DOCS:
            ctx.print(f"research: {len(docs)} documents; asking the first {MAX_DOCS}")
            docs = docs[:MAX_DOCS]
        pids = []
        for path in docs:
            text = (await ctx.sys.fs.read(path=path))[:MAX_CHARS]
            pids.append(await spawn_worker(ctx, ctx.pid, path, question, text))
        answers: dict[str, str] = {}
        while len(answers) < len(docs):
            msg = await ctx.sys.ipc.recv(timeout_s=300)
            if msg["from"] in pids:  # (anyone may write to a mailbox: read only ours)
                answers[msg["message"]["path"]] = msg["message"]["answer"]
        ended = [await ctx.sys.proc.wait(pid=pid, timeout_s=60) for pid in pids]
        ctx.print(f"answers to: {question}")
        for i, path in enumerate(docs, 1):
            ctx.print(f"  [{i}] {path}: {answers[path]}")
        listing = "\n".join(f"- {a}" for a in answers.values())
        merged = await chat(ctx, MERGE.format(question=question, answers=listing))
    except SyscallError as exc:
        ctx.print(f"research: {exc.kind}: {exc}")
        return 3
    ctx.print(f"combined: {merged}")
    ctx.print("workers: " + ", ".join(f"pid {e.pid} exit {e.exit_code}" for e in ended))
    ctx.process.result = {"answers": answers, "combined": merged}
    return 0
