"""The `assistant` agent: core memory pinned, turns persisted and logged, compaction.

The scripted engine shows each prompt exactly (its responder receives the conversation as
rendered by the chat template, minus the special tokens), so the layout is pinned here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmos.agents.assistant import ACK, DEFAULT_PERSONA, remembered_fact
from llmos.config import load_settings
from llmos.kernel.kernel import Kernel
from llmos.memory.core import core_append, core_read
from tests.conftest import scripted_factory


class Recorder:
    """A responder that records every conversation; summaries get a numbered stand-in."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.summaries = 0

    def __call__(self, conversation: str) -> str:
        self.seen.append(conversation)
        if conversation.rstrip().endswith("Summary:"):
            self.summaries += 1
            return f"SUMMARY {self.summaries}"
        last = conversation.strip().splitlines()[-1].removeprefix("<|user|>")
        return f"You said: {last}"


async def ask(kernel: Kernel, message: str, agent: str = "assistant") -> Any:
    proc = await kernel.spawn("assistant", message, agent, name=agent)
    code = await kernel.wait(proc.pid)
    assert code == 0, (proc.result, proc.error)
    return proc


def log_of(kernel: Kernel, agent: str = "assistant") -> str:
    return kernel.memory.read(f"/home/{agent}/recall/log.md")


async def test_core_memory_is_pinned_and_turns_carry_over_to_the_next_process(
    settings: Any,
) -> None:
    rec = Recorder()
    async with Kernel(settings, backend_factory=scripted_factory(responder=rec)) as k:
        p = await ask(k, "hi")
        assert p.stdout.getvalue() == "You said: hi"
        assert rec.seen[-1] == f"<|system|>{DEFAULT_PERSONA}\n<|user|>hi\n"
        core_append(k.memory, "assistant", "human", "- likes tea")
    # A new kernel on the same data dir: the conversation continues from disk.
    async with Kernel(settings, backend_factory=scripted_factory(responder=rec)) as k:
        p = await ask(k, "again")
        assert p.stdout.getvalue() == "You said: again"
        assert rec.seen[-1] == (
            f"<|system|>{DEFAULT_PERSONA}\n\nWhat you know about the user:\n- likes tea\n"
            "<|user|>hi\nYou said: hi\n<|user|>again\n"  # (<|assistant|> is a special token)
        )
        assert log_of(k) == (
            "**user**: hi\n\n**assistant**: You said: hi\n\n"
            "**user**: again\n\n**assistant**: You said: again\n\n"
        )
        state = json.loads(k.memory.read("/home/assistant/state.json"))
        assert state["turns"] == [
            ["user", "hi"], ["assistant", "You said: hi"],
            ["user", "again"], ["assistant", "You said: again"],
        ]  # fmt: skip


async def test_agents_have_separate_homes(scripted_kernel: Kernel) -> None:
    await ask(scripted_kernel, "I am bob's", agent="bob")
    await ask(scripted_kernel, "I am the default's")
    assert "bob's" in log_of(scripted_kernel, "bob")
    assert "bob's" not in log_of(scripted_kernel)
    fs = scripted_kernel.memory
    assert fs.stat("/home/bob").owner == "bob" and fs.stat("/home/bob").mode == 0o700


async def test_a_bad_agent_name_is_one_error_line(scripted_kernel: Kernel) -> None:
    proc = await scripted_kernel.spawn("assistant", "hi", "../etc")
    assert await scripted_kernel.wait(proc.pid) == 2
    assert "bad agent name '../etc'" in str(proc.result)


def test_remember_rule() -> None:
    assert remembered_fact("remember that I live in Paris.") == "I live in Paris"
    assert remembered_fact("Please remember: my dog is Rex") == "my dog is Rex"
    assert remembered_fact("Remember that\nI am left-handed!") == "I am left-handed"
    assert remembered_fact("remember when we met?") is None
    assert remembered_fact("remember that thing I said?") is None
    assert remembered_fact("do you remember that I live in Paris") is None
    assert remembered_fact("what is 2+2") is None


async def test_remember_appends_to_the_human_block_without_the_model(settings: Any) -> None:
    rec = Recorder()
    async with Kernel(settings, backend_factory=scripted_factory(responder=rec)) as k:
        p = await ask(k, "remember that I live in Paris")
        assert p.stdout.getvalue() == ACK
        assert rec.seen == []  # the rule answered; no generation
        assert core_read(k.memory, "assistant")["human"] == "- I live in Paris"
        await ask(k, "where do I live?")
        assert rec.seen[-1] == (
            f"<|system|>{DEFAULT_PERSONA}\n\nWhat you know about the user:\n- I live in Paris\n"
            f"<|user|>remember that I live in Paris\n{ACK}\n<|user|>where do I live?\n"
        )
        assert f"**assistant**: {ACK}" in log_of(k)


