"""sysinfo: `llmos app run sysinfo QUESTION...` runs a fixed set of read-only commands in
the sandbox (`shell.exec`, one call, so one approval) and answers from their output. The
commands are fixed rather than chosen by the model: a small model picks them badly, and a
person approving the call should know what it runs. The facts are printed with the answer,
so a weak answer can be checked against them."""

from llmos.core.context import Context
from llmos.errors import SyscallError

COMMANDS = ("uname -srm", "nproc", "free -m", "df -h /", "uptime")
SCRIPT = "; ".join(f"echo '$ {c}'; {c} 2>&1" for c in COMMANDS)
PROMPT = (
    "Here is the output of some commands run on a computer:\n\n{facts}\n\n"
    "Using only that output, answer in one sentence: {question}"
)


async def main(ctx: Context, *question: str) -> int:
    asked = " ".join(question) or "Describe this machine."
    try:
        run = await ctx.sys.shell.exec(command=SCRIPT, timeout_s=10)
    except SyscallError as exc:
        if exc.kind == "approval_denied":
            ctx.print("sysinfo: running commands was not approved, so I cannot look")
        else:
            ctx.print(f"sysinfo: {exc.kind}: {exc}")
        return 3
    facts = run.stdout.strip()
    ctx.print(facts)
    try:
        reply = await ctx.sys.llm.chat(
            messages=[{"role": "user", "content": PROMPT.format(facts=facts, question=asked)}],
            temperature=0,
            max_tokens=64,
            stream=False,
        )
    except SyscallError as exc:
        ctx.print(f"sysinfo: {exc.kind}: {exc}")
        return 3
    ctx.print(f"answer: {reply.text.strip()}")
    return 0
