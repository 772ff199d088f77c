"""A deterministic backend with the real backend's interface, for scheduler and kernel tests.

Tokens are UTF-8 bytes (0-255) plus a few specials. The "model" is a pure function of the
sequence's KV content, so batching, swapping and prefix copies can be checked exactly:
- after the `<|assistant|>` marker it spells out `responder(conversation)` then EOS;
- with no marker it continues with letters derived from the last tokens (never EOS).
The KV cache is one list of tokens per slot; positions are checked on every decode, so an
engine bug that skips or repeats a position fails loudly here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.kernel.backend import BatchEntry, DecodeNoSpace

BOS, EOS, ASSISTANT = 256, 257, 258
_SPECIALS = {"<|bos|>": BOS, "<|eos|>": EOS, "<|assistant|>": ASSISTANT}
_NAMES = {v: k for k, v in _SPECIALS.items()}

SCRIPTED_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def default_responder(conversation: str) -> str:
    last = conversation.strip().splitlines()[-1] if conversation.strip() else ""
    if last.startswith("<|user|>"):
        last = last[len("<|user|>") :]
    return f"You said: {last}"


class _Sampler:
    """A sequence's scripted sampler: its params and the tokens it sampled (the state a
    grammar sampler keeps)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.ignore_eos = params.ignore_eos
        self.sampled: list[int] = []


class ScriptedBackend:
    """`forced(text_so_far)`, when given, plays a grammar for sequences that have one
    (`grammar` or `json_schema` set): the text it returns is what the "grammar" forces
    next, right or wrong (the engine verifies it either way)."""

    def __init__(
        self,
        *,
        name: str = "scripted",
        n_slots: int = 4,
        n_ctx: int = 4096,
        responder: Callable[[str], str] = default_responder,
        on_decode: Callable[[list[BatchEntry]], None] | None = None,
        forced: Callable[[str], str] | None = None,
    ) -> None:
        self.name = name
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.n_ctx_train = n_ctx
        self.n_ctx_seq = n_ctx
        self.responder = responder
        self.on_decode = on_decode
        self.forced = forced
        self.kv: list[list[int]] = [[] for _ in range(n_slots)]
        self.batches: list[list[tuple[int, int]]] = []  # (slot, n_tokens) per decode call
        self._last_slots: list[tuple[int, int]] = []  # (slot, KV length) per batch index
        self._reply_cache: dict[tuple[Any, ...], list[int]] = {}
        self.adapter: str | None = None  # a "LoRA adapter": replies start with "[its stem] "
        self.adapters_used: list[str | None] = []  # the adapter of each decode call
        self.closed = False

    # -- vocabulary -------------------------------------------------------------------
    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        out: list[int] = [BOS] if add_special else []
        i = 0
        while i < len(text):
            if parse_special and text[i] == "<":
                for s, tok in _SPECIALS.items():
                    if text.startswith(s, i):
                        out.append(tok)
                        i += len(s)
                        break
                else:
                    out.extend(text[i].encode())
                    i += 1
                continue
            out.extend(text[i].encode())
            i += 1
        return out

    def token_bytes(self, token: int) -> bytes:
        if token < 256:
            return bytes([token])
        return b"" if token in (BOS, EOS) else _NAMES[token].encode()

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def chat_template(self) -> str | None:
        return SCRIPTED_TEMPLATE

    def architecture(self) -> str | None:
        return "scripted"

    def special_tokens(self) -> dict[str, str]:
        return {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}

    # -- sampling ---------------------------------------------------------------------
    def new_sampler(self, params: SamplingParams) -> Any:
        return _Sampler(params)

    def forced_text(self, sampler: Any, limit: int) -> str:
        p = sampler.params
        if self.forced is None or (p.grammar is None and p.json_schema is None):
            return ""
        done = bytes(t for t in sampler.sampled if t < 256).decode("utf-8", "replace")
        return self.forced(done)[:limit]

    def free_sampler(self, sampler: Any) -> None:
        return None

    def _next_token(self, ctx: list[int]) -> int:
        if ASSISTANT in ctx:
            cut = len(ctx) - 1 - ctx[::-1].index(ASSISTANT)
            key = (self.adapter, *ctx[:cut])
            reply = self._reply_cache.get(key)
            if reply is None:
                conv = bytes(t for t in ctx[:cut] if t < 256).decode("utf-8", "replace")
                text = self.responder(conv)
                if self.adapter is not None:
                    text = f"[{self.adapter.rsplit('/', 1)[-1].removesuffix('.gguf')}] {text}"
                reply = [*text.encode(), EOS]
                self._reply_cache[key] = reply
            n = len(ctx) - cut - 1
            return reply[n] if n < len(reply) else EOS
        tail = ctx[-3:]
        return ord("a") + (sum(tail) * 31 + len(ctx)) % 26

    # -- evaluation -------------------------------------------------------------------
    def decode(self, entries: list[BatchEntry]) -> list[int]:
        need = sum(len(e.tokens) for e in entries)
        if sum(len(k) for k in self.kv) + need > self.n_ctx:
            raise DecodeNoSpace(f"scripted KV full ({self.n_ctx} cells)")
        out: list[int] = []
        self._last_slots = []
        idx = 0
        for e in entries:
            kv = self.kv[e.slot]
            if e.pos != len(kv):
                raise AssertionError(f"slot {e.slot}: decode at pos {e.pos}, KV has {len(kv)}")
            kv.extend(e.tokens)
            idx += len(e.tokens)
            out.append(idx - 1 - e.draft if e.logits or e.draft else -1)
            # each batch index's logits see the KV up to and including its own token
            self._last_slots.extend((e.slot, e.pos + i + 1) for i in range(len(e.tokens)))
        self.batches.append([(e.slot, len(e.tokens)) for e in entries])
        self.adapters_used.append(self.adapter)
        if self.on_decode is not None:
            self.on_decode(entries)
        return out

    def sample(self, sampler: Any, index: int) -> int:
        slot, upto = self._last_slots[index]
        kv = self.kv[slot][:upto]
        token = self._next_token(kv)
        if token == EOS and sampler.ignore_eos:  # as a -inf logit bias
            token = ord("a") + len(kv) % 26
        sampler.sampled.append(token)
        return token

    def set_adapter(self, path: str | None) -> None:
        self.adapter = path

    # -- sequence state ---------------------------------------------------------------
    def seq_rm(self, slot: int, p0: int = -1, p1: int = -1) -> None:
        kv = self.kv[slot]
        start = 0 if p0 < 0 else p0
        end = len(kv) if p1 < 0 else p1
        if end < len(kv) and start < end:
            raise AssertionError("scripted backend removes only tails")
        del kv[start:end]

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        if self.kv[dst]:
            raise AssertionError(f"seq_cp into non-empty slot {dst}")
        end = len(self.kv[src]) if p1 < 0 else p1
        self.kv[dst] = list(self.kv[src][max(p0, 0) : end])

    def seq_save(self, slot: int) -> bytes:
        return json.dumps(self.kv[slot]).encode()

    def seq_load(self, slot: int, data: bytes) -> None:
        if self.kv[slot]:
            raise AssertionError(f"seq_load into non-empty slot {slot}")
        self.kv[slot] = list(json.loads(data))

    def close(self) -> None:
        self.closed = True