async def test_turns_past_75_percent_of_the_context_fold_into_a_summary(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", seq_ctx_max=600)  # 450 is 75%
    rec = Recorder()
    m = [f"message number {i} " + "x" * 30 for i in range(7)]  # m[1]..m[6] are used
    async with Kernel(settings, backend_factory=scripted_factory(responder=rec)) as k:
        for i in (1, 2, 3):  # a scripted token is a byte: three exchanges fit under 450
            await ask(k, m[i])
        assert rec.summaries == 0
        await ask(k, m[4])
        assert rec.summaries == 1
        # The older half of the seven live turns was folded, cut where a question starts so
        # no answer is left without its question (Conversation.compact's cut).
        summarize_prompt = next(s for s in rec.seen if s.rstrip().endswith("Summary:"))
        assert summarize_prompt == (
            "<|user|>Summarize the conversation below in a few sentences, keeping names, facts "
            f"and decisions.\n\nuser: {m[1]}\nassistant: You said: {m[1]}\nuser: {m[2]}"
            f"\nassistant: You said: {m[2]}\n\nSummary:\n"
        )
        fs = k.memory
        assert fs.read("/home/assistant/recall/summary.md") == "SUMMARY 1"
        assert rec.seen[-1] == (
            f"<|system|>{DEFAULT_PERSONA}\n\nSummary of the earlier conversation:\nSUMMARY 1\n"
            f"<|user|>{m[3]}\nYou said: {m[3]}\n<|user|>{m[4]}\n"
        )
        turns = json.loads(fs.read("/home/assistant/state.json"))["turns"]
        assert turns == [
            ["user", m[3]], ["assistant", f"You said: {m[3]}"],
            ["user", m[4]], ["assistant", f"You said: {m[4]}"],
        ]  # fmt: skip
        assert log_of(k).count("**user**:") == 4  # the log keeps every turn
        # The next fold summarizes the earlier summary together with the next older turns.
        await ask(k, m[5])
        assert rec.summaries == 2
        later = [s for s in rec.seen if s.rstrip().endswith("Summary:")][1]
        assert (
            f"decisions.\n\nSUMMARY 1\nuser: {m[3]}\nassistant: You said: {m[3]}\n\nSummary:"
            in later
        )
        assert fs.read("/home/assistant/recall/summary.md") == "SUMMARY 2"
        assert log_of(k).count("**user**:") == 5


async def test_real_model_answer_streams_and_both_turns_are_logged(real_kernel: Kernel) -> None:
    proc = await real_kernel.spawn(
        "assistant", "What is the capital of France?", "assistant", {"max_tokens": 48, "seed": 1},
        name="assistant",
    )  # fmt: skip
    chunks = [c async for c in proc.stdout.follow()]
    assert await real_kernel.wait(proc.pid) == 0, proc.result
    answer = "".join(chunks)
    assert len(chunks) >= 3 and answer.strip()  # streamed piece by piece
    log = log_of(real_kernel)
    assert log == (
        f"**user**: What is the capital of France?\n\n**assistant**: {proc.result['text']}\n\n"
    )
    assert proc.result["text"] == answer


async def test_two_questions_at_once_to_one_agent_both_stay_in_its_turns(settings: Any) -> None:
    rec = Recorder()
    async with Kernel(settings, backend_factory=scripted_factory(responder=rec)) as k:
        first = await k.spawn("assistant", "one", "assistant", name="assistant")
        second = await k.spawn("assistant", "two", "assistant", name="assistant")
        assert await k.wait(first.pid) == 0 and await k.wait(second.pid) == 0
        state = json.loads(k.memory.read("/home/assistant/state.json"))
        assert state["turns"] == [
            ["user", "one"], ["assistant", "You said: one"],
            ["user", "two"], ["assistant", "You said: two"],
        ]  # fmt: skip
        assert "<|user|>one\nYou said: one\n<|user|>two" in rec.seen[-1]  # it saw the first


async def test_the_assistants_memory_reads_and_writes_are_audited(scripted_kernel: Kernel) -> None:
    p = await ask(scripted_kernel, "hi")
    rows = scripted_kernel.proctable.audit_rows(pid=p.pid)
    names = [r["syscall"] for r in rows]
    assert "kernel:fs.write" in names  # state.json, the persona seeded on first use
    assert "kernel:fs.append" in names  # the recall log
    assert "kernel:fs.read" in names
    assert all(r["outcome"] == "ok" for r in rows if r["syscall"].startswith("kernel:"))
