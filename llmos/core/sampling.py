"""What a generation request asks for: sampling settings, stops, limits, constraints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one sequence; they build one llama.cpp sampler chain.

    temperature 0 means greedy. `grammar` is GBNF text; `json_schema` is turned into GBNF.
    """

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    json_schema: dict[str, Any] | None = field(default=None, hash=False)
    logit_bias: dict[int, float] | None = field(default=None, hash=False)
    ignore_eos: bool = False  # never end early: for fixed-length work such as benchmarks
    # draft from the sequence's own context (prompt lookup) and verify in one batch: the
    # output is unchanged; None: the engine decides (on for long prompts, `speculation`)
    speculate: bool | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("give grammar or json_schema, not both")
        if self.ignore_eos and (self.grammar is not None or self.json_schema is not None):
            # a finished grammar allows only the end of generation, which ignore_eos forbids
            raise ValueError("ignore_eos cannot be combined with a grammar or json_schema")
        if isinstance(self.stop, str):  # a single string is a common slip
            object.__setattr__(self, "stop", (self.stop,))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
