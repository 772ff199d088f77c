"""Processes: stderr, immediate KILL versus cooperative TERM, the table's live state,
time-based audit flushes, and the bound on ended processes kept in memory.

No test waits on the wall clock for something to happen: programs say they have started
with an event, and the process table's audit ages by a clock the test holds."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from llmos.core.process import ProcessState, Signal
from llmos.core.syscall import AuditRecord
from llmos.errors import NoSuchProcess, ProcessKilled
from llmos.kernel.kernel import Kernel
from llmos.kernel.proctable import AUDIT_MAX_AGE_S, ProcTable
from llmos.memory.procfs import ProcView
from tests.conftest import scripted_factory


async def test_crash_and_budget_kill_go_to_stderr(scripted_kernel: Kernel) -> None:
    k = scripted_kernel

    async def bad(ctx: Any) -> None:
        ctx.print("working")
        ctx.eprint("warning: about to fail")
        raise RuntimeError("agent bug")

    p = await k.spawn(bad)
    assert await k.wait(p.pid) == 1
    err = p.stderr.getvalue()
    assert err.startswith("warning: about to fail\n")
    assert "Traceback" in err and "RuntimeError: agent bug" in err
    assert "Traceback" not in p.stdout.getvalue() and "working" in p.stdout.getvalue()
    assert p.message == "RuntimeError: agent bug"  # still shown where it was
    assert p.stderr.log_path is not None and p.stderr.log_path != p.log_path
    assert "RuntimeError: agent bug" in p.stderr.log_path.read_text()
    assert ProcView.of_kernel(k).read(f"/proc/{p.pid}/stderr") == err

    async def chatty(ctx: Any) -> None:
        while True:
            await ctx.sys.sys.echo(text="x")

    q = await k.spawn(chatty, caps=["sys.echo"], budgets={"max_syscalls": 3})
    assert await k.wait(q.pid) == -9
    assert "over budget: max_syscalls 3" in q.stderr.getvalue()
    assert "over budget: max_syscalls 3" in q.stdout.getvalue()


async def test_kill_is_immediate_even_for_a_program_that_catches_cancellation(
    scripted_kernel: Kernel,
) -> None:
    k = scripted_kernel
    seen: list[str] = []
    ticked, release = asyncio.Event(), asyncio.Event()

    async def stubborn(ctx: Any) -> int:
        while True:
            try:
                await ctx.sys.sys.echo(text="tick")
                ticked.set()
                await asyncio.Event().wait()  # until something interrupts it
            except asyncio.CancelledError:
                seen.append("cancelled")  # ignores it and goes on
            except ProcessKilled as exc:
                seen.append(f"dead: {exc}")
                await release.wait()  # runs on after its death until the test lets it go
                return 0

    p = await k.spawn(stubborn, caps=["sys.echo"])
    await ticked.wait()
    k.signal(p.pid, Signal.KILL, reason="stop it")
    # Dead at once: exit status, state and waiters do not wait for the program, which
    # cannot end before `release` (the deadline only turns a hang into a failure).
    assert not p.alive and p.exit_code == -9 and p.exit_reason == "stop it"
    assert await asyncio.wait_for(k.wait(p.pid), 30) == -9
    assert p.task is not None and not p.task.done()
    assert p.stdout.closed and p.stderr.closed and not p.generations
    release.set()
    await asyncio.wait_for(asyncio.shield(p.task), 30)
    assert seen[0] == "cancelled" and seen[1].startswith("dead:") and len(seen) == 2
    assert p.exit_code == -9 and p.state is ProcessState.EXITED  # unchanged by its return
    rows = [r for r in k.history() if r["pid"] == p.pid]
    assert rows[0]["state"] == "exited" and rows[0]["exit_code"] == -9


async def test_term_is_cooperative(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    asleep, polling = asyncio.Event(), asyncio.Event()

    async def tidy(ctx: Any) -> int:
        try:
            asleep.set()
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            assert ctx.terminating
            assert ctx.process.alive and ctx.process.exit_code is None
            await ctx.sys.sys.echo(text="still allowed")  # it may clean up with syscalls
            ctx.print("cleaned up")
            return 3
        return 0

    p = await k.spawn(tidy, caps=["sys.echo"])
    await asyncio.wait_for(asleep.wait(), 30)
    k.signal(p.pid, Signal.TERM)
    assert p.alive and p.exit_code is None  # no exit status while it still runs
    assert await k.wait(p.pid) == 3
    assert "cleaned up" in p.stdout.getvalue()

    async def polite(ctx: Any) -> int:
        polling.set()
        while not ctx.terminating:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass  # checks the flag instead
        return 4

    q = await k.spawn(polite)
    await asyncio.wait_for(polling.wait(), 30)
    k.signal(q.pid, "TERM")
    assert await k.wait(q.pid) == 4


async def test_table_shows_running_and_stopped(scripted_kernel: Kernel) -> None:
    k = scripted_kernel

    async def sleeper(ctx: Any) -> None:
        await asyncio.sleep(30)

    p = await k.spawn(sleeper)

    def state() -> str:
        return next(r["state"] for r in k.history() if r["pid"] == p.pid)

    assert state() == "ready"
    await asyncio.sleep(0)
    assert state() == "running"
    k.signal(p.pid, Signal.STOP)
    assert state() == "stopped"
    k.signal(p.pid, Signal.CONT)
    assert state() == "running"
    k.signal(p.pid, Signal.KILL)
    assert state() == "exited"


def _disk_audit(k: Kernel) -> int:
    assert k.proctable is not None
    db = sqlite3.connect(k.proctable.path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
    finally:
        db.close()


def test_audit_is_flushed_once_the_oldest_buffered_row_is_old(tmp_path: Path) -> None:
    """Rows wait in memory (one costs no transaction) until one arrives when the oldest
    buffered is AUDIT_MAX_AGE_S old; then they all go to disk. The table runs on the
    test's clock, so "old" takes no waiting."""
    now = 1000.0
    table = ProcTable(tmp_path / "kernel.db", clock=lambda: now)
    rec = AuditRecord(pid=1, name="sys.echo", outcome="ok", duration_s=0.0, args_digest="")

    def on_disk() -> int:
        db = sqlite3.connect(table.path)
        try:
            return int(db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
        finally:
            db.close()

    table.audit(rec)
    now += AUDIT_MAX_AGE_S - 0.01
    table.audit(rec)
    assert on_disk() == 0  # the oldest is not yet old enough
    now += 0.02
    table.audit(rec)
    assert on_disk() == 3
    assert [r["ts"] for r in table.audit_rows()] == [1000.0, 1000.99, 1001.01]
    table.close()


async def test_a_syscalls_audit_row_is_buffered_until_its_process_exits(
    scripted_kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmos.kernel.proctable as pt

    monkeypatch.setattr(pt, "AUDIT_MAX_AGE_S", 3600.0)  # no age flush in this test
    k = scripted_kernel
    echoed, go = asyncio.Event(), asyncio.Event()

    async def once(ctx: Any) -> None:
        await ctx.sys.sys.echo(text="a")
        echoed.set()
        await go.wait()

    p = await k.spawn(once, caps=["sys.echo"])
    await echoed.wait()
    assert _disk_audit(k) == 0
    go.set()
    await k.wait(p.pid)
    assert _disk_audit(k) == 1  # every exit flushes


async def test_audit_timer_flushes_without_further_syscalls(
    scripted_kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmos.kernel.proctable as pt

    monkeypatch.setattr(pt, "AUDIT_MAX_AGE_S", 0.01)
    k = scripted_kernel
    assert k.proctable is not None
    table, flushed = k.proctable, asyncio.Event()
    flush = table.flush

    def flush_and_tell() -> None:  # the same flush, which also says it ran
        flush()
        flushed.set()

    monkeypatch.setattr(table, "flush", flush_and_tell)

    async def once(ctx: Any) -> None:
        await ctx.sys.sys.echo(text="a")
        await asyncio.Event().wait()  # alive, and no further syscall or exit to flush

    p = await k.spawn(once, caps=["sys.echo"])
    await asyncio.wait_for(flushed.wait(), 30)  # a deadline: only the timer can flush
    assert _disk_audit(k) == 1 and p.alive
    k.signal(p.pid, Signal.KILL)


async def test_only_the_newest_reaped_processes_stay_in_memory(settings: Any) -> None:
    async def quick(ctx: Any, i: int) -> int:
        return i

    settings = settings.model_copy(update={"keep_reaped": 3})
    async with Kernel(settings, backend_factory=scripted_factory()) as k:
        held = await k.spawn(lambda ctx: asyncio.sleep(30), name="held")
        procs = [await k.spawn(quick, i) for i in range(10)]
        await asyncio.gather(*(p.wait() for p in procs))
        assert [p.exit_code for p in procs] == list(range(10))
        assert sorted(k.procs) == [held.pid, *[p.pid for p in procs[-3:]]]
        with pytest.raises(NoSuchProcess):
            k.get(procs[0].pid)
        assert len(k.history(limit=100)) == 11  # the rest remain in SQLite
        assert await k.wait(procs[0].pid) == 0  # its exit status too
        k.signal(held.pid, Signal.KILL)


async def test_shutdown_does_not_wait_forever_for_a_program_that_swallows_cancellation(
    settings: Any,
) -> None:
    released, running = asyncio.Event(), asyncio.Event()

    async def stubborn(ctx: Any) -> int:
        running.set()
        while not released.is_set():  # the test lets it go after shutdown returned
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # ignores every cancellation, makes no syscall
        return 0

    k = Kernel(settings, backend_factory=scripted_factory())
    await k.start()
    k.shutdown_grace_s = 0.2
    p = await k.spawn(stubborn)
    await asyncio.wait_for(running.wait(), 30)
    await asyncio.wait_for(k.shutdown(), timeout=30)  # fails here if shutdown hangs
    assert p.exit_code == -9 and not k.booted
    assert p.task is not None and not p.task.done()  # shutdown left it, still running
    released.set()  # so the test's own loop can close
    await asyncio.wait_for(asyncio.shield(p.task), 30)
