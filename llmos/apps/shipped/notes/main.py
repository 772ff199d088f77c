"""notes: `llmos app run notes FOLDER QUESTION...` mounts FOLDER read-only and answers
QUESTION from its files, citing them. The citations are the files semantic search found
(`fs.search`), not the model's say: a small model's prose may be weak, its sources are not."""

import hashlib
import os
import re

from llmos.core.context import Context
from llmos.errors import SyscallError

K = 4  # passages retrieved
KEEP = 0.5  # cite a passage scoring at least this fraction of the best one
PROMPT = (
    "Use the numbered notes below to answer the question in one or two sentences. "
    "If they do not contain the answer, say you don't know.\n\n{context}\n\n"
    "Question: {question}\nAnswer:"
)


def where(folder: str) -> tuple[str, str]:
    """The folder's absolute path, and its mount name `<folder>-<id>`: readable, and two
    folders with the same name don't collide. (Only string work: the kernel reads it.)"""
    host = os.path.abspath(os.path.expanduser(folder))
    slug = re.sub(r"[^a-z0-9_-]+", "-", os.path.basename(host).lower()).strip("-") or "notes"
    return host, f"{slug[:30]}-{hashlib.sha256(host.encode()).hexdigest()[:6]}"


async def main(ctx: Context, folder: str = "", *question: str) -> int:
    if not folder or not question:
        ctx.print("usage: llmos app run notes FOLDER QUESTION...")
        return 2
    host, name = where(folder)
    root = f"/mnt/{name}"
    query = " ".join(question)
    try:
        m = await ctx.sys.fs.mount(host=host, name=name)
        ctx.print(f"mounted {host} at {root}: {m['files']} files")
        hits = await ctx.sys.fs.search(query=query, path=root, k=K)
        if not hits:
            ctx.print(f"notes: nothing in {host} that I may read")
            return 1
        hits = hits[:1] + [h for h in hits[1:] if h["score"] >= KEEP * hits[0]["score"]]
        sources = list(dict.fromkeys(h["path"] for h in hits))
        context = "\n\n".join(
            f"[{sources.index(h['path']) + 1}] {h['path']}\n{h['text']}" for h in hits
        )
        reply = await ctx.sys.llm.chat(
            messages=[{"role": "user", "content": PROMPT.format(context=context, question=query)}],
            temperature=0,
            max_tokens=96,
            stream=False,
        )
    except SyscallError as exc:
        ctx.print(f"notes: {exc.kind}: {exc}")
        return 3
    ctx.print(reply.text.strip())
    ctx.print("sources:")
    for i, path in enumerate(sources, 1):
        ctx.print(f"  [{i}] {path}  ({os.path.join(host, path.removeprefix(root + '/'))})")
    ctx.process.result = {"answer": reply.text.strip(), "sources": sources}
    return 0
