"""LoRA adapters per sequence in the engine, on the scripted backend (deterministic).

llama.cpp applies a context's adapters to every token of a batch, so the engine must never
mix adapter sets in one decode. The scripted "model" answers `[stem] ...` under an adapter:
a sequence decoded under the wrong adapter shows it in its text.
"""

from __future__ import annotations

import itertools
from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.kernel.engine import EngineCore, Sequence
from tests.test_scheduler import Out, make, run


def chat(prompt: str) -> str:
    return f"<|user|>{prompt}\n<|assistant|>"


def submit(core: EngineCore, prompt: str, adapter: str | None, **kw: Any) -> tuple[Sequence, Out]:
    out = Out()
    seq = core.submit(
        chat(prompt), SamplingParams(temperature=0, max_tokens=40), sink=out, adapter=adapter, **kw
    )
    return seq, out


def test_each_sequence_decodes_under_its_own_adapter() -> None:
    core, clock = make(6, responder=lambda c: "ok", adapter_quantum=1)
    runs = [submit(core, f"q{i}", a) for i, a in enumerate([None, "/a/x.gguf", "/a/y.gguf"] * 2)]
    run(core, clock)
    texts = [out.text for _, out in runs]
    assert texts == ["ok", "[x] ok", "[y] ok"] * 2
    backend: Any = core.backend
    # every set advanced while the others waited: the adapter changed between decode calls,
    # and each decode call served one set only (else a text above would be wrong)
    used = backend.adapters_used
    assert {None, "/a/x.gguf", "/a/y.gguf"} <= set(used)
    changes = sum(1 for a, b in itertools.pairwise(used) if a != b)
    assert changes >= 6  # round robin, not one set to completion then the next


def test_groups_take_turns_fairly() -> None:
    core, clock = make(4, responder=lambda c: "answer over many steps")
    outs = [
        submit(core, f"q{i}", a)[1] for i, a in enumerate([None, "/m/x.gguf", None, "/m/x.gguf"])
    ]
    steps = 0
    while not all(o.text for o in outs):  # until every sequence has produced something
        core.step()
        clock.t += 0.01
        steps += 1
        assert steps < 10, "a group starved"
    run(core, clock)
    assert all(o.done is not None and o.done.reason == "stop" for o in outs)


def test_prefix_reuse_stays_within_one_adapter() -> None:
    core, clock = make(4, prefix_min_tokens=8, responder=lambda c: "ok")
    shared = "a shared system prompt long enough to be worth reusing, then: "
    _first, _ = submit(core, shared + "one", "/a/x.gguf")
    run(core, clock)
    other, out_other = submit(core, shared + "two", None)  # same text, no adapter
    run(core, clock)
    same, out_same = submit(core, shared + "three", "/a/x.gguf")
    run(core, clock)
    assert other.stats.reused_tokens == 0  # KV made under x is not the base model's
    assert same.stats.reused_tokens > 8  # but it serves x again
    assert out_other.text == "ok" and out_same.text == "[x] ok"


def test_single_set_batches_as_before() -> None:
    core, clock = make(4, responder=lambda c: "ok")
    outs = [submit(core, f"q{i}", "/a/x.gguf")[1] for i in range(3)]
    run(core, clock)
    backend: Any = core.backend
    decode_batches = [b for b in backend.batches if all(n == 1 for _, n in b)]
    assert max(len(b) for b in decode_batches) == 3  # one set: all in one batch
    assert [o.text for o in outs] == ["[x] ok"] * 3


def test_a_set_keeps_the_batch_for_its_quantum_then_yields() -> None:
    core, clock = make(4, responder=lambda c: "a reply long enough to need many steps, truly")
    outs = [submit(core, f"q{i}", a)[1] for i, a in enumerate([None, "/m/x.gguf"] * 2)]
    run(core, clock)
    assert [o.text.startswith("[x]") for o in outs] == [False, True, False, True]
    used: list[Any] = core.backend.adapters_used  # type: ignore[attr-defined]
    streak = [1]
    for prev, cur in itertools.pairwise(used):
        streak.append(streak[-1] + 1 if cur == prev else 1)
    switches = sum(1 for prev, cur in itertools.pairwise(used) if cur != prev)
    # decode calls in a row under one set: at most its quantum (8) while the other waits,
    # except the last set's tail once the other has finished
    tail = len(used) - max(i for i, (p, c) in enumerate(itertools.pairwise(used)) if c != p) - 1
    assert max(streak[: len(used) - tail]) <= 8 and switches >= 3
