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
    backend = LlamaBackend(real_model_path, n_slots=4, n_ctx=4096, n_batch=256, n_threads=2)
    core = EngineCore(backend, policy=Policy(), n_batch=256, prefix_min_tokens=10_000)
    core.start()
    yield core
    core.close()


async def generate(core: EngineCore, prompt: str, **kw: Any) -> tuple[str, Any]:
    gen = core.generate(prompt, SamplingParams(**kw))
    text = await gen.result()
    return str(text), gen.stats


def test_greedy_output_is_identical_with_and_without(engine: EngineCore) -> None:
    async def go() -> None:
        plain, ps = await generate(engine, COPY, temperature=0, max_tokens=80, speculate=False)
        spec, ss = await generate(engine, COPY, temperature=0, max_tokens=80, speculate=True)
        assert spec == plain
        assert ps.drafted == 0 and ss.drafted > 0 and ss.accepted > 0
        # batched: two speculating and two plain sequences in the same steps
        outs = await asyncio.gather(
            generate(engine, COPY, temperature=0, max_tokens=80, speculate=True),
            generate(engine, COPY.replace("word for word", "exactly"), temperature=0, max_tokens=60, speculate=True),
            generate(engine, COPY, temperature=0, max_tokens=80, speculate=False),
            generate(engine, "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n", temperature=0, max_tokens=30, speculate=False),
        )  # fmt: skip
        assert outs[0][0] == plain and outs[2][0] == plain and outs[0][1].accepted > 0
        alone = await generate(engine, COPY.replace("word for word", "exactly"), temperature=0, max_tokens=60, speculate=False)  # fmt: skip
        assert outs[1][0] == alone[0]

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
