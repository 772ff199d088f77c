"""The syscall table: permission matrix, approval policy, audit rows, argument fuzzing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from llmos.core.syscall import capability_allows
from llmos.errors import SyscallError
from llmos.kernel.kernel import Kernel

# (syscall, arguments, capability that grants it)
CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("calc", {"expression": "1+1"}, "calc"),
    ("time.now", {}, "time.now"),
    ("sys.echo", {"text": "x"}, "sys.echo"),
    ("text.count", {"text": "a b"}, "text.count"),
    ("proc.ps", {}, "proc.ps"),
    ("ipc.recv", {"timeout_s": 0.001}, "ipc"),
    ("shell.exec", {"command": "true"}, "shell.exec"),
    ("python.exec", {"code": "pass"}, "python.exec"),
]


async def call_as(k: Kernel, caps: list[str], name: str, args: dict[str, Any]) -> Any:
    async def prog(ctx: Any) -> Any:
        try:
            return ("ok", await ctx.call(name, args))
        except SyscallError as exc:
            return ("err", exc.kind)

    p = await k.spawn(prog, caps=caps)
    await k.wait(p.pid)
    assert p.error is None, p.error
    return p.result


@pytest.mark.parametrize(("name", "args", "cap"), CALLS)
async def test_permission_matrix(
    scripted_kernel: Kernel, name: str, args: dict[str, Any], cap: str
) -> None:
    k = scripted_kernel
    k.syscalls.policy = {"shell.exec": "deny", "python.exec": "deny"}  # never run them here
    # Denied without the capability, whatever else is granted.
    others = [c for _, _, c in CALLS if c != cap]
    assert await call_as(k, others, name, args) == ("err", "permission_denied")
    outcome = await call_as(k, [cap], name, args)
    if name.endswith(".exec"):
        assert outcome == ("err", "approval_denied")  # granted, then the policy says no
    elif name == "ipc.recv":
        assert outcome == ("err", "tool_failed")  # granted; nothing in the mailbox
    else:
        assert outcome[0] == "ok"


def test_capability_patterns() -> None:
    assert capability_allows(["*"], "shell.exec")
    assert capability_allows(["llm.*"], "llm.chat")
    assert not capability_allows(["llm.*"], "llmx")
    assert capability_allows(["fs.read:/home/self/**"], "fs.read", "/home/self/a/b")
    assert not capability_allows(["fs.read:/home/self/**"], "fs.read", "/etc/passwd")
    assert not capability_allows(["fs.read:/home/self/**"], "fs.write", "/home/self/a")


async def test_approval_allow_deny_ask(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    asked: list[tuple[int, str, dict[str, Any]]] = []

    async def approver(ctx: Any, spec: Any, values: dict[str, Any]) -> bool:
        asked.append((ctx.pid, spec.name, values))
        return values["text"] == "yes"

    k.syscalls.policy = {"sys.echo": "ask"}
    # ask with nobody interactive: deny
    assert await call_as(k, ["sys.echo"], "sys.echo", {"text": "yes"}) == (
        "err",
        "approval_denied",
    )
    k.syscalls.approver = approver
    assert await call_as(k, ["sys.echo"], "sys.echo", {"text": "yes"}) == ("ok", "yes")
    assert await call_as(k, ["sys.echo"], "sys.echo", {"text": "no"}) == (
        "err",
        "approval_denied",
    )
    assert [a[1:] for a in asked] == [("sys.echo", {"text": "yes"}), ("sys.echo", {"text": "no"})]
    k.syscalls.policy = {"sys.echo": "deny"}
    assert await call_as(k, ["sys.echo"], "sys.echo", {"text": "yes"}) == (
        "err",
        "approval_denied",
    )
    k.syscalls.policy = {"shell.exec": "allow"}
    assert len(asked) == 2  # allow and deny never ask
    assert k.syscalls.policy_for(k.syscalls.get("python.exec")) == "ask"  # high risk default


async def test_audit_rows_in_sqlite(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    await call_as(k, ["calc"], "calc", {"expression": "2*3"})
    await call_as(k, ["calc"], "calc", {"expression": "2*"})
    await call_as(k, [], "calc", {"expression": "1"})
    await call_as(k, ["calc"], "nope", {})
    assert k.proctable is not None
    rows = k.proctable.audit_rows()
    assert [(r["syscall"], r["outcome"]) for r in rows] == [
        ("calc", "ok"),
        ("calc", "bad_arguments"),
        ("calc", "permission_denied"),
        ("nope", "unknown_syscall"),
    ]
    assert all(r["pid"] and len(r["args_digest"]) == 16 and r["duration_s"] >= 0 for r in rows)
    import sqlite3

    db = sqlite3.connect(k.proctable.path)  # the rows are on disk, not only in memory
    assert db.execute("SELECT count(*) FROM audit").fetchone()[0] == 4


def test_schema_help_and_grammar_share_one_definition() -> None:
    from llmos.tools.basic import calc

    spec = calc.__syscall__  # type: ignore[attr-defined]
    schema = spec.schema()
    assert schema["properties"]["expression"]["pattern"].startswith("^[0-9(-]")
    assert "calc(expression: str)" in spec.help()
    from llmos.agents.react import action_schema

    union = action_schema([spec])
    assert [v["properties"]["action"]["const"] for v in union["anyOf"]] == ["calc", "finish"]
    assert union["anyOf"][0]["properties"]["args"]["properties"]["expression"]["pattern"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@hsettings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["calc", "sys.echo", "text.count", "text.replace", "proc.kill", "x"]),
    args=st.dictionaries(
        st.sampled_from(["expression", "text", "old", "new", "pid", "signal", "zz"]),
        json_values,
        max_size=4,
    )
    | json_values,
)
def test_fuzzed_arguments_give_typed_errors(name: str, args: Any) -> None:
    """Any JSON a model might send either works or is a SyscallError; nothing else escapes."""
    import asyncio

    from llmos.core.context import Context
    from llmos.core.process import Process
    from llmos.core.syscall import SyscallTable
    from llmos.kernel.registry import load_tools

    table = FUZZ_TABLE.setdefault("t", SyscallTable())
    if not table.specs:
        for spec, _ in load_tools():
            table.register(spec)

    async def idle(ctx: Any) -> None:
        return None

    async def go() -> None:
        proc = Process(pid=1, name="fuzz", program=idle, caps=frozenset({"*"}))
        ctx = Context(NoProcesses(), proc)  # type: ignore[arg-type]
        try:
            result = await table.dispatch(ctx, name, args)
        except SyscallError as exc:
            obs = exc.to_observation()
            assert obs["ok"] is False and obs["error"] and json.dumps(obs)
        else:
            assert name in ("calc", "sys.echo", "text.count", "text.replace")
            assert result is not None

    asyncio.run(go())


FUZZ_TABLE: dict[str, Any] = {}


class NoProcesses:
    """Just enough kernel for the fuzzed syscalls: no process exists."""

    def get(self, pid: int) -> Any:
        from llmos.errors import NoSuchProcess

        raise NoSuchProcess(f"no process {pid}")


async def test_results_are_typed_by_the_handlers_annotation(scripted_kernel: Kernel) -> None:
    from llmos.core.syscall import syscall

    @syscall("test.liar")
    async def liar(ctx: Any, n: int) -> int:
        """Claims an int, returns text when n is odd."""
        return n if n % 2 == 0 else "odd"  # type: ignore[return-value]

    spec = liar.__syscall__  # type: ignore[attr-defined]
    scripted_kernel.syscalls.register(spec)
    assert "-> int" in spec.help() and spec.result_schema() == {"type": "integer"}
    assert await call_as(scripted_kernel, ["test.liar"], "test.liar", {"n": 2}) == ("ok", 2)
    assert await call_as(scripted_kernel, ["test.liar"], "test.liar", {"n": 3}) == (
        "err",
        "tool_failed",
    )
    # Every built-in declares what it returns, and help shows it.
    untyped = [s.name for s in scripted_kernel.syscalls.specs.values() if s.result is Any]
    assert untyped == [], untyped


def test_result_schema_in_help_and_describe_and_unresolvable_hints() -> None:
    from llmos.core.syscall import syscall

    @syscall("test.pair")
    async def pair(ctx: Any, a: int) -> dict[str, int]:
        """Returns a mapping."""
        return {"a": a}

    spec = pair.__syscall__  # type: ignore[attr-defined]
    want = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert spec.describe()["result"] == want and spec.describe()["args"] == spec.schema()
    assert 'returns {"additionalProperties":{"type":"integer"},"type":"object"}' in spec.help()

    @syscall("test.ghost")
    async def ghost(ctx: Any, a: int) -> NoSuchTypeAnywhere:  # type: ignore[name-defined]  # noqa: F821
        """A return annotation that names nothing: Any, not a registration crash."""
        return a

    spec = ghost.__syscall__  # type: ignore[attr-defined]
    assert spec.result is Any and spec.result_schema() == {}
    assert spec.args_model.model_validate({"a": "3"}).a == 3  # `a` still resolved
    spec.check_result(object())  # Any: not checked
