"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions and
/v1/embeddings. Chat and completions differ only in how they build a prompt and word an
answer; both run through `generation.respond`."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from llmos.core.process import Signal
from llmos.kernel.engine import Generation
from llmos.server import compat
from llmos.server.errors import ApiError
from llmos.server.generation import Plan, Shape, respond
from llmos.server.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmos.server.state import API_CAPS, Api
from llmos.server.streaming import STREAMS


class ChatShape(Shape):
    """chat.completion(.chunk) objects; with tools, the reply is held back and parsed
    into `tool_calls` at the end (a half-streamed JSON call is no use to a client)."""

    def __init__(self, model: str, tools: compat.ToolPlan | None) -> None:
        super().__init__("chatcmpl", model)
        self.tools = tools

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return compat.chat_chunk(self.id, self.model, self.created, delta, finish)

    def message(self, gen: Generation) -> tuple[dict[str, Any], str]:
        reason = compat.finish_reason(gen.reason)
        if self.tools is None:
            return {"role": "assistant", "content": gen.text}, reason
        content, calls = compat.parse_tool_reply(gen.text, self.tools)
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            msg["tool_calls"] = calls
            reason = "tool_calls"
        return msg, reason

    def head(self) -> list[dict[str, Any]]:
        return [self.chunk({"role": "assistant", "content": ""})]

    def piece(self, text: str) -> dict[str, Any] | None:
        return self.chunk({"content": text}) if self.tools is None else None

    def tail(self, gen: Generation) -> list[dict[str, Any]]:
        msg, reason = self.message(gen)
        chunks = []
        if self.tools is not None:
            delta: dict[str, Any] = {}
            if msg.get("content"):
                delta["content"] = msg["content"]
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(msg["tool_calls"])]
            if delta:
                chunks.append(self.chunk(delta))
        chunks.append(self.chunk({}, reason))
        return chunks

    def blank(self) -> dict[str, Any]:
        return self.chunk({})

    def whole(self, gen: Generation) -> dict[str, Any]:
        msg, reason = self.message(gen)
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": reason}],
            "usage": compat.usage(gen.stats.prompt_tokens, gen.stats.generated),
        }  # fmt: skip


class CompletionShape(Shape):
    """text_completion objects; the stream and the settled answer have one shape."""

    def __init__(self, model: str) -> None:
        super().__init__("cmpl", model)

    def chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": self.id, "object": "text_completion", "created": self.created,
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }  # fmt: skip

    def piece(self, text: str) -> dict[str, Any] | None:
        return self.chunk(text, None)

    def tail(self, gen: Generation) -> list[dict[str, Any]]:
        return [self.chunk("", compat.finish_reason(gen.reason))]

    def blank(self) -> dict[str, Any]:
        return self.chunk("", None)

    def whole(self, gen: Generation) -> dict[str, Any]:
        result = self.chunk(gen.text, compat.finish_reason(gen.reason))
        result["usage"] = compat.usage(gen.stats.prompt_tokens, gen.stats.generated)
        return result


async def _embed_program(
    ctx: Any, embed: Callable[[list[str]], list[list[float]]], texts: list[str]
) -> Any:
    return await asyncio.to_thread(embed, texts)


def router(api: Api) -> APIRouter:
    r = APIRouter(tags=["openai"])
    k = api.kernel

    @r.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card(e) for e in api.models()]}

    @r.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        name = api.model_name(model_id)
        listed = name.partition("+")[2] or name  # BASE+ADAPTER: the adapter's card
        card = api.model_card(next(e for e in api.models() if e.name == listed))
        return {**card, "id": name}

    @r.post("/v1/chat/completions", response_model=None, responses=STREAMS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        async def plan() -> Plan:
            model = api.model_name(body.model)
            tools = compat.tool_plan(body)
            schema = tools.schema() if tools is not None else compat.response_schema(body)
            compat.check_schema(schema)
            messages = compat.kernel_messages(body.messages)
            if tools is not None:
                messages = compat.with_tool_prompt(messages, tools)
            prompt = await k.render_chat(messages, model)  # (a remote's or route's: messages)
            max_tokens = body.max_completion_tokens or body.max_tokens
            return Plan(model, prompt, max_tokens, ChatShape(model, tools), schema)

        return await respond(api, request, body, "api:chat", plan)

    @r.post("/v1/completions", response_model=None, responses=STREAMS)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        async def plan() -> Plan:
            model = api.model_name(body.model)
            if isinstance(body.prompt, list):
                if len(body.prompt) != 1:
                    raise ApiError(400, "give one prompt per request", param="prompt")
                text = body.prompt[0]
            else:
                text = body.prompt
            if not text:
                raise ApiError(400, "prompt must not be empty", param="prompt")
            if k.models.remote(model) is not None or model in k.settings.routes:
                return Plan(model, text, body.max_tokens, CompletionShape(model))
            engine = await k.engine(model)
            return Plan(model, engine.tokenize(text), body.max_tokens, CompletionShape(model))

        return await respond(api, request, body, "api:complete", plan)

    @r.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or len(texts) > 2048:
            raise ApiError(400, "input takes 1 to 2048 strings", param="input")
        proc = await k.spawn(_embed_program, api.embed, texts, name="api:embed", caps=API_CAPS)
        try:
            await k.wait(proc.pid)
        finally:
            if proc.alive:
                k.signal(proc.pid, Signal.KILL, reason="client disconnected")
            api.retire(proc)
        if proc.error or proc.result is None:
            last = (proc.error or "no result").strip().splitlines()[-1]
            raise ApiError(500, f"embedding failed: {last}")
        vectors: list[list[float]] = proc.result
        data = []
        for i, v in enumerate(vectors):
            emb: Any = v
            if body.encoding_format == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(t.split()) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": api.settings.embed_model,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    return r
