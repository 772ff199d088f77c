"""The `rag` agent: answer one question from the memory filesystem, citing its sources."""

from __future__ import annotations

from llmos.core.context import Context


async def rag_program(ctx: Context, question: str, scope: str = "/", k: int = 4) -> int:
    """Ask `qa.ask` (RetrievalQA over the memory FS) and print the answer and its sources."""
    out = await ctx.sys.qa.ask(question=question, scope=scope, k=k)
    ctx.print(out["answer"])
    if out["sources"]:
        ctx.print("sources: " + ", ".join(out["sources"]))
    return 0
