"""Scheduler and engine policy on the scripted backend, with an injected clock.

Each test drives `EngineCore.step()` by hand: no thread, no model, fully deterministic
(one test runs the engine thread, to see how a burst of requests is gathered).
The scripted model's next token is a pure function of the sequence's KV content, so an
output that matches a solo run proves nothing was lost or recomputed across swaps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmos.core.sampling import SamplingParams
from llmos.errors import ContextOverflow
from llmos.kernel.engine import DoneEvent, EngineCore, Sequence, TokenEvent
from llmos.kernel.scheduler import Policy
from llmos.kernel.scripted import ScriptedBackend


@dataclass
class Clock:
    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Out:
    text: str = ""
    chunks: list[str] = field(default_factory=list)
    done: DoneEvent | None = None

    def __call__(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, TokenEvent):
                self.text += ev.text
                self.chunks.append(ev.text)
            else:
                self.done = ev


def make(
    n_slots: int = 4, *, quantum: int = 4, aging_s: float = 1.0, **kw: Any
) -> tuple[EngineCore, Clock]:
    clock = Clock()
    backend = ScriptedBackend(
        n_slots=n_slots,
        n_ctx=kw.pop("n_ctx", 8192),
        responder=kw.pop("responder", None) or (lambda c: "ok"),
        forced=kw.pop("forced", None),
    )
    core = EngineCore(
        backend, policy=Policy(quantum_tokens=quantum, aging_s=aging_s), clock=clock, **kw
    )
    return core, clock


def submit(
    core: EngineCore, prompt: str, n: int = 20, nice: int = 0, **params: Any
) -> tuple[Sequence, Out]:
    out = Out()
    seq = core.submit(
        prompt, SamplingParams(temperature=0, max_tokens=n, **params), sink=out, nice=nice
    )
    return seq, out


def run(core: EngineCore, clock: Clock, max_steps: int = 4000, dt: float = 0.01) -> int:
    steps = 0
    while core._commands or any(s.runnable for s in core.seqs.values()):
        core.step()
        clock.t += dt
        steps += 1
        assert steps < max_steps, "engine did not finish"
    return steps


def solo(prompt: str, n: int = 20) -> str:
    core, clock = make(1)
    _, out = submit(core, prompt, n)
    run(core, clock)
    return out.text


def test_all_runnable_sequences_share_each_step() -> None:
    core, clock = make(4)
    outs = [submit(core, f"prompt {i}", 10)[1] for i in range(3)]
    run(core, clock)
    decode_batches = [b for b in core.backend.batches if all(n == 1 for _, n in b)]  # type: ignore[attr-defined]
    assert max(len(b) for b in decode_batches) == 3  # one decode call served all three
    assert all(o.done is not None and o.done.reason == "length" for o in outs)
    assert [o.text for o in outs] == [solo(f"prompt {i}", 10) for i in range(3)]


def test_sequences_join_and_leave_between_steps() -> None:
    core, clock = make(4)
    _, a = submit(core, "first", 30)
    for _ in range(5):
        core.step()
    _, b = submit(core, "second", 5)
    run(core, clock)
    assert a.text == solo("first", 30) and b.text == solo("second", 5)
    sizes = [len(b) for b in core.backend.batches]  # type: ignore[attr-defined]
    assert 2 in sizes and sizes[-1] == 1  # b joined, finished, a went on alone


def test_long_prompt_is_prefilled_in_chunks_beside_decoding() -> None:
    core, clock = make(4, prefill_chunk=64, n_batch=128)
    _, a = submit(core, "short", 40)
    core.step()
    core.step()
    _, _b = submit(core, "x" * 1000, 3)
    run(core, clock)
    batches = core.backend.batches  # type: ignore[attr-defined]
    prefill_steps = [b for b in batches if any(slot == 1 and n > 1 for slot, n in b)]
    assert len(prefill_steps) >= 1000 // 64
    assert all(
        any(slot == 0 and n == 1 for slot, n in b) for b in prefill_steps[:10]
    )  # a kept decoding
    assert a.text == solo("short", 40)


def test_more_sequences_than_slots_swap_without_recompute() -> None:
    core, clock = make(2, quantum=4)
    prompts = [f"task number {i}" for i in range(5)]
    outs = [submit(core, p, 24)[1] for p in prompts]
    run(core, clock)
    assert [o.text for o in outs] == [solo(p, 24) for p in prompts]
    assert core.stats.swaps_out > 0 and core.stats.swaps_in == core.stats.swaps_out
    # every prompt token was evaluated exactly once: swapping restored state, never recomputed
    assert core.stats.tokens_prefilled == sum(len(core.tokenize(p)) for p in prompts)
    assert all(o.done is not None and o.done.stats.recomputed == 0 for o in outs)
    # measured per sequence, not a constant: each evaluated exactly its own prompt
    assert [o.done.stats.prefilled for o in outs if o.done] == [
        len(core.tokenize(p)) for p in prompts
    ]


def test_round_robin_is_fair_among_equals() -> None:
    core, clock = make(2, quantum=8)
    outs = [submit(core, f"worker {i}", 4000)[1] for i in range(6)]
    for _ in range(600):
        core.step()
        clock.t += 0.001
    served = [len(o.chunks) for o in outs]
    assert min(served) > 0
    assert max(served) / min(served) <= 1.25, served


def test_high_priority_preempts_at_once() -> None:
    core, _clock = make(2, quantum=16)
    for i in range(2):
        submit(core, f"background {i}", 4000)
    for _ in range(5):
        core.step()
    _urgent, out = submit(core, "urgent", 5, nice=-5)
    steps = 0
    while not out.chunks:
        core.step()
        steps += 1
    assert steps <= 2  # admitted next step, first token right after its prefill
    assert core.stats.swaps_out == 1


def test_equal_priority_waits_for_quantum_not_preemption() -> None:
    core, _clock = make(1, quantum=10)
    _, a = submit(core, "a-first", 4000)
    core.step()
    _, b = submit(core, "b-second", 4000)
    for _ in range(6):
        core.step()
    assert b.chunks == []  # a still inside its quantum
    for _ in range(8):
        core.step()
    assert b.chunks  # quantum used up: b got the slot
    assert 9 <= len(a.chunks) <= 12


def test_aging_lets_low_priority_run() -> None:
    core, clock = make(1, quantum=4, aging_s=1.0)
    _, low = submit(core, "low", 4000, nice=10)
    _, high = submit(core, "high", 4000, nice=0)
    for _ in range(300):
        core.step()
        clock.t += 0.1  # 30 s: low gains 10 steps of priority after 10 s of waiting
    assert high.chunks and low.chunks
    assert len(low.chunks) < len(high.chunks)


def test_prefix_is_reused_from_a_live_sequence() -> None:
    core, clock = make(4, prefix_min_tokens=16)
    system = "You are a careful assistant. " * 8
    _a, out_a = submit(core, system + "Question A", 30)
    for _ in range(10):
        core.step()
    b, out_b = submit(core, system + "Question B", 10)
    run(core, clock)
    assert b.stats.reused_tokens >= len(core.tokenize(system)) - 1
    assert out_b.text == solo(system + "Question B", 10)
    assert out_a.text == solo(system + "Question A", 30)


def test_simultaneous_prompts_with_a_shared_prefix_evaluate_it_once() -> None:
    core, clock = make(4, prefix_min_tokens=16, prefill_chunk=32)
    system = "Shared system prompt for every agent. " * 10
    n_sys = len(core.tokenize(system))
    seqs = [submit(core, system + f"user {i}", 5) for i in range(4)]
    run(core, clock)
    assert core.stats.tokens_prefilled < n_sys + 4 * 20
    assert all(s.stats.reused_tokens >= n_sys - 1 for s, _ in seqs[1:])
    assert [o.text for _, o in seqs] == [solo(system + f"user {i}", 5) for i in range(4)]


def test_finished_sequence_leaves_a_reusable_cache() -> None:
    core, clock = make(2, prefix_min_tokens=16)
    system = "Cached prefix text that is long enough. " * 4
    submit(core, system + "one", 5)
    run(core, clock)
    assert core.cached
    b, out = submit(core, system + "two", 5)
    run(core, clock)
    assert b.stats.reused_tokens > 0 and out.text == solo(system + "two", 5)


def test_kill_frees_the_slot_and_kv() -> None:
    core, clock = make(1)
    a, out_a = submit(core, "victim", 4000)
    _, out_b = submit(core, "next", 5)
    for _ in range(5):
        core.step()
    core.kill(a.id)
    run(core, clock)
    assert out_a.done is not None and out_a.done.reason == "killed"
    assert out_b.text == solo("next", 5)
    assert core.backend.kv[0] == [] or core.cached  # type: ignore[attr-defined]


def test_stop_and_cont() -> None:
    core, clock = make(2)
    a, out_a = submit(core, "pausable", 40)
    for _ in range(5):
        core.step()
    core.pause(a.id)
    core.step()
    n = len(out_a.chunks)
    for _ in range(10):
        core.step()
    assert len(out_a.chunks) == n  # out of every batch while stopped
    core.resume(a.id)
    run(core, clock)
    assert out_a.text == solo("pausable", 40)


def test_stopped_sequence_is_swapped_when_its_slot_is_needed() -> None:
    core, clock = make(1)
    a, out_a = submit(core, "sleeper", 30)
    for _ in range(3):
        core.step()
    core.pause(a.id)
    _, out_b = submit(core, "runner", 5)
    run(core, clock)
    assert out_b.text == solo("runner", 5)
    core.resume(a.id)
    run(core, clock)
    assert out_a.text == solo("sleeper", 30)


def test_context_overflow_is_a_typed_error() -> None:
    core, _ = make(1, seq_ctx_max=64)
    with pytest.raises(ContextOverflow, match="does not fit"):
        submit(core, "x" * 100, 5)
    with pytest.raises(ContextOverflow, match="max_tokens"):
        submit(core, "x" * 30, 60)


def test_without_max_tokens_generation_stops_at_the_context_edge() -> None:
    core, clock = make(1, seq_ctx_max=64, max_tokens_default=1000)
    seq = core.submit("y" * 40, SamplingParams(temperature=0), sink=(out := Out()))
    run(core, clock)
    assert out.done is not None and out.done.reason == "length"
    assert len(seq.tokens) <= 64


def test_stop_strings_cut_and_never_leak() -> None:
    core, clock = make(1, responder=lambda c: "alpha beta STOP gamma")
    out = Out()
    core.submit(
        "<|user|>hi\n<|assistant|>", SamplingParams(temperature=0, stop=("STOP",)), sink=out
    )
    run(core, clock)
    assert out.text == "alpha beta "
    assert out.done is not None and out.done.reason == "stop"


def test_utf8_split_across_tokens_streams_whole_characters() -> None:
    reply = "héllo wörld ✓ 日本"
    core, clock = make(1, responder=lambda c: reply)
    out = Out()
    core.submit("<|user|>x\n<|assistant|>", SamplingParams(temperature=0), sink=out)
    run(core, clock)
    assert out.text == reply
    assert all("\ufffd" not in c for c in out.chunks)


def test_kv_budget_forces_swaps_not_failures() -> None:
    core, clock = make(4, kv_budget=200, quantum=4)
    prompts = [f"budget case {i} " * 3 for i in range(4)]
    outs = [submit(core, p, 40)[1] for p in prompts]
    run(core, clock)
    assert [o.text for o in outs] == [solo(p, 40) for p in prompts]
    assert core.stats.swaps_out > 0


def test_renice_changes_the_order() -> None:
    core, _clock = make(1, quantum=2)
    _a, out_a = submit(core, "aaa", 4000)
    b, out_b = submit(core, "bbb", 4000)
    core.renice(b.id, -10)
    for _ in range(20):
        core.step()
    assert len(out_b.chunks) > len(out_a.chunks)


def test_a_burst_of_requests_on_an_idle_engine_is_prefilled_in_one_batch() -> None:
    backend = ScriptedBackend(n_slots=4, responder=lambda c: "ok")
    # Wide margins: requests 50 ms apart still count as one burst here (1 ms by default).
    core = EngineCore(backend, coalesce_s=2.0, burst_gap_s=0.5)
    core.start()
    try:
        outs = []
        for i in range(3):
            outs.append(submit(core, f"prompt {i}", 4)[1])
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while not all(o.done for o in outs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(o.done for o in outs)
        assert len(backend.batches[0]) == 3, backend.batches[:3]  # all three prompts at once
    finally:
        core.close()
