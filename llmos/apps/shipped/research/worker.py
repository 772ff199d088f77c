"""research's worker: `research.worker PARENT PATH QUESTION TEXT` answers QUESTION from one
document's TEXT and sends {"path", "answer"} to PARENT with `ipc.send` (research's main
starts one per document with `proc.spawn`)."""

from llmos.core.context import Context
from llmos.errors import SyscallError

ANSWER = (
    "Document {path}:\n\n{text}\n\nUsing only this document, answer in one sentence: "
    "{question}\nIf it does not say, answer: not mentioned."
)


async def main(ctx: Context, parent: int, path: str, question: str, text: str) -> int:
    prompt = ANSWER.format(path=path, text=text, question=question)
    try:
        r = await ctx.sys.llm.chat(
            messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=64,
            stream=False,
        )  # fmt: skip
        answer = " ".join(str(r.text).split())
    except SyscallError as exc:  # the parent waits for every document: send what happened
        answer = f"(no answer: {exc.kind}: {exc})"
    await ctx.sys.ipc.send(pid=parent, message={"path": path, "answer": answer})
    return 0
