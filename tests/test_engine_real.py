"""The engine on the real default model (SmolLM2-135M-Instruct through llama.cpp)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.core.sampling import SamplingParams
from llmos.errors import ChatTemplateError, ContextOverflow
from llmos.kernel.chat import render_chat
from llmos.kernel.engine import EngineCore
from llmos.kernel.llama_backend import LlamaBackend
from llmos.kernel.scheduler import Policy

GREEDY = SamplingParams(temperature=0, max_tokens=40)
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Who wrote Hamlet?",
]


def open_backend(path: Path, flash_attn: str) -> LlamaBackend:
    return LlamaBackend(
        path, n_slots=4, n_ctx=4 * 1536, n_batch=512, n_threads=2, flash_attn=flash_attn
    )


# Flash attention off: the prefix-reuse test's prompts then give the same text with and
# without reuse. Batching and swapping are exact in both modes (fa_backend).
@pytest.fixture(scope="module")
def backend(real_model_path: Path) -> Iterator[LlamaBackend]:
    b = open_backend(real_model_path, "off")
    yield b
    b.close()


@pytest.fixture(scope="module", params=["off", "auto"])
def fa_backend(request: pytest.FixtureRequest, real_model_path: Path) -> Iterator[LlamaBackend]:
    if request.param == "off":
        yield request.getfixturevalue("backend")
        return
    b = open_backend(real_model_path, request.param)
    yield b
    b.close()


def start_engine(backend: LlamaBackend) -> EngineCore:
    for slot in range(backend.n_slots):
        backend.seq_rm(slot, -1, -1)
    core = EngineCore(backend, policy=Policy(quantum_tokens=8), prefix_min_tokens=16)
    core.backend.close = lambda: None  # type: ignore[method-assign]  # the module owns the model
    core.start()
    return core


@pytest.fixture
def engine(backend: LlamaBackend) -> Iterator[EngineCore]:
    core = start_engine(backend)
    yield core
    core.close()


@pytest.fixture
def fa_engine(fa_backend: LlamaBackend) -> Iterator[EngineCore]:
    core = start_engine(fa_backend)
    yield core
    core.close()


def chat_tokens(backend: LlamaBackend, text: str, system: str | None = None) -> list[int]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return backend.tokenize(
        render_chat(msgs, backend.chat_template(), special=backend.special_tokens())
    )


async def solo_all(
    engine: EngineCore, prompts: list[list[int]], params: SamplingParams = GREEDY
) -> list[str]:
    return [await engine.generate(p, params).result() for p in prompts]


async def test_answers_from_the_real_model(engine: EngineCore) -> None:
    # A question this 135M model answers firmly: "capital of France" sits on a near-tie that
    # another CPU's kernels tip away from "Paris".
    gen = engine.generate(chat_tokens(engine.backend, "What is the capital of Japan?"), GREEDY)  # type: ignore[arg-type]
    chunks = [c async for c in gen]
    assert len(chunks) > 3  # streamed, not one blob
    assert "Tokyo" in gen.text
    assert gen.reason in ("stop", "length")
    assert gen.stats.ttft is not None and gen.stats.generated == len(gen.tokens)


async def test_batched_equals_unbatched_token_for_token(fa_engine: EngineCore) -> None:
    engine = fa_engine
    prompts = [chat_tokens(engine.backend, q) for q in QUESTIONS]  # type: ignore[arg-type]
    alone = [engine.generate(p, GREEDY) for p in prompts[:1]]
    await alone[0].result()
    solo = [await engine.generate(p, GREEDY).result() for p in prompts]
    gens = [engine.generate(p, GREEDY) for p in prompts]
    batched = await asyncio.gather(*(g.result() for g in gens))
    assert batched == solo
    assert engine.stats.as_dict()["steps"] > 0


async def test_swap_out_and_in_continues_the_same_text(fa_backend: LlamaBackend) -> None:
    # two slots for four sequences: the scheduler must swap KV state to RAM and back
    backend = fa_backend
    for slot in range(backend.n_slots):
        backend.seq_rm(slot, -1, -1)
    core = EngineCore(backend, policy=Policy(quantum_tokens=4), prefix_min_tokens=10_000)
    core.backend.close = lambda: None  # type: ignore[method-assign]
    core.slots = core.slots[:2]
    core.start()
    try:
        prompts = [chat_tokens(backend, q) for q in QUESTIONS]
        solo = await solo_all(core, prompts)
        gens = [core.generate(p, GREEDY) for p in prompts]
        swapped = await asyncio.gather(*(g.result() for g in gens))
        assert core.stats.swaps_out > 0
        assert swapped == solo
        assert all(g.stats.recomputed == 0 for g in gens)
    finally:
        core.close()


async def test_prefix_reuse_gives_the_same_output(engine: EngineCore) -> None:
    system = "You are a helpful assistant who answers briefly and precisely. " * 6
    b = engine.backend
    prompts = [chat_tokens(b, q, system) for q in QUESTIONS[:3]]  # type: ignore[arg-type]
    first = engine.generate(prompts[0], GREEDY)
    await first.result()
    gens = [engine.generate(p, GREEDY) for p in prompts[1:]]
    reused = await asyncio.gather(*(g.result() for g in gens))
    assert all(g.stats.reused_tokens > 60 for g in gens)
    engine.cached.clear()
    for slot in range(b.n_slots):
        b.seq_rm(slot, -1, -1)
    engine.prefix_min = 10_000
    fresh = await solo_all(engine, prompts[1:])
    assert reused == fresh


async def test_kill_frees_the_sequence_and_its_kv(engine: EngineCore) -> None:
    gen = engine.generate(
        chat_tokens(engine.backend, "Tell me a long story."), SamplingParams(max_tokens=400)
    )  # type: ignore[arg-type]
    it = gen.__aiter__()
    await it.__anext__()
    engine.kill(gen.id)
    rest = [c async for c in it]
    assert gen.reason == "killed"
    assert len(rest) < 400
    await asyncio.sleep(0.05)
    assert engine.kv_used() == 0 and all(s is None for s in engine.slots)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population_millions": {"type": "number"},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "population_millions", "is_capital"],
}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_json_schema_output_always_parses(engine: EngineCore, seed: int) -> None:
    params = SamplingParams(temperature=0.8, seed=seed, max_tokens=120, json_schema=SCHEMA)
    text = await engine.generate(
        chat_tokens(engine.backend, "Describe Paris as JSON."), params
    ).result()  # type: ignore[arg-type]
    data = json.loads(text)
    assert set(data) == {"city", "population_millions", "is_capital"}
    assert isinstance(data["city"], str)
    assert isinstance(data["population_millions"], int | float)
    assert isinstance(data["is_capital"], bool)


async def test_gbnf_grammar_constrains_output(engine: EngineCore) -> None:
    grammar = 'root ::= ("yes" | "no") "."'
    params = SamplingParams(temperature=0.7, seed=7, max_tokens=10, grammar=grammar)
    text = await engine.generate(chat_tokens(engine.backend, "Is the sky blue?"), params).result()  # type: ignore[arg-type]
    assert text in ("yes.", "no.")


async def test_bad_grammar_is_a_clear_error_not_a_crash(engine: EngineCore) -> None:
    from llmos.errors import GenerationError

    other = engine.generate(
        chat_tokens(engine.backend, "Count to ten."), SamplingParams(max_tokens=30)
    )  # type: ignore[arg-type]
    with pytest.raises(GenerationError, match="grammar"):  # refused at submit, in the caller
        engine.generate(
            chat_tokens(engine.backend, "hi"),  # type: ignore[arg-type]
            SamplingParams(grammar="root ::= (((", max_tokens=5),
        )
    assert await other.result()  # a neighbour's generation was not disturbed
    ok = await engine.generate(
        chat_tokens(engine.backend, "hi"), SamplingParams(max_tokens=5)
    ).result()  # type: ignore[arg-type]
    assert isinstance(ok, str)  # the engine kept running


async def test_context_overflow_is_typed(engine: EngineCore) -> None:
    long = list(range(100, 100 + engine.seq_ctx_max + 5))
    with pytest.raises(ContextOverflow):
        engine.generate(long, GREEDY)


def test_model_without_chat_template_is_a_clear_error() -> None:
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat([{"role": "user", "content": "hi"}], None, model="base-model")


async def test_the_penalties_prefilter_changes_no_token(
    engine: EngineCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The top-k cut put before the penalties (llama_backend._prefilter) is exact: greedy and
    seeded sampling, with heavy penalties, give the same tokens as the chain without it."""
    import llmos.kernel.llama_backend as lb

    prompts = [chat_tokens(engine.backend, q) for q in QUESTIONS]  # type: ignore[arg-type]
    settings = [
        SamplingParams(temperature=0, max_tokens=60),
        SamplingParams(temperature=0.8, seed=7, max_tokens=60),
        SamplingParams(
            temperature=1.2, seed=11, max_tokens=60, repeat_penalty=1.3,
            frequency_penalty=0.5, presence_penalty=0.3,
        ),
    ]  # fmt: skip
    assert all(lb._prefilter(p) > 0 for p in settings)

    engine.prefix_min = 10**9  # the same batches in both runs: no reuse of the first's KV

    async def run() -> list[list[int]]:
        out = []
        for s in settings:  # the 4 prompts batched together, one batch per setting
            with engine._cv:  # all 4 land before the engine's next step, in both runs
                gens = [engine.generate(p, s) for p in prompts]
            await asyncio.gather(*(g.result() for g in gens))
            out += [g.tokens for g in gens]
        return out

    with_cut = await run()
    monkeypatch.setattr(lb, "_prefilter", lambda params: 0)
    assert await run() == with_cut


def test_a_batch_over_n_batch_is_typed_before_anything_is_written(real_model_path: Path) -> None:
    from llmos.errors import GenerationError
    from llmos.kernel.backend import BatchEntry

    b = LlamaBackend(real_model_path, n_slots=2, n_ctx=1024, n_batch=64, n_threads=2)
    try:
        with pytest.raises(GenerationError, match="batch of 65 tokens exceeds n_batch 64"):
            b.decode([BatchEntry(0, [1] * 40, 0, False), BatchEntry(1, [1] * 25, 0, True)])
        assert b.decode([BatchEntry(0, [1] * 8, 0, True)]) == [7]  # still usable
    finally:
        b.close()
