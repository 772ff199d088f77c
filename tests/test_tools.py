"""Tool syscalls: calc without eval, text helpers, and third-party tools by entry point."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from llmos.core.context import Context
from llmos.core.syscall import syscall
from llmos.errors import BadArguments
from llmos.kernel.kernel import Kernel
from llmos.tools.basic import evaluate


@pytest.mark.parametrize(
    ("expr", "value"),
    [("17*23", 391), ("(2+3)**2", 25), ("7 // 2", 3), ("2^10", 1024), ("-sqrt(16)", -4.0)],
)
def test_calc_arithmetic(expr: str, value: float) -> None:
    assert evaluate(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('id')",
        "().__class__",
        "open('/etc/passwd')",
        "1/0",
        "9**9**9",
        "((9**999)**999)**999",
        "(9**999)*(9**999)*(9**999)*(9**999)",
        "10.0**400",
    ],
)
def test_calc_refuses_everything_else(expr: str) -> None:
    with pytest.raises(BadArguments):
        evaluate(expr)


def test_calc_keeps_big_but_bounded_integers_exact() -> None:
    assert evaluate("2**1000") == 2**1000
    assert evaluate("(9**999)*(9**999)") == 9**1998
    assert evaluate("(-1)**999") == -1 and evaluate("2**-2") == 0.25


async def test_calc_pattern_is_validated_like_the_grammar(scripted_kernel: Kernel) -> None:
    async def prog(ctx: Context) -> Any:
        out = [await ctx.sys.calc(expression="17*23")]
        for bad in ("", "x" * 300, "os.system('id')"):
            try:
                await ctx.sys.calc(expression=bad)
            except BadArguments as exc:
                out.append(exc.kind)
        return out

    p = await scripted_kernel.spawn(prog)
    await scripted_kernel.wait(p.pid)
    assert p.result == [391, "bad_arguments", "bad_arguments", "bad_arguments"]


async def test_text_helpers(scripted_kernel: Kernel) -> None:
    async def prog(ctx: Context) -> Any:
        return [
            (await ctx.sys.text.count(text="a b\nc")).model_dump(),
            await ctx.sys.text.replace(text="a-b-c", old="-", new="+"),
            await ctx.sys.text.upper(text="llmos"),
        ]

    p = await scripted_kernel.spawn(prog)
    await scripted_kernel.wait(p.pid)
    assert p.result == [{"chars": 5, "words": 3, "lines": 2}, "a+b+c", "LLMOS"]


async def test_third_party_tool_by_entry_point(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = types.ModuleType("llmos_test_plugin")

    @syscall("plugin.shout", capability="plugin")
    async def shout(ctx: Context, word: str) -> str:
        """Shout a word."""
        return word.upper() + "!"

    mod.shout = shout  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llmos_test_plugin", mod)

    class EP:
        def load(self) -> Any:
            return mod

    import importlib.metadata as md

    real = md.entry_points
    monkeypatch.setattr(
        md, "entry_points", lambda **kw: [EP()] if kw.get("group") == "llmos.tools" else real(**kw)
    )
    from tests.conftest import scripted_factory

    async with Kernel(settings, backend_factory=scripted_factory()) as k:
        assert "plugin.shout" in k.syscalls.names()

        async def prog(ctx: Context) -> Any:
            return await ctx.sys.plugin.shout(word="hi")

        p = await k.spawn(prog, caps=["plugin"])
        await k.wait(p.pid)
        assert p.result == "HI!"
