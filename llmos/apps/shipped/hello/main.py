"""hello's main entry: `llmos app run hello 1 2 3` greets and adds 1+2+3 with `calc`."""

from llmos.core.context import Context
from llmos.errors import SyscallError


async def main(ctx: Context, *numbers: str) -> int:
    ctx.print(f"hello from {ctx.process.name}")
    expression = "+".join(numbers) or "0"
    try:
        total = await ctx.sys.calc(expression=expression)
    except SyscallError as exc:
        ctx.print(exc.kind, str(exc))
        return 3
    ctx.print(f"{expression} = {total}")
    return 0
