"""Speculation from the context on the real default model: exact at temperature 0 (alone
and batched beside other sequences), and distributed as plain sampling with sampling on
(a chi-square test over many seeds)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.core.sampling import SamplingParams
from llmos.kernel.backend import BatchEntry
from llmos.kernel.engine import EngineCore
from llmos.kernel.llama_backend import LlamaBackend
from llmos.kernel.scheduler import Policy

DOC = (
    "Station log, day 12. The north pump failed at 06:40 and was restarted by Ilse at 07:15. "
    "Water pressure stayed low until the valve on line 3 was replaced. The spare valves are "
    "kept in the blue cabinet behind the generator room. Next inspection: day 19."
)
COPY = (
    f"<|im_start|>user\nHere is a document:\n{DOC}\n\nRepeat the document word for word."
    "<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def engine(real_model_path: Path) -> Iterator[EngineCore]:
    # flash attention off: the configuration in which a verify batch rounds as single steps
    backend = LlamaBackend(
        real_model_path, n_slots=4, n_ctx=4096, n_batch=256, n_threads=2, flash_attn="off"
    )
    core = EngineCore(backend, policy=Policy(), n_batch=256, prefix_min_tokens=10_000)
    core.start()
    yield core
    core.close()


async def generate(core: EngineCore, prompt: str, **kw: Any) -> tuple[str, Any]:
    gen = core.generate(prompt, SamplingParams(**kw))
    text = await gen.result()
    return str(text), gen.stats


def _gaps(path: Path, prompt: list[int], out: list[int]) -> list[float]:
    """For each output token: how far its logit is below the best one, with the whole text
    evaluated in one batch by a model of its own (0.0: it is the greedy choice)."""
    import numpy as np

    backend = LlamaBackend(path, n_slots=1, n_ctx=512, n_batch=256, n_threads=2, flash_attn="off")
    try:
        idx = backend.decode([BatchEntry(0, prompt + out, 0, True, draft=len(out))])[0]
        gaps = []
        for i, token in enumerate(out):
            ptr = backend._L.llama_get_logits_ith(
                backend._ctx, idx + i
            )  # row idx: the last prompt token
            row = np.ctypeslib.as_array(ptr, shape=(backend._n_vocab,))
            gaps.append(float(row.max() - row[token]))
        return gaps
    finally:
        backend.close()


def test_greedy_speculation_is_a_greedy_decode(engine: EngineCore, real_model_path: Path) -> None:
    """At temperature 0 every token kept is the model's greedy choice. Bit for bit equality
    with plain decoding is not to be had on llama.cpp's CPU kernels (a batch of another
    shape rounds differently, and a near-tie can flip: kernel/llama_backend.py
    `exact_batches`), so the check is the definition: evaluated in one batch, each token of
    the answer is the argmax at its position, up to a rounding-sized tie."""

    async def go() -> None:
        greedy = {"temperature": 0, "repeat_penalty": 1.0, "max_tokens": 60}
        gen = engine.generate(COPY, SamplingParams(**greedy, speculate=True))
        await gen.result()
        stats = gen.stats
        assert stats.drafted > 0 and stats.accepted > 0
        prompt = engine.backend.tokenize(COPY)
        assert gen.seq.tokens[: len(prompt)] == prompt
        gaps = _gaps(real_model_path, prompt, gen.seq.tokens[len(prompt) :])
        assert max(gaps) < 0.05, gaps
        # the same text as plain decoding in this case, batched beside other sequences
        plain, spec = await asyncio.gather(
            generate(engine, COPY, **greedy, speculate=False),
            generate(engine, COPY, **greedy, speculate=True),
        )  # fmt: skip
        assert spec[1].accepted > 0
        common = next((i for i, (a, b) in enumerate(zip(plain[0], spec[0], strict=False)) if a != b), min(len(plain[0]), len(spec[0])))  # fmt: skip
        assert common >= 40, (plain[0], spec[0])

    asyncio.run(go())


def _chi2_critical(dof: int, z: float = 3.09) -> float:
    """The chi-square quantile at z standard deviations (3.09: p = 0.001), Wilson-Hilferty."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_sampling_keeps_the_distribution(engine: EngineCore) -> None:
    prompt = "<|im_start|>user\nSay: red green blue red green blue red green<|im_end|>\n<|im_start|>assistant\n" + "red green blue red green blue red green"  # fmt: skip
    n = 150

    async def sample(spec: bool) -> tuple[Counter[str], int]:
        outs = await asyncio.gather(*[
            generate(engine, prompt, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                     repeat_penalty=1.0, max_tokens=3, seed=seed, speculate=spec)
            for seed in range(n)
        ])  # fmt: skip
        return Counter(t for t, _ in outs), sum(s.drafted for _, s in outs)

    plain, d0 = asyncio.run(sample(False))
    spec, d1 = asyncio.run(sample(True))
    assert d0 == 0 and d1 > 0  # drafts were verified under sampling
    # categories seen at least 5 times on either side, the rest pooled
    keys = [k for k in set(plain) | set(spec) if plain[k] + spec[k] >= 10]
    rows = [[plain[k], spec[k]] for k in keys]
    rows.append([n - sum(r[0] for r in rows), n - sum(r[1] for r in rows)])
    rows = [r for r in rows if sum(r)]
    total = 2 * n
    stat = 0.0
    for r in rows:
        for j in (0, 1):
            expected = sum(r) * n / total
            stat += (r[j] - expected) ** 2 / expected
    dof = max(1, len(rows) - 1)
    assert stat < _chi2_critical(dof), (stat, dof, plain.most_common(5), spec.most_common(5))
