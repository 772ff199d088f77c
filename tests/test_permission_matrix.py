"""The permission matrix over every syscall a kernel registers, not a hand-picked few.

For each syscall: a process holding every other capability is refused with
`permission_denied` before anything else happens, and a process holding just its capability
gets past the check (the approval policy, set to deny everything here, is what stops it, so
no handler runs). The audit log records both outcomes."""

from __future__ import annotations

from typing import Any

from llmos.errors import SyscallError
from llmos.kernel.kernel import Kernel
from llmos.syscalls.table import SyscallSpec

# Arguments the schema alone can't make valid (patterns, nested models).
OVERRIDES: dict[str, dict[str, Any]] = {
    "llm.chat": {"messages": [{"role": "user", "content": "hi"}]},
}
MUST_HAVE = {
    "calc", "time.now", "sys.echo", "shell.exec", "python.exec", "proc.spawn", "proc.wait",
    "proc.kill", "proc.ps", "ipc.send", "ipc.recv", "llm.chat", "llm.complete", "fs.read",
    "fs.write", "fs.ls", "fs.search",
}  # fmt: skip


def minimal_args(spec: SyscallSpec) -> dict[str, Any]:
    """A valid value for every required argument, from the argument schema."""
    if spec.name in OVERRIDES:
        return OVERRIDES[spec.name]
    schema = spec.schema()
    out: dict[str, Any] = {}
    for name in schema.get("required", []):
        prop = schema["properties"][name]
        kind = prop.get("type") or next(
            (a.get("type") for a in prop.get("anyOf", []) if a.get("type") != "null"), "string"
        )
        out[name] = {"integer": 1, "number": 1.0, "boolean": False, "array": [], "object": {}}.get(
            kind, "1"
        )
    return out


async def outcome(k: Kernel, caps: list[str], name: str, args: dict[str, Any]) -> str:
    async def prog(ctx: Any) -> str:
        try:
            await ctx.call(name, args)
            return "ok"
        except SyscallError as exc:
            return exc.kind

    p = await k.spawn(prog, caps=caps)
    await k.wait(p.pid)
    assert p.error is None, p.error
    return str(p.result)


async def test_every_syscall_is_denied_without_its_capability(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    specs = sorted(k.syscalls.specs.values(), key=lambda s: s.name)
    assert MUST_HAVE <= {s.name for s in specs}, MUST_HAVE - {s.name for s in specs}
    k.syscalls.policy = {s.name: "deny" for s in specs}  # nothing past the check runs
    capabilities = sorted({s.capability for s in specs})
    wrong: list[str] = []
    for spec in specs:
        args = minimal_args(spec)
        assert k.syscalls.validate(spec.name, args), spec.name  # the args themselves are fine
        others = [
            c
            for c in capabilities
            if not (c == spec.capability or spec.capability.startswith(c.rstrip("*")))
        ]
        denied = await outcome(k, others, spec.name, args)
        granted = await outcome(k, [spec.capability], spec.name, args)
        if (denied, granted) != ("permission_denied", "approval_denied"):
            wrong.append(f"{spec.name}: without {denied}, with {granted}")
    assert not wrong, wrong
    assert k.table is not None
    k.table.flush()
    kinds = {r["outcome"] for r in k.table.audit_rows()}
    assert {"permission_denied", "approval_denied"} <= kinds
