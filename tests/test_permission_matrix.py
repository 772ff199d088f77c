"""The permission matrix over every syscall a kernel registers, not a hand-picked few.

For each syscall: a process holding every other capability is refused with
`permission_denied` before anything else happens, and a process holding just its capability
gets past the check (the approval policy, set to deny everything here, is what stops it, so
no handler runs). The audit log records both outcomes."""

from __future__ import annotations

from typing import Any

from llmos.core.syscall import SyscallSpec
from llmos.errors import SyscallError
from llmos.kernel.kernel import Kernel

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
    assert k.proctable is not None
    k.proctable.flush()
    kinds = {r["outcome"] for r in k.proctable.audit_rows()}
    assert {"permission_denied", "approval_denied"} <= kinds


PATH_ARGS = ("path", "src", "dst")
GRANTED, ELSEWHERE = "/tmp/pm", "/home/someone-else/pm"


async def outcome_of(k: Kernel, caps: list[str], name: str, args: dict[str, Any]) -> str:
    """Like `outcome`, but a refusal says whether it was the grant or something else."""

    async def prog(ctx: Any) -> str:
        try:
            await ctx.call(name, args)
            return "ok"
        except SyscallError as exc:
            return exc.kind + (":grant" if " may not " in str(exc) else "")

    p = await k.spawn(prog, caps=caps)
    await k.wait(p.pid)
    assert p.error is None, p.error
    return str(p.result)


async def test_fs_grants_are_scoped_to_their_paths(scripted_kernel: Kernel) -> None:
    """Every fs.* syscall: a grant on /tmp/** admits /tmp and refuses any other path, for
    each path argument (mv/cp check both ends)."""
    k = scripted_kernel
    specs = sorted(
        (s for s in k.syscalls.specs.values() if s.name.startswith("fs.")), key=lambda s: s.name
    )
    assert {"fs.read", "fs.write", "fs.ls", "fs.mv", "fs.cp"} <= {s.name for s in specs}
    caps = ["fs.read:/tmp/**", "fs.write:/tmp/**"]
    wrong: list[str] = []
    for spec in specs:
        base = minimal_args(spec)
        paths = [a for a in PATH_ARGS if a in spec.args_model.model_fields]
        if not paths:  # e.g. fs.fsck: no path to scope, the matrix above covers it
            continue
        inside = {**base, **{a: f"{GRANTED}/{a}" for a in paths}}
        for a in paths:  # one end outside the grant is enough to refuse
            got = await outcome_of(k, caps, spec.name, {**inside, a: f"{ELSEWHERE}/{a}"})
            if got != "permission_denied:grant":
                wrong.append(f"{spec.name} {a} outside: {got}")
        if spec.name == "fs.search":
            continue  # inside the grant it would embed: the refusal side is what matters
        got = await outcome_of(k, caps, spec.name, inside)
        if got.endswith(":grant"):
            wrong.append(f"{spec.name} inside: {got}")
    # A read grant is not a write grant, even on the same path.
    read_only = caps[:1]
    assert not (await outcome_of(k, read_only, "fs.read", {"path": "/tmp/x"})).startswith(
        "permission_denied"
    )
    got = await outcome_of(k, read_only, "fs.write", {"path": "/tmp/x", "content": "c"})
    assert got.startswith("permission_denied"), got
    assert not wrong, wrong
