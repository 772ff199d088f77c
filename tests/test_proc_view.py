"""/proc: a read-only view of the kernel's processes through the fs syscalls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import PermissionDenied
from llmos.kernel.oneshot import run_syscall
from llmos.memory.fs import MemoryFS, NotFound, ReadOnly


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines())


async def _sleeper(ctx: Any, gate: asyncio.Event) -> int:
    ctx.print("hello from the sleeper")
    await gate.wait()
    return 3


async def test_ls_and_cat_proc(scripted_kernel: Any) -> None:
    k = scripted_kernel
    gate = asyncio.Event()
    proc = await k.spawn(_sleeper, gate, name="sleeper", nice=5, model="m1")
    await asyncio.sleep(0)  # let it print
    entries = await run_syscall(k, "fs.ls", {"path": "/proc"})
    pids = [int(e["path"].rsplit("/", 1)[1]) for e in entries]
    assert proc.pid in pids and pids == sorted(k.procs)  # itself (the ls) included
    mine = next(e for e in entries if e["path"] == f"/proc/{proc.pid}")
    assert (mine["kind"], mine["owner"], mine["mode"]) == ("dir", "sleeper", "0o555")
    files = await run_syscall(k, "fs.ls", {"path": f"/proc/{proc.pid}"})
    assert [f["path"].rsplit("/", 1)[1] for f in files] == ["status", "stdout", "stderr"]

    status = _status(await run_syscall(k, "fs.read", {"path": f"/proc/{proc.pid}/status"}))
    assert status["pid"] == str(proc.pid) and status["name"] == "sleeper"
    assert status["state"] == "running" and status["nice"] == "5" and status["model"] == "m1"
    assert status["exit_code"] == "-" and status["tokens"] == "0"
    out = await run_syscall(k, "fs.read", {"path": f"/proc/{proc.pid}/stdout"})
    assert out == "hello from the sleeper\n"

    gate.set()
    assert await k.wait(proc.pid) == 3
    status = _status(await run_syscall(k, "fs.read", {"path": f"/proc/{proc.pid}/status"}))
    assert (status["state"], status["exit_code"], status["exit_reason"]) == ("exited", "3", "exit")
    stat = await run_syscall(k, "fs.stat", {"path": f"/proc/{proc.pid}/status"})
    assert stat["size"] == len(
        await run_syscall(k, "fs.read", {"path": f"/proc/{proc.pid}/status"})
    )
    found = await run_syscall(k, "fs.find", {"pattern": "stdout", "path": "/proc"})
    assert f"/proc/{proc.pid}/stdout" in found
    grep = await run_syscall(k, "fs.grep", {"pattern": "^name:\tsleeper$", "path": "/proc"})
    assert [m["path"] for m in grep] == [f"/proc/{proc.pid}/status"]


async def test_proc_is_read_only(scripted_kernel: Any) -> None:
    k = scripted_kernel
    await run_syscall(k, "fs.ls", {"path": "/proc"})  # pid 1 exists from here on
    for name, args in [
        ("fs.write", {"path": "/proc/1/status", "content": "x"}),
        ("fs.write", {"path": "/proc/new", "content": "x"}),
        ("fs.mkdir", {"path": "/proc/2/dir"}),
        ("fs.rm", {"path": "/proc/1", "recursive": True}),
        ("fs.append", {"path": "/proc/1/stdout", "content": "x"}),
    ]:
        with pytest.raises(ReadOnly):
            await run_syscall(k, name, args)
    with pytest.raises(NotFound):
        await run_syscall(k, "fs.read", {"path": "/proc/999/status"})
    with pytest.raises(NotFound):
        await run_syscall(k, "fs.ls", {"path": "/proc/1/nothing"})


async def test_stdout_is_private_to_its_process(scripted_kernel: Any) -> None:
    """An agent with read grants on /proc sees every status but only its own stdout."""
    k = scripted_kernel
    gate = asyncio.Event()
    other = await k.spawn(_sleeper, gate, name="other")

    async def agent(ctx: Any) -> dict[str, Any]:
        ctx.print("mine")
        seen: dict[str, Any] = {"own": await ctx.sys.fs.read(path=f"/proc/{ctx.pid}/stdout")}
        seen["status"] = await ctx.sys.fs.read(path=f"/proc/{other.pid}/status")
        try:
            await ctx.sys.fs.read(path=f"/proc/{other.pid}/stdout")
        except PermissionDenied as exc:
            seen["denied"] = str(exc)
        return seen

    proc = await k.spawn(agent, name="agentx", caps=["fs.read:/proc/**"])
    await k.wait(proc.pid)
    assert proc.result["own"] == "mine\n"
    assert "name:\tother\n" in proc.result["status"]
    assert "permission denied for agentx" in proc.result["denied"]
    gate.set()


def test_memory_fs_without_a_kernel_has_an_empty_proc(tmp_path: Path) -> None:
    fs = MemoryFS(tmp_path / "m")
    assert fs.ls("/proc") == [] and not fs.exists("/proc/1")
    assert fs.stat("/proc").kind == "dir"
    with pytest.raises(NotFound):
        fs.read("/proc/1/status")
