"""The one narrow seam between the engine and a model runtime.

`EngineCore` (engine.py) does all scheduling, batching and streaming in Python; a
`Backend` only evaluates batches, samples and moves sequence state. `LlamaBackend`
(llama_backend.py, the only module that imports llama_cpp) and `ScriptedBackend`
(scripted.py, deterministic, for tests) implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from llmos.core.sampling import SamplingParams


@dataclass(slots=True)
class BatchEntry:
    """Tokens of one sequence slot evaluated in a step, starting at position `pos`."""

    slot: int
    tokens: list[int]
    pos: int
    logits: bool  # whether the last token's logits are needed (to sample)
    # drafted tokens at the end of `tokens` (speculation): logits are then needed for the
    # last `draft + 1` positions, and decode returns the batch index of the first of them
    draft: int = 0
    forced: bool = False  # the drafts are text the sequence's grammar forces (fast-forward)


class DecodeNoSpace(Exception):
    """The KV cache has no room for this batch (llama_decode returned 1)."""


class Backend(Protocol):
    name: str
    n_slots: int
    n_ctx: int  # KV cells of all slots together
    n_ctx_seq: int  # the most cells one slot can hold
    n_ctx_train: int

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def chat_template(self) -> str | None: ...

    def architecture(self) -> str | None: ...  # GGUF `general.architecture`

    def special_tokens(self) -> dict[str, str]: ...

    def new_sampler(self, params: SamplingParams) -> Any: ...

    def free_sampler(self, sampler: Any) -> None: ...

    def decode(self, entries: list[BatchEntry]) -> list[int]:
        """Evaluate all entries in one batch; return the batch index of each entry's
        last token where logits were asked for (with a draft: of the first of its last
        `draft + 1` tokens, whose logits follow at consecutive indices), else -1. Raise DecodeNoSpace when the KV
        cache is full (the cache is unchanged then)."""
        ...

    def forced_text(self, sampler: Any, limit: int) -> str:
        """The text the sampler's grammar admits as the only continuation from its state
        now (after the last sampled token), up to `limit` characters; "" when more than
        one character (or the end) may follow, or the sampler has no grammar."""
        ...

    def sample(self, sampler: Any, index: int) -> int:
        """Sample (and accept) the next token from the logits at batch `index`."""
        ...

    def set_adapter(self, path: str | None) -> None:
        """Apply the LoRA adapter at `path` (None: none) to every following batch; the
        backend loads an adapter on first use and keeps it. A bad file raises ModelError."""
        ...

    def seq_rm(self, slot: int, p0: int = -1, p1: int = -1) -> None: ...

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...

    def seq_save(self, slot: int) -> bytes: ...

    def seq_load(self, slot: int, data: bytes) -> None: ...

    def close(self) -> None: ...
