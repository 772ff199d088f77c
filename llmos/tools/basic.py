"""Small built-in tool syscalls: time, arithmetic, echo."""

from __future__ import annotations

import ast
import datetime
import math
import operator
from typing import Annotated, Any

from pydantic import Field

from llmos.core.context import Context
from llmos.core.syscall import syscall
from llmos.errors import BadArguments

_BIN: dict[type, Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip
_UNARY: dict[type, Any] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Any] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
}
_CONSTS = {"pi": math.pi, "e": math.e}


# Integers are exact and unbounded in Python: cap a result's size before computing it, so
# `((9**999)**999)**999` is refused at once instead of freezing the kernel's event loop.
MAX_RESULT_BITS = 10_000  # about 3,000 decimal digits


def _check_size(op: ast.operator, left: Any, right: Any) -> None:
    if not (isinstance(left, int) and isinstance(right, int)):
        return  # float arithmetic is bounded (it overflows, which calc reports)
    if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
        bits = left.bit_length() * right
    elif isinstance(op, ast.Mult):
        bits = left.bit_length() + right.bit_length()
    else:
        return
    if bits > MAX_RESULT_BITS:
        raise BadArguments(f"calc: result too large (over {MAX_RESULT_BITS} bits)")


def evaluate(expression: str) -> float | int:
    """Arithmetic through the AST: numbers, + - * / // % **, a few functions. No eval."""
    if len(expression) > 500:
        raise BadArguments("calc: expression too long")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise BadArguments(f"calc: not an arithmetic expression: {exc.msg}") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise BadArguments("calc: exponent too large")
            _check_size(node.op, left, right)
            return _BIN[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            return _CONSTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
        ):
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise BadArguments(f"calc: unsupported element {type(node).__name__}")

    try:
        result = ev(tree)
    except ZeroDivisionError:
        raise BadArguments("calc: division by zero") from None
    except (OverflowError, ValueError) as exc:
        raise BadArguments(f"calc: {exc}") from None
    if isinstance(result, float) and not math.isfinite(result):  # 1e308*10 is inf, silently
        raise BadArguments("calc: result overflows a float (or is not a number)")
    return result  # type: ignore[no-any-return]


# The pattern is part of the schema, so it is also the grammar a model's call is held to:
# a small model can only write digits, operators, parentheses and the known names.
Expression = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[0-9(-][0-9a-z+*/%().^ -]*$",
        description="arithmetic, e.g. 17*23",
    ),
]


@syscall("calc")
async def calc(ctx: Context, expression: Expression) -> float | int:
    """Evaluate an arithmetic expression such as 17*23 or (2+3)**2."""
    return evaluate(expression)


@syscall("time.now")
async def now(ctx: Context) -> str:
    """The current local date and time, ISO 8601."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


@syscall("sys.echo")
async def echo(ctx: Context, text: str) -> str:
    """Return the text unchanged (a no-op syscall, for tests and benchmarks)."""
    return text
