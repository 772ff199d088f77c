"""Kernel lifecycle on the scripted engine, and llm.chat on the real model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from llmos.core.process import ProcessState
from llmos.errors import BadArguments, UnknownSyscall
from llmos.kernel.kernel import Kernel


async def test_boot_spawn_wait_shutdown(settings: Any) -> None:
    from tests.conftest import scripted_factory

    async def prog(ctx: Any, who: str) -> int:
        ctx.print(f"hi {who} from {ctx.pid}")
        return 3

    k = Kernel(settings, backend_factory=scripted_factory())
    async with k:
        p = await k.spawn(prog, "ada")
        assert p.pid == 1
        assert await k.wait(p.pid) == 3
        assert p.state is ProcessState.EXITED
        assert p.stdout.getvalue() == "hi ada from 1\n"
        assert [r["pid"] for r in k.ps()] == [1]
    assert not k.booted


async def test_llm_chat_streams_to_stdout(scripted_kernel: Kernel) -> None:
    async def prog(ctx: Any) -> str:
        r = await ctx.sys.llm.chat(messages=[{"role": "user", "content": "ping"}], temperature=0)
        return str(r.text)

    p = await scripted_kernel.spawn(prog)
    chunks = [c async for c in p.stdout.follow()]
    assert await scripted_kernel.wait(p.pid) == 0
    assert p.result == "You said: ping"
    assert "".join(chunks) == "You said: ping"
    assert len(chunks) > 1  # streamed token by token
    assert p.tokens == len("You said: ping") + 1  # + end of generation


async def test_llm_complete_ignore_eos_generates_exactly_max_tokens(
    scripted_kernel: Kernel,
) -> None:
    async def prog(ctx: Any) -> Any:
        prompt = "<|user|>ping\n<|assistant|>"
        free = await ctx.sys.llm.complete(prompt=prompt, max_tokens=40, temperature=0)
        fixed = await ctx.sys.llm.complete(
            prompt=prompt, max_tokens=40, temperature=0, ignore_eos=True
        )
        errors = []
        for bad in ({}, {"max_tokens": 5, "grammar": 'root ::= "a"'}):
            try:
                await ctx.sys.llm.complete(prompt=prompt, ignore_eos=True, **bad)
            except Exception as exc:
                errors.append(str(exc))
        return free, fixed, errors

    p = await scripted_kernel.spawn(prog)
    assert await scripted_kernel.wait(p.pid) == 0, p.error
    free, fixed, errors = p.result
    assert free.finish_reason == "stop" and free.text == "You said: ping"
    assert fixed.finish_reason == "length" and fixed.tokens == 40
    assert fixed.text.startswith("You said: ping")
    assert len(errors) == 2, errors
    assert "ignore_eos needs max_tokens" in errors[0]
    assert "ignore_eos cannot be combined with a grammar" in errors[1]


async def test_unknown_syscall_and_bad_arguments_are_typed(scripted_kernel: Kernel) -> None:
    seen: list[BaseException] = []

    async def prog(ctx: Any) -> None:
        for call in (
            lambda: ctx.sys.no.such(),
            lambda: ctx.sys.calc(expression=5),
            lambda: ctx.sys.calc(x="1"),
        ):
            try:
                await call()
            except Exception as exc:
                seen.append(exc)

    p = await scripted_kernel.spawn(prog)
    assert await scripted_kernel.wait(p.pid) == 0
    assert isinstance(seen[0], UnknownSyscall)
    assert isinstance(seen[1], BadArguments) and "expression" in str(seen[1])
    assert isinstance(seen[2], BadArguments) and "x" in str(seen[2])


async def test_a_crashing_program_does_not_hurt_the_kernel(scripted_kernel: Kernel) -> None:
    async def bad(ctx: Any) -> None:
        raise ValueError("broken agent")

    async def good(ctx: Any) -> int:
        return int(await ctx.sys.calc(expression="6*7"))

    p1 = await scripted_kernel.spawn(bad)
    p2 = await scripted_kernel.spawn(good)
    assert await scripted_kernel.wait(p1.pid) == 1
    assert await scripted_kernel.wait(p2.pid) == 42
    assert p1.exit_reason == "crashed" and "ValueError: broken agent" in (p1.error or "")


async def test_kill_stops_a_generating_process(settings: Any) -> None:
    from tests.conftest import scripted_factory

    async def prog(ctx: Any) -> None:
        await ctx.sys.llm.complete(prompt="endless", max_tokens=1500)

    slow = scripted_factory(on_decode=lambda entries: time.sleep(0.002))  # ~3 s of tokens
    async with Kernel(settings, backend_factory=slow) as k:
        p = await k.spawn(prog)
        async for _ in p.stdout.follow():
            break
        k.signal(p.pid, "KILL")
        assert await k.wait(p.pid) == -9
        assert p.exit_reason == "killed"
        engine = await k.engine()
        for _ in range(200):  # the engine applies the kill at its next step boundary
            if not engine.seqs:
                break
            await asyncio.sleep(0.01)
        assert not engine.seqs and engine.kv_used() == 0  # killed: no cache kept either
        assert p.tokens < 1500


async def test_llm_chat_with_the_real_model(real_kernel: Kernel) -> None:
    async def prog(ctx: Any) -> Any:
        return await ctx.sys.llm.chat(
            messages=[{"role": "user", "content": "What is the capital of Japan?"}],
            temperature=0,
            max_tokens=30,
        )

    p = await real_kernel.spawn(prog)
    assert await real_kernel.wait(p.pid) == 0
    assert "Tokyo" in p.result.text, p.result.text
    assert p.stdout.getvalue() == p.result.text
    assert p.result.tokens > 0 and p.result.prompt_tokens > 10


def test_chat_formats_by_name_file_or_text(tmp_path: Any) -> None:
    from llmos.errors import ChatTemplateError
    from llmos.kernel.chat import render_chat, resolve_format

    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat(msgs, resolve_format("chatml")).endswith("<|im_start|>assistant\n")
    f = tmp_path / "fmt.jinja"
    f.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert render_chat(msgs, resolve_format(str(f))) == "[hi]"
    with pytest.raises(ChatTemplateError, match="unknown chat format"):
        resolve_format("nope")
    with pytest.raises(ChatTemplateError, match="role"):
        render_chat([{"text": "x"}], resolve_format("plain"))


async def test_ps_and_top_report_generation_statistics(scripted_kernel: Kernel) -> None:
    async def prog(ctx: Any) -> None:
        await ctx.sys.llm.complete(prompt="stats please", max_tokens=20, temperature=0)

    p = await scripted_kernel.spawn(prog, name="stats")
    assert await scripted_kernel.wait(p.pid) == 0
    row = next(r for r in scripted_kernel.ps() if r["pid"] == p.pid)
    assert row["tokens"] == 20 and row["generations"] == 1
    assert (
        row["wait_s"] is not None and row["ttft_s"] is not None and row["turnaround_s"] is not None
    )
    assert row["tok_s"] is not None and row["swaps"] == 0
    top = scripted_kernel.top()
    assert top["processes"] == 0
    (model,) = top["models"]
    assert model["tokens_decoded"] >= 19 and model["slots"] >= 1 and "kv_cells_used" in model
    assert row["model"] == model["model"]  # spawned with no model: the default's name, as used


async def test_declared_services_open_on_demand_and_close_at_shutdown(
    settings: Any, hash_embedder: Any
) -> None:
    """The memory FS, embedder, model manager and process table share one lifecycle: each
    opens on first use (the table at boot), shutdown closes them, a restart opens fresh
    ones; an embedder the caller provided is the caller's and survives."""
    import sqlite3

    from llmos.memory.service import open_memory
    from tests.conftest import scripted_factory

    k = Kernel(settings, backend_factory=scripted_factory(), embedder=hash_embedder)
    async with k:
        assert not k._services.opened(open_memory)  # nothing touched memory yet
        fs, table, models = k.memory, k.proctable, k.models
        assert k.memory is fs and k.models is models and k.embedder is hash_embedder
        assert fs.index.embedder is hash_embedder  # one embedder, shared
        fs.write("/tmp/note.txt", "kept")
        await k.engine()
        assert list(models.loaded) == [settings.default_model]
    assert k.proctable is None and not models.loaded  # engines stopped
    for db in (fs.db, table.db):
        with pytest.raises(sqlite3.ProgrammingError):
            db.execute("SELECT 1")
    async with k:
        assert k.memory is not fs and k.proctable is not table and k.models is not models
        assert k.memory.read("/tmp/note.txt") == "kept"
        assert k.embedder is hash_embedder
