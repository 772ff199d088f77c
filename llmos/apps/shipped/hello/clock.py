"""hello's clock entry: `llmos app run hello clock` prints the time with `time.now`."""

from llmos.core.context import Context
from llmos.errors import SyscallError


async def main(ctx: Context) -> int:
    try:
        now = await ctx.sys.time.now()
    except SyscallError as exc:
        ctx.print(exc.kind, str(exc))
        return 3
    ctx.print(f"the time is {now}")
    return 0
