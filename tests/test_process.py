"""Processes: lifecycle, signals, budgets, crashes, orphans, IPC, the persistent table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from llmos.core.process import ProcessState, Signal
from llmos.errors import NoSuchProcess, PermissionDenied, ToolFailed
from llmos.kernel.kernel import Kernel
from tests.conftest import scripted_factory


async def sleeper(ctx: Any, seconds: float = 30.0) -> int:
    await asyncio.sleep(seconds)
    return 0


async def turns(cond: Callable[[], bool], limit: int = 1000) -> None:
    """Let the event loop run until `cond` holds: counted in loop turns, not seconds, so a
    slow machine changes nothing."""
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not so after {limit} loop turns")


async def test_spawn_wait_exit_code_and_result(scripted_kernel: Kernel) -> None:
    async def prog(ctx: Any, a: int, b: int) -> int:
        ctx.print("sum", a + b)
        return 7

    p = await scripted_kernel.spawn(prog, 2, 3)
    assert await scripted_kernel.wait(p.pid) == 7
    assert p.state is ProcessState.EXITED and p.exit_reason == "exit"
    assert "sum 5" in p.stdout.getvalue()
    assert p.log_path is not None and "sum 5" in p.log_path.read_text()


async def test_crash_keeps_kernel_running_with_traceback_in_log(scripted_kernel: Kernel) -> None:
    async def bad(ctx: Any) -> None:
        raise RuntimeError("agent bug")

    async def good(ctx: Any) -> str:
        await asyncio.sleep(0.01)
        return "fine"

    b = await scripted_kernel.spawn(bad)
    g = await scripted_kernel.spawn(good)
    assert await scripted_kernel.wait(b.pid) == 1
    assert await scripted_kernel.wait(g.pid) == 0 and g.result == "fine"
    assert b.exit_reason == "crashed"
    assert b.log_path is not None
    log = b.log_path.read_text()
    assert "Traceback" in log and "RuntimeError: agent bug" in log


async def test_term_kill_stop_cont(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    p = await k.spawn(sleeper)
    await asyncio.sleep(0)
    k.signal(p.pid, Signal.TERM)
    assert await k.wait(p.pid) == -15 and p.exit_reason == "terminated"

    p = await k.spawn(sleeper)
    await asyncio.sleep(0)
    k.signal(p.pid, "KILL")
    assert await k.wait(p.pid) == -9

    progress: list[int] = []

    async def ticker(ctx: Any) -> int:
        for i in range(40):
            await ctx.sys.sys.echo(text=str(i))  # a syscall waits while STOPPED
            progress.append(i)
            await asyncio.sleep(0)
        return 0

    p = await k.spawn(ticker)
    await turns(lambda: len(progress) >= 3)
    k.signal(p.pid, Signal.STOP)
    assert p.state is ProcessState.STOPPED
    for _ in range(5):  # a syscall already under way may still finish
        await asyncio.sleep(0)
    frozen = len(progress)
    for _ in range(200):  # running, it would finish in far fewer turns
        await asyncio.sleep(0)
    assert len(progress) == frozen < 40  # no progress while stopped
    k.signal(p.pid, Signal.CONT)
    assert await k.wait(p.pid) == 0 and len(progress) == 40


async def test_budgets_kill_with_a_clear_reason(settings: Any) -> None:
    async with Kernel(settings, backend_factory=scripted_factory()) as k:

        async def chatty(ctx: Any) -> int:
            for _ in range(100):
                await ctx.sys.sys.echo(text="x")
            return 0

        p = await k.spawn(chatty, budgets={"max_syscalls": 10})
        assert await k.wait(p.pid) == -9
        assert p.exit_reason == "budget: max_syscalls 10"
        assert "over budget" in p.stdout.getvalue()

        p = await k.spawn(sleeper, budgets={"wall_time_s": 0.05})
        assert await k.wait(p.pid) == -9 and p.exit_reason == "budget: wall time 0.05 s"

        async def talker(ctx: Any) -> Any:
            return await ctx.sys.llm.complete(prompt="go on", max_tokens=200)

        p = await k.spawn(talker, budgets={"max_tokens": 20})
        assert await k.wait(p.pid) == -9 and p.exit_reason == "budget: max_tokens 20"

        k.programs["sleeper"] = sleeper

        async def breeder(ctx: Any) -> int:
            for _ in range(5):
                await ctx.sys.proc.spawn(program="sleeper", args=[0.01])
            return 0

        p = await k.spawn(breeder, caps=["proc.*"], budgets={"max_children": 2})
        assert await k.wait(p.pid) == -9 and p.exit_reason == "budget: max_children 2"
        assert len(p.children) == 2


async def test_children_zombies_and_orphans(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    k.programs["sleeper"] = sleeper

    async def parent(ctx: Any) -> Any:
        quick = await ctx.sys.proc.spawn(program="sleeper", args=[0.0])
        slow = await ctx.sys.proc.spawn(program="sleeper", args=[30])
        status = await ctx.sys.proc.wait(pid=quick)
        orphan = await ctx.sys.proc.spawn(program="sleeper", args=[0.0])
        # the orphan ends first: a zombie until we exit
        await turns(lambda: not k.get(orphan).alive)
        assert k.get(orphan).state is ProcessState.ZOMBIE
        killed = await ctx.sys.proc.kill(pid=slow, signal="KILL")
        return [status.exit_code, killed, orphan, slow, quick]

    p = await k.spawn(parent, caps=["proc.*"])
    assert await k.wait(p.pid) == 0, p.error
    code, killed, orphan, slow, quick = p.result
    assert k.proctable is not None
    k.proctable.flush()
    row = k.proctable.row(quick)
    assert row is not None and row["state"] == "exited"  # reaped: the table says so too
    assert code == 0 and killed == f"sent KILL to {slow}"
    assert k.get(orphan).state is ProcessState.EXITED  # reaped by the kernel
    await k.wait(slow)
    assert k.get(slow).exit_code == -9


async def test_proc_syscalls_guard_other_processes(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    other = await k.spawn(sleeper)

    async def meddler(ctx: Any) -> list[str]:
        out = []
        for call in (
            ctx.sys.proc.kill(pid=other.pid),
            ctx.sys.proc.spawn(program="react", args=["x"], caps=["shell.exec"]),
            ctx.sys.proc.wait(pid=99999),
        ):
            try:
                await call
            except (PermissionDenied, ToolFailed, Exception) as exc:
                out.append(getattr(exc, "kind", type(exc).__name__))
        return out

    p = await k.spawn(meddler, caps=["proc.*"])
    await k.wait(p.pid)
    assert p.result == ["permission_denied", "permission_denied", "bad_arguments"]
    assert other.alive
    k.signal(other.pid, Signal.KILL)


async def test_ipc_send_and_blocking_recv_with_timeout(scripted_kernel: Kernel) -> None:
    k = scripted_kernel

    async def server(ctx: Any) -> Any:
        msg = await ctx.sys.ipc.recv(timeout_s=5)
        await ctx.sys.ipc.send(pid=msg["from"], message={"echo": msg["message"]})
        try:
            await ctx.sys.ipc.recv(timeout_s=0.01)
        except ToolFailed as exc:
            return exc.kind
        return "no timeout"

    srv = await k.spawn(server, caps=["ipc"])

    async def client(ctx: Any) -> Any:
        await ctx.sys.ipc.send(pid=srv.pid, message="ping")
        return (await ctx.sys.ipc.recv(timeout_s=5))["message"]

    c = await k.spawn(client, caps=["ipc"])
    assert await k.wait(c.pid) == 0, c.error
    assert c.result == {"echo": "ping"}
    await k.wait(srv.pid)
    assert srv.result == "tool_failed"

    async def no_cap(ctx: Any) -> Any:
        return await ctx.sys.ipc.send(pid=srv.pid, message="x")

    n = await k.spawn(no_cap)
    assert await k.wait(n.pid) == 1 and "PermissionDenied" in (n.error or "")


async def test_history_survives_restart_and_lost_processes_restart(settings: Any) -> None:
    k1 = Kernel(settings, backend_factory=scripted_factory())
    await k1.start()
    done = await k1.spawn(sleeper, 0.0, name="quick")
    await k1.wait(done.pid)
    running = await k1.spawn(sleeper, 0.2, name="interrupted")
    await asyncio.sleep(0)
    boot1 = k1.proctable.boot if k1.proctable else 0
    # The kernel "dies": its table is closed with a process still marked running.
    assert k1.proctable is not None
    k1.proctable.close()
    k1.proctable = None
    k1.syscalls.audit = None
    await k1.shutdown()

    async with Kernel(settings, backend_factory=scripted_factory()) as k2:
        rows = {(r["boot"], r["name"]): r for r in k2.history()}
        assert rows[(boot1, "quick")]["state"] == "exited"
        assert rows[(boot1, "interrupted")]["state"] == "lost"
        p = await k2.restart_lost(boot1, running.pid)
        assert await k2.wait(p.pid) == 0 and p.name == "interrupted"
        assert {r["state"] for r in k2.history() if r["boot"] == boot1} == {
            "exited",
            "restarted",
        }
        with pytest.raises(NoSuchProcess):
            await k2.restart_lost(boot1, running.pid)


async def test_a_live_kernel_sharing_the_data_dir_is_not_marked_lost(settings: Any) -> None:
    """Rows of a kernel in another, still running OS process stay as they are."""
    import os
    import sqlite3

    async with Kernel(settings, backend_factory=scripted_factory()) as k1:
        p = await k1.spawn(sleeper, 30)
        await asyncio.sleep(0)  # it starts running
        assert k1.proctable is not None
        db = sqlite3.connect(k1.proctable.path)
        db.execute("UPDATE boots SET os_pid=? WHERE boot=?", (os.getppid(), k1.proctable.boot))
        db.commit()
        async with Kernel(settings, backend_factory=scripted_factory()) as k2:
            rows = [r for r in k2.history() if r["boot"] == k1.proctable.boot]
            assert [r["state"] for r in rows] == ["running"]  # as it is, not lost
        k1.signal(p.pid, Signal.KILL)
