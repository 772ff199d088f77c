"""The one path every generation request takes: admit → generate → stream or settle.

An endpoint says two things: how it builds its prompt (`Plan`, built inside admission, so
a request that fails to build still frees its place in the queue) and how it words its
answer (`Shape`: the chunks of a stream, the body of a settled answer). Everything else is
here, once: the context check, the request's process (`api:chat`, `api:complete`) on the
shared scheduler and batched engine, following its stdout, and the end. When the client
leaves first, streaming or not, the process gets KILL, which frees its KV sequence at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sse_starlette import ServerSentEvent
from starlette.responses import Response

from llmos.core.process import Process, Signal
from llmos.core.sampling import SamplingParams
from llmos.errors import LlmosError
from llmos.kernel.engine import Generation
from llmos.server import compat
from llmos.server.errors import ApiError, from_llmos
from llmos.server.schemas import SamplingFields
from llmos.server.state import API_CAPS, Api, Ticket
from llmos.server.streaming import event_stream, sse, until_done_or_gone


class Shape(ABC):
    """How one endpoint words its answer; `respond` decides when each part is sent."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id = compat.new_id(prefix)
        self.created = compat.now()
        self.model = model

    def head(self) -> list[dict[str, Any]]:
        """Chunks sent before any text."""
        return []

    @abstractmethod
    def piece(self, text: str) -> dict[str, Any] | None:
        """The chunk for one piece of streamed text; None holds it back until the end."""

    @abstractmethod
    def tail(self, gen: Generation) -> list[dict[str, Any]]:
        """Chunks after the text: anything held back, then the finish reason."""

    @abstractmethod
    def blank(self) -> dict[str, Any]:
        """A chunk that carries nothing, for the usage chunk to fill."""

    @abstractmethod
    def whole(self, gen: Generation) -> dict[str, Any]:
        """The body of a non-streaming answer."""

    def usage(self, gen: Generation) -> dict[str, Any]:
        """The last stream chunk OpenAI sends with `include_usage`: no choices, the usage."""
        chunk = self.blank()
        chunk["choices"] = []
        chunk["usage"] = compat.usage(gen.stats.prompt_tokens, gen.stats.generated)
        return chunk


@dataclass
class Plan:
    """What an endpoint asks to generate."""

    model: str
    # token ids; or, for a remote model or a route, chat messages or text as they are
    prompt: list[int] | list[dict[str, Any]] | str
    max_tokens: int | None
    shape: Shape
    schema: dict[str, Any] | None = None


@dataclass
class _Job:
    """What a request's process generates, and what came of it."""

    prompt: list[int] | list[dict[str, Any]] | str
    params: SamplingParams
    model: str
    gen: Generation | None = None
    error: LlmosError | None = None


async def _generate_program(ctx: Any, job: _Job) -> int:
    try:
        job.gen = await ctx.kernel.generate(ctx.process, job.prompt, job.params, model=job.model)
    except LlmosError as exc:
        job.error = exc
        return 1
    return 0


async def respond(
    api: Api, request: Request, body: SamplingFields, name: str,
    plan: Callable[[], Awaitable[Plan]],
) -> Response:  # fmt: skip
    """Admit the request, run its generation as process `name`, and answer it."""
    ticket = api.admit()
    try:
        p = await plan()
        job = await _prepare(api, body, p)
        proc = await api.kernel.spawn(
            _generate_program, job, name=name, caps=API_CAPS, model=job.model
        )
    except BaseException:
        ticket.release()
        raise
    shape = p.shape
    headers = {"x-llmos-pid": str(proc.pid)}
    if not body.stream:
        gen = await _settled(api, request, proc, job, ticket)
        if gen is None:
            return Response(status_code=499)  # the client left; nobody reads this
        return JSONResponse(shape.whole(gen), headers=headers)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            for chunk in shape.head():
                yield sse(chunk)
            async for text in proc.stdout.follow():
                piece = shape.piece(text)
                if piece is not None:
                    yield sse(piece)
            await proc.wait()
            try:
                gen = _outcome(api, proc, job)
            except ApiError as exc:
                yield sse(exc.body())
                return
            for chunk in shape.tail(gen):
                yield sse(chunk)
            if include_usage:
                yield sse(shape.usage(gen))
            yield sse("[DONE]")
        finally:  # ended, failed, or cancelled because the client left
            _finish(api, proc, ticket)

    return event_stream(events(), headers)


async def _prepare(api: Api, body: SamplingFields, plan: Plan) -> _Job:
    prompt, max_tokens = plan.prompt, plan.max_tokens
    cap = api.settings.server_max_tokens
    if not _tokens(prompt):  # a remote model or a route: the serving engine checks the context
        if max_tokens is None:
            max_tokens = min(api.settings.max_tokens_default, cap)
        params = compat.sampling_params(
            body, max_tokens=max_tokens, cap=cap, json_schema=plan.schema
        )
        if plan.model in api.settings.routes:  # no model fits: a 400 before any stream opens
            kernel = api.kernel
            kernel.route(plan.model, 0, kernel.needs(plan.model, prompt, params))
        return _Job(prompt, params, plan.model)
    engine = await api.kernel.engine(plan.model)
    room = engine.seq_ctx_max - len(prompt)
    if max_tokens is not None and max_tokens <= cap and max_tokens > room:
        raise ApiError(
            400, f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"{engine.seq_ctx_max}-token context", param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    if room < 1:
        raise ApiError(
            400, f"prompt of {len(prompt)} tokens does not fit the {engine.seq_ctx_max}-token context",
            param="messages", code="context_length_exceeded",
        )  # fmt: skip
    if max_tokens is None:
        max_tokens = min(api.settings.max_tokens_default, cap, room)
    params = compat.sampling_params(body, max_tokens=max_tokens, cap=cap, json_schema=plan.schema)
    return _Job(prompt, params, plan.model)


def _tokens(prompt: Any) -> bool:
    return isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int))


async def _settled(
    api: Api, request: Request, proc: Process, job: _Job, ticket: Ticket
) -> Generation | None:
    """A non-streaming request's finished generation, or None when its client left."""
    try:
        if not await until_done_or_gone(request, proc):
            return None
        return _outcome(api, proc, job)
    finally:
        _finish(api, proc, ticket)


def _outcome(api: Api, proc: Process, job: _Job) -> Generation:
    """The finished generation, or the ApiError that explains why there is none."""
    if job.error is not None:
        raise from_llmos(job.error)
    if job.gen is None:
        raise ApiError(
            500, f"request process {proc.pid} ended without an answer ({proc.exit_reason})"
        )
    api.metrics.tokens_generated.inc(job.gen.stats.generated)
    api.metrics.prompt_tokens.inc(job.gen.stats.prompt_tokens)
    return job.gen


def _finish(api: Api, proc: Process, ticket: Ticket) -> None:
    if proc.alive:
        api.kernel.signal(proc.pid, Signal.KILL, reason="client disconnected")
        api.metrics.disconnects.inc()
    ticket.release()
    api.retire(proc)
