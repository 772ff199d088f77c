"""Holes closed after review: identity through child names, the sandbox and the config file,
and plug-ins that fail to load."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmos.errors import PermissionDenied
from llmos.kernel.kernel import Kernel


async def quiet(ctx: Any) -> int:
    await asyncio.sleep(0)
    return 0


async def test_a_child_cannot_take_another_agents_name(scripted_kernel: Kernel) -> None:
    """A child's name is its /home/self: a non-root parent names children in its namespace."""
    k = scripted_kernel
    k.programs["quiet"] = quiet

    async def parent(ctx: Any) -> Any:
        default = await ctx.sys.proc.spawn(program="quiet")
        own = await ctx.sys.proc.spawn(program="quiet", name="bob.helper")
        try:
            await ctx.sys.proc.spawn(program="quiet", name="alice")
            spoofed = "allowed"
        except PermissionDenied as exc:
            spoofed = str(exc)
        return [k.get(default).name, k.get(own).name, spoofed]

    p = await k.spawn(parent, name="bob", caps=["proc.*", "fs.read:/home/self/**"])
    assert await k.wait(p.pid) == 0, p.error
    default, own, spoofed = p.result
    assert default == "bob.quiet" and own == "bob.helper"
    assert "must be named 'bob'" in spoofed

    async def root(ctx: Any) -> str:
        child = await ctx.sys.proc.spawn(program="quiet", name="alice")
        return k.get(child).name

    r = await k.spawn(root, name="init", caps=["*"])
    assert await k.wait(r.pid) == 0, r.error
    assert r.result == "alice"


async def test_the_sandbox_cannot_read_the_config_file(scripted_kernel: Kernel) -> None:
    import os
    from pathlib import Path

    cfg = Path(os.environ["LLMOS_CONFIG"])
    _write(cfg, 'api_key = "sekret-123"\n')
    out = await _sandboxed(scripted_kernel, f"cat {cfg}; echo done")
    assert "done" in out  # the command ran
    assert "sekret" not in out
    assert "sekret" in _read(cfg)  # still there for the kernel


async def _sandboxed(kernel: Kernel, command: str) -> str:
    """Run `command` through an approved shell.exec; its stdout and stderr."""
    from llmos.tools.sandbox import namespaces_available

    if not namespaces_available():
        pytest.fail("the sandbox needs unprivileged user namespaces on this machine")

    async def allow(ctx: Any, spec: Any, values: Any) -> bool:
        return True

    kernel.syscalls.approver = allow

    async def prog(ctx: Any) -> Any:
        return await ctx.sys.shell.exec(command=command)

    p = await kernel.spawn(prog, caps=["shell.exec"])
    assert await kernel.wait(p.pid) == 0, p.error
    return str(p.result.stdout + p.result.stderr)


def _write(path: Any, text: str) -> None:
    path.write_text(text)


def _read(path: Any) -> str:
    return str(path.read_text())


async def test_a_broken_plugin_does_not_stop_the_kernel(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.metadata as md

    from tests.conftest import scripted_factory

    class Broken:
        name = "broken_tools"

        def load(self) -> Any:
            raise ImportError("No module named 'missing_dependency'")

    real = md.entry_points
    monkeypatch.setattr(
        md,
        "entry_points",
        lambda **kw: [Broken()] if kw.get("group") == "llmos.tools" else real(**kw),
    )
    async with Kernel(settings, backend_factory=scripted_factory()) as k:
        assert "calc" in k.syscalls.names()  # the built-ins are all there
    assert "broken_tools" in caplog.text and "missing_dependency" in caplog.text


async def test_the_sandbox_cannot_read_the_llmos_config_dir(
    scripted_kernel: Kernel, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the live config file: an old copy or editor backup in llmos's config dir."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    backup = tmp_path / "xdg" / "llmos" / "config.toml~"
    backup.parent.mkdir(parents=True)
    _write(backup, 'api_key = "old-sekret"\n')
    out = await _sandboxed(scripted_kernel, f"cat '{backup}'; echo done")
    assert "done" in out
    assert "sekret" not in out
    assert "sekret" in _read(backup)


@pytest.mark.parametrize("expression", ["1e308*10", "1e308+1e308", "-(1e308*10)", "1e999"])
def test_calc_refuses_a_float_overflow(expression: str) -> None:
    from llmos.errors import BadArguments
    from llmos.tools.basic import evaluate

    with pytest.raises(BadArguments, match="overflows a float"):
        evaluate(expression)
    assert evaluate("1.5**2") == 2.25 and evaluate("17*23") == 391 and evaluate("2**10") == 1024


async def test_program_plugins_load_by_name_and_a_broken_one_warns(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`llmos.programs` entry points load through the same registry as the built-ins: a good
    one is spawnable by name; a broken one, a sync function or one taking a built-in's name
    costs only itself, with a warning."""
    import importlib.metadata as md

    from tests.conftest import scripted_factory

    async def greet(ctx: Any, who: str) -> str:
        return f"hello {who}"

    def not_async(ctx: Any) -> None:
        return None

    class EP:
        def __init__(self, name: str, obj: Any) -> None:
            self.name, self.obj = name, obj

        def load(self) -> Any:
            if isinstance(self.obj, BaseException):
                raise self.obj
            return self.obj

    eps = [
        EP("greet", greet),
        EP("broken_agent", ImportError("No module named 'agent_dependency'")),
        EP("sync_agent", not_async),
        EP("chat", greet),
    ]
    real = md.entry_points
    monkeypatch.setattr(
        md, "entry_points", lambda **kw: eps if kw.get("group") == "llmos.programs" else real(**kw)
    )
    async with Kernel(settings, backend_factory=scripted_factory()) as k:
        assert {"chat", "assistant", "react", "rag", "greet"} <= set(k.programs)
        assert "broken_agent" not in k.programs and "sync_agent" not in k.programs
        assert k.programs["chat"] is not greet  # a plug-in can't replace a built-in

        async def parent(ctx: Any) -> Any:
            pid = await ctx.sys.proc.spawn(program="greet", args=["Ada"])
            await ctx.sys.proc.wait(pid=pid)
            return k.get(pid).result

        p = await k.spawn(parent, caps=["proc.*"])
        assert await k.wait(p.pid) == 0, p.error
        assert p.result == "hello Ada"
    for what in ("broken_agent", "agent_dependency", "sync_agent", "built-in"):
        assert what in caplog.text, what
