"""Forced-token fast-forward on the scripted backend: deterministic bookkeeping.

The scripted backend's `forced` hook plays a grammar: given the text so far it says what
must come next, right or wrong. The engine appends those tokens as a draft and verifies
them, so a right guess saves decode steps and a wrong one costs nothing but the rejected
cells (which must leave the KV: the scripted model's next token is a function of the KV,
and the backend checks every decode's positions).
"""

from __future__ import annotations

from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.kernel.engine import EngineCore, Sequence
from tests.test_scheduler import Out, make, run

REPLY = '{"action": "calc", "args": {"expression": "6*7"}}'
# what a grammar for REPLY's shape forces, and (the expression) what it leaves free
SKELETON = ['{"action": "', 'calc", "args": {"expression": "', "6*7", '"}}']
FREE = 2


def responder(conv: str) -> str:
    return REPLY


def schema_forced(done: str) -> str:
    at = 0
    for i, part in enumerate(SKELETON):
        if len(done) < at + len(part):
            return "" if i == FREE else part[len(done) - at :]
        at += len(part)
    return ""


def wrong_forced(done: str) -> str:
    return "XYZ" if done else '{"act'


def submit(
    core: EngineCore, prompt: str, *, schema: bool = True, n: int = 100
) -> tuple[Sequence, Out]:
    out = Out()
    params = SamplingParams(
        temperature=0, max_tokens=n, json_schema={"type": "object"} if schema else None
    )
    seq = core.submit(f"<|user|>{prompt}\n<|assistant|>", params, sink=out)
    return seq, out


def solo(forced: Any, **kw: Any) -> tuple[Sequence, Out, EngineCore]:
    core, clock = make(1, responder=responder, forced=forced, **kw)
    seq, out = submit(core, "What is 6*7?")
    run(core, clock)
    return seq, out, core


def steps(core: EngineCore) -> int:
    return len(core.backend.batches)  # type: ignore[attr-defined]


def test_forced_text_is_verified_and_saves_steps() -> None:
    plain, plain_out, plain_core = solo(schema_forced, fast_forward=False)
    ff, ff_out, ff_core = solo(schema_forced)
    assert ff_out.text == plain_out.text == REPLY
    assert plain.stats.forced == 0 and ff.stats.forced > 0
    assert ff.stats.forced_kept == ff.stats.forced  # the skeleton is what the model says
    # each kept forced token is a decode step saved
    assert steps(ff_core) == steps(plain_core) - ff.stats.forced_kept
    assert ff.stats.forced_kept >= 40  # of the 46 forced characters (the rest are sampled)
    assert ff_core.stats.forced_kept == ff.stats.forced_kept


def test_a_wrong_forced_guess_is_rejected_and_rolled_back() -> None:
    _, plain_out, _ = solo(wrong_forced, fast_forward=False)
    ff, ff_out, core = solo(wrong_forced)
    assert ff_out.text == plain_out.text == REPLY
    assert ff.stats.forced > 0 and ff.stats.forced_kept < ff.stats.forced
    backend: Any = core.backend
    assert all(not kv or slot in core.cached for slot, kv in enumerate(backend.kv))


def test_no_fast_forward_without_a_grammar() -> None:
    core, clock = make(1, responder=responder, forced=schema_forced)
    seq, out = submit(core, "What is 6*7?", schema=False)
    run(core, clock)
    assert out.text == REPLY and seq.stats.forced == 0


def test_forced_drafts_fit_the_batch_and_the_token_limit() -> None:
    core, clock = make(4, responder=responder, forced=schema_forced, n_batch=12)
    runs = [submit(core, f"Task {i}: What is 6*7?") for i in range(4)]
    run(core, clock)
    backend: Any = core.backend
    assert all(sum(n for _, n in b) <= 12 for b in backend.batches)
    assert {out.text for _, out in runs} == {REPLY}
    assert sum(s.stats.forced_kept for s, _ in runs) > 0
    core, clock = make(1, responder=responder, forced=schema_forced)
    seq, out = submit(core, "What is 6*7?", n=9)
    run(core, clock)
    assert out.done is not None and out.done.reason == "length" and seq.stats.generated == 9
    assert out.text == REPLY[:9]


def test_kill_and_swap_in_the_middle_of_forced_runs() -> None:
    core, clock = make(2, responder=responder, forced=schema_forced, quantum=2)
    a, out_a = submit(core, "A: What is 6*7?")
    b, out_b = submit(core, "B: What is 6*7?")
    _c, out_c = submit(core, "C: What is 6*7?")  # three for two slots: swaps
    for _ in range(4):
        core.step()
        clock.t += 0.01
    core.kill(b.id)
    run(core, clock)
    assert out_b.done is not None and out_b.done.reason == "killed"
    assert out_a.text == out_c.text == REPLY
    assert core.stats.swaps_out > 0 and a.stats.forced_kept > 0
    backend: Any = core.backend
    for slot, kv in enumerate(backend.kv):
        assert not kv or (slot in core.cached and len(kv) == len(core.cached[slot]))


def _costed(fixed: float, per_token: float, forced: Any, n: int) -> list[Sequence]:
    """`n` sequences on an engine whose steps cost `fixed + per_token * tokens` seconds."""
    from llmos.kernel.scheduler import Policy
    from llmos.kernel.scripted import ScriptedBackend
    from tests.test_scheduler import Clock

    spent = [0.0]

    def on_decode(entries: list[Any]) -> None:
        spent[0] += fixed + per_token * sum(len(e.tokens) for e in entries)

    backend = ScriptedBackend(n_slots=n, responder=responder, forced=forced, on_decode=on_decode)
    clock = Clock()
    core = EngineCore(backend, policy=Policy(), clock=clock, timer=lambda: spent[0])
    seqs = [submit(core, f"Task {i}: What is 6*7?")[0] for i in range(n)]
    run(core, clock)
    return seqs


def half_wrong(done: str) -> str:
    """Forced text the model follows for 2 characters, then not."""
    return schema_forced(done)[:2] + "#" * 6 if schema_forced(done) else ""


def test_fast_forward_weighs_its_cost_against_the_batch() -> None:
    # steps dominated by a fixed cost (a GPU): forcing pays even when half is rejected
    cheap = _costed(10.0, 1.0, half_wrong, 4)
    # steps dominated by per-token compute, 4 sequences, most forced tokens rejected:
    # after its first tries each sequence stops appending them
    dear = _costed(0.1, 1.0, half_wrong, 4)
    assert sum(s.stats.forced for s in dear) < 0.5 * sum(s.stats.forced for s in cheap)
    alone = _costed(0.1, 1.0, schema_forced, 1)  # one sequence, the model agrees: it pays
    assert alone[0].stats.forced_kept >= 40
