"""Speculation from the context (prompt lookup), on the scripted backend: deterministic
bookkeeping. The scripted model's next token is a pure function of the KV before it, so
any slip in rolling back rejected drafts changes the text (and the backend checks every
decode's positions, so a KV cell out of place fails loudly).
"""

from __future__ import annotations

from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.kernel.engine import EngineCore, Sequence
from tests.test_scheduler import Out, make, run

DOC = "The quick brown fox jumps over the lazy dog near the old river bank at dawn."


def copier(conv: str) -> str:
    """Answers by quoting the document in the prompt, then adding words of its own (so
    drafts are accepted, then rejected where the answer leaves the text)."""
    return "Quote: " + DOC[:40] + " and then something new entirely, " + DOC[20:60]


def submit(
    core: EngineCore, prompt: str, speculate: bool | None, n: int = 200, **kw: Any
) -> tuple[Sequence, Out]:
    out = Out()
    seq = core.submit(
        f"<|user|>{prompt}\n<|assistant|>",
        SamplingParams(temperature=0, max_tokens=n, speculate=speculate), sink=out, **kw,
    )  # fmt: skip
    return seq, out


def solo(prompt: str, speculate: bool | None, **kw: Any) -> tuple[Sequence, Out, EngineCore]:
    core, clock = make(1, responder=copier, **kw)
    seq, out = submit(core, prompt, speculate)
    run(core, clock)
    return seq, out, core


def test_drafts_are_verified_and_the_text_is_unchanged() -> None:
    plain, plain_out, _ = solo(f"Read: {DOC}", False)
    spec, spec_out, core = solo(f"Read: {DOC}", True)
    assert spec_out.text == plain_out.text and spec_out.done and spec_out.done.reason == "stop"
    assert spec.stats.drafted > 0 and 0 < spec.stats.accepted < spec.stats.drafted  # some rejected
    assert plain.stats.drafted == 0
    backend: Any = core.backend
    plain_steps = len(solo(f"Read: {DOC}", False)[2].backend.batches)  # type: ignore[attr-defined]
    assert len(backend.batches) < plain_steps * 0.6  # accepted drafts saved decode steps
    assert core.stats.accepted == spec.stats.accepted


def test_auto_turns_on_for_long_prompts_only() -> None:
    short, _, _ = solo(f"Read: {DOC}", None, spec_min_prompt=10_000)
    long, _, _ = solo(f"Read: {DOC}", None, spec_min_prompt=10)
    assert short.stats.drafted == 0 and long.stats.drafted > 0
    off, _, _ = solo(f"Read: {DOC}", None, spec_min_prompt=10, speculation="off")
    assert off.stats.drafted == 0


def test_drafts_fit_the_batch_budget_beside_other_sequences() -> None:
    core, clock = make(6, responder=copier, spec_batch_tokens=8)
    runs = [submit(core, f"Read {i}: {DOC}", True) for i in range(6)]
    run(core, clock)
    backend: Any = core.backend
    decoding = [b for b in backend.batches if len(b) == 6 and all(n <= 9 for _, n in b)]
    assert decoding and all(sum(n for _, n in b) <= 8 for b in decoding)  # 6 decodes + 2 drafts
    texts = {out.text for _, out in runs}
    assert len(texts) == 1 and texts == {solo(f"Read 0: {DOC}", False)[1].text}
    assert sum(seq.stats.drafted for seq, _ in runs) > 0


def test_kill_and_swap_between_drafting_steps_lose_nothing() -> None:
    core, clock = make(2, responder=copier, quantum=4)
    a, out_a = submit(core, f"Read A: {DOC}", True)
    b, out_b = submit(core, f"Read B: {DOC}", True)
    _c, out_c = submit(core, f"Read C: {DOC}", True)  # three for two slots: swaps
    for _ in range(6):
        core.step()
        clock.t += 0.01
    core.kill(b.id)
    run(core, clock)
    assert out_b.done is not None and out_b.done.reason == "killed"
    want = solo(f"Read A: {DOC}", False)[1].text
    assert out_a.text == want and out_c.text == solo(f"Read C: {DOC}", False)[1].text
    assert core.stats.swaps_out > 0 and a.stats.drafted > 0
    backend: Any = core.backend
    for slot, kv in enumerate(backend.kv):  # nothing left but cached prefixes
        assert not kv or (slot in core.cached and len(kv) == len(core.cached[slot]))


def test_no_draft_past_max_tokens() -> None:
    core, clock = make(1, responder=copier)
    s, o = submit(core, f"Read: {DOC}", True, n=12)
    run(core, clock)
    assert o.done is not None and o.done.reason == "length" and s.stats.generated == 12


def test_drafting_stops_where_it_does_not_pay() -> None:
    """A backend on which every token of a batch costs a full step (a small model with a
    long context on a CPU): drafting is measured to cost more per output token than plain
    decoding, and stops (but for rare probes); the text stays the same."""
    from llmos.kernel.scripted import ScriptedBackend

    class Slow:
        t = 0.0

        def __call__(self) -> float:
            return self.t

    timer = Slow()
    core, clock = make(1, responder=copier, timer=timer, spec_min_prompt=10)
    backend: Any = core.backend
    assert isinstance(backend, ScriptedBackend)
    backend.on_decode = lambda entries: setattr(
        timer, "t", timer.t + sum(len(e.tokens) for e in entries)
    )
    seq, out = submit(core, f"Read: {DOC} Again: {DOC} And: {DOC}", None, n=400)
    run(core, clock)
    free, free_out, _ = solo(f"Read: {DOC} Again: {DOC} And: {DOC}", None, spec_min_prompt=10)
    assert out.text == free_out.text
    assert core.cost[True] > core.cost[False]
    assert seq.stats.drafted < free.stats.drafted / 2  # it stopped drafting
