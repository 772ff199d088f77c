"""Forced-token fast-forward on the real model: the same text as token by token.

Exactness at temperature 0: every output below is produced three times: with the grammar
first in llama.cpp's sampler chain (as plain llama.cpp samples), with it checked last
(llmos's greedy path), and with fast-forward on top; all must be the same text. The cases
are the ReAct action schema (the main case: most of a step is forced once the action is
chosen), the tool-call schema the REST API builds, and random schemas, decoded 8 at a
time so forced runs share batches with other sequences' tokens.
"""

from __future__ import annotations

import json
from typing import Any

from llmos.core.sampling import SamplingParams
from tests.random_schemas import cases


def _prompt(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def _run(model_path: Any, ff: bool, jobs: list[tuple[str, dict[str, Any]]], n: int = 64, grammar_last: bool = True) -> tuple[list[str], Any]:  # fmt: skip
    from llmos.kernel.engine import EngineCore, SeqState
    from llmos.kernel.llama_backend import LlamaBackend

    backend = LlamaBackend(model_path, n_slots=8, n_ctx=8 * 1024, n_threads=2)
    backend.grammar_last = grammar_last
    core = EngineCore(backend, fast_forward=ff)
    try:
        outs = []
        for i in range(0, len(jobs), 8):
            gens = [
                core.submit(
                    p,
                    SamplingParams(temperature=0, max_tokens=n, json_schema=s),
                    sink=lambda e: None,
                )
                for p, s in jobs[i : i + 8]
            ]
            while any(g.state is not SeqState.DONE for g in gens):
                core.step()
            outs.extend(g.text for g in gens)
        return outs, core.stats
    finally:
        backend.close()


def test_fast_forward_matches_token_by_token_on_action_and_random_schemas(
    real_model_path: Any,
) -> None:
    from llmos.agents.react import EXAMPLE, SYSTEM, action_schema
    from llmos.core.syscall import SyscallTable
    from llmos.tools.basic import calc, now

    table = SyscallTable()
    specs = [table.register(calc), table.register(now)]
    react = action_schema(specs)
    system = SYSTEM.format(tools="\n".join(f"- {s.signature()}: {s.doc}" for s in specs))
    shots = "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in EXAMPLE
    )  # fmt: skip
    jobs = [
        (f"<|im_start|>system\n{system}<|im_end|>\n{shots}" + _prompt(task), react)
        for task in ["What is 17*23?", "What time is it?", "Compute 5 + 9.", "What is 81 minus 7?"]
    ]
    jobs += [(_prompt(msg), schema) for schema, msg in cases(12, seed=3)]
    first, _ = _run(real_model_path, False, jobs, grammar_last=False)  # llama.cpp's own way
    plain, plain_stats = _run(real_model_path, False, jobs)
    fast, fast_stats = _run(real_model_path, True, jobs)
    assert plain_stats.forced == 0 and fast_stats.forced_kept > 0
    assert plain == first  # checking the grammar last changes no greedy token
    assert fast == plain
    # the work was not trivial: valid JSON came out, and a real share was forced
    assert sum(_is_json(t) for t in fast) >= len(jobs) // 2
    assert fast_stats.steps < plain_stats.steps
    assert fast_stats.forced_kept >= 0.2 * sum(len(t) for t in fast) / 4  # ~4 chars a token


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False
