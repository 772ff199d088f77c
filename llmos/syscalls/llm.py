"""`llm.*` syscalls: generation on the shared, batched engine."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llmos.core.context import Context
from llmos.core.sampling import SamplingParams
from llmos.core.syscall import syscall
from llmos.errors import BadArguments


class ChatMessage(BaseModel):
    role: str
    content: str


class GenResult(BaseModel):
    text: str
    finish_reason: str
    tokens: int
    prompt_tokens: int
    tokens_per_s: float | None = None
    ttft: float | None = None


def _result(gen: Any) -> GenResult:
    st = gen.stats
    return GenResult(
        text=gen.text, finish_reason=gen.reason or "stop", tokens=st.generated,
        prompt_tokens=st.prompt_tokens, tokens_per_s=st.tokens_per_s, ttft=st.ttft,
    )  # fmt: skip


def _params(
    temperature: float, max_tokens: int | None, stop: list[str] | None, seed: int | None,
    json_schema: dict[str, Any] | None, grammar: str | None, ignore_eos: bool = False,
    speculate: bool | None = None,
) -> SamplingParams:  # fmt: skip
    try:
        return SamplingParams(
            temperature=temperature, max_tokens=max_tokens, stop=tuple(stop or ()), seed=seed,
            json_schema=json_schema, grammar=grammar, ignore_eos=ignore_eos, speculate=speculate,
        )  # fmt: skip
    except ValueError as exc:
        raise BadArguments(str(exc)) from None


@syscall("llm.chat")
async def chat(
    ctx: Context,
    messages: list[ChatMessage],
    model: str | None = None,
    temperature: float = 0.7,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    json_schema: dict[str, Any] | None = None,
    grammar: str | None = None,
    stream: bool = True,
    chat_format: str | None = None,
    speculate: bool | None = None,
) -> GenResult:
    """Chat with a model using its own chat template; tokens stream to the caller's stdout.
    `speculate=True` drafts from the context and verifies in one batch (the same
    distribution; None: the `speculation` setting decides)."""
    if not messages:
        raise BadArguments("llm.chat: messages must not be empty")
    params = _params(temperature, max_tokens, stop, seed, json_schema, grammar, False, speculate)
    prompt = await ctx.kernel.render_chat(
        [m.model_dump() for m in messages], model or ctx.model, chat_format=chat_format
    )
    gen = await ctx.kernel.generate(ctx.process, prompt, params, model=model, stream=stream)
    return _result(gen)


@syscall("llm.complete")
async def complete(
    ctx: Context,
    prompt: str,
    model: str | None = None,
    temperature: float = 0.7,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    json_schema: dict[str, Any] | None = None,
    grammar: str | None = None,
    stream: bool = True,
    ignore_eos: bool = False,
    speculate: bool | None = None,
) -> GenResult:
    """Continue a raw prompt (no chat template). `ignore_eos` generates exactly
    `max_tokens` (for benchmarks, as llama-server's option of that name); `speculate` as
    in `llm.chat`."""
    if ignore_eos and max_tokens is None:
        raise BadArguments("llm.complete: ignore_eos needs max_tokens")
    params = _params(
        temperature, max_tokens, stop, seed, json_schema, grammar, ignore_eos, speculate
    )
    gen = await ctx.kernel.generate(ctx.process, prompt, params, model=model, stream=stream)
    return _result(gen)


@syscall("llm.tokenize")
async def tokenize(ctx: Context, text: str, model: str | None = None) -> list[int]:
    """Token ids of a text for a model."""
    engine = await ctx.kernel.engine(model or ctx.model)
    return engine.tokenize(text)
