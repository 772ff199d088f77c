"""Translation between OpenAI's request/response shapes and the kernel's.

Pure functions (no I/O), so the mapping is tested without a server.

Tool calls: a small model does not follow a free-form "call a tool" instruction
reliably, so when tools are offered the reply is constrained by a JSON schema built from
the tools' parameter schemas (the same grammar machinery as `response_format`). With
`tool_choice="auto"` the schema also admits `{"content": "..."}`: a plain answer.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.server.errors import ApiError
from llmos.server.schemas import (
    ChatCompletionRequest,
    ChatMessageIn,
    NamedToolChoice,
    SamplingFields,
    ToolDef,
)


def _text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise ApiError(
                400, f"content parts of type {part.type!r} are not supported", param="messages"
            )
        parts.append(part.text)
    return "".join(parts)


def kernel_messages(messages: list[ChatMessageIn]) -> list[dict[str, str]]:
    """OpenAI messages as plain role/content pairs a chat template understands.

    Tool results and earlier tool calls become text: small models' templates know only
    system/user/assistant, and some refuse any other role.
    """
    out: list[dict[str, str]] = []
    for m in messages:
        text = _text(m.content)
        if m.role == "developer":
            out.append({"role": "system", "content": text})
        elif m.role == "tool":
            who = f" {m.name}" if m.name else ""
            out.append({"role": "user", "content": f"Result of tool call{who}: {text}"})
        elif m.role == "assistant" and m.tool_calls:
            calls = [
                {"name": c.function.name, "arguments": _loads(c.function.arguments)}
                for c in m.tool_calls
            ]
            body = json.dumps(calls[0] if len(calls) == 1 else calls)
            out.append({"role": "assistant", "content": (text + "\n" + body).strip()})
        else:
            out.append({"role": m.role, "content": text})
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request uses tools: which may be called, and whether it must call one."""

    tools: list[ToolDef]
    required: bool

    def schema(self) -> dict[str, Any]:
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "arguments": t.function.parameters or {"type": "object"},
                },
                "required": ["name", "arguments"],
            }
            for t in self.tools
        ]
        if not self.required:
            calls.append(
                {
                    "type": "object",
                    "properties": {"content": {"type": "string"}},
                    "required": ["content"],
                }
            )
        return calls[0] if len(calls) == 1 else {"anyOf": calls}

    def system_prompt(self) -> str:
        specs = [
            {
                "name": t.function.name,
                "description": t.function.description or "",
                "parameters": t.function.parameters or {"type": "object"},
            }
            for t in self.tools
        ]
        how = 'Reply with one JSON object {"name": <function name>, "arguments": {...}}'
        if not self.required:
            how += ' to call a function, or {"content": <your answer>} to answer directly'
        return f"You can call these functions:\n{json.dumps(specs)}\n{how}."


def tool_plan(req: ChatCompletionRequest) -> ToolPlan | None:
    if not req.tools or req.tool_choice == "none":
        return None
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        chosen = [t for t in req.tools if t.function.name == choice.function.name]
        if not chosen:
            raise ApiError(
                400,
                f"tool_choice names {choice.function.name!r}, which is not in tools",
                param="tool_choice",
            )
        return ToolPlan(chosen, required=True)
    return ToolPlan(list(req.tools), required=choice == "required")


def with_tool_prompt(messages: list[dict[str, str]], plan: ToolPlan) -> list[dict[str, str]]:
    prompt = plan.system_prompt()
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{"role": "system", "content": f"{first['content']}\n\n{prompt}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def response_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return rf.schema_ or {"type": "object"}
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise ApiError(
            400, "response_format json_schema needs json_schema.schema", param="response_format"
        )
    return rf.json_schema.schema_


def sampling_params(
    req: SamplingFields,
    *,
    max_tokens: int | None,
    cap: int,
    json_schema: dict[str, Any] | None = None,
) -> SamplingParams:
    """The kernel's SamplingParams for a request; a clear 400 for what cannot be honoured."""
    if req.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    if req.logit_bias:
        raise ApiError(400, "logit_bias is not supported", param="logit_bias")
    if max_tokens is not None and max_tokens > cap:
        raise ApiError(
            400, f"max_tokens {max_tokens} exceeds this server's cap of {cap}", param="max_tokens",
            code="max_tokens_exceeded",
        )  # fmt: skip
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > 16 or any(not s for s in stop):
        raise ApiError(400, "stop takes at most 16 non-empty strings", param="stop")
    defaults = SamplingParams()
    try:
        return SamplingParams(
            temperature=defaults.temperature if req.temperature is None else req.temperature,
            top_p=req.top_p or defaults.top_p,
            top_k=defaults.top_k if req.top_k is None else req.top_k,
            min_p=defaults.min_p if req.min_p is None else req.min_p,
            repeat_penalty=req.repeat_penalty or defaults.repeat_penalty,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            seed=req.seed,
            max_tokens=max_tokens,
            stop=stop,
            json_schema=json_schema,
            grammar=req.grammar,
            ignore_eos=req.ignore_eos,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def check_schema(schema: dict[str, Any] | None) -> None:
    """Refuse a schema the grammar converter cannot take, before it reaches the engine."""
    if schema is None:
        return
    from llmos.kernel.llama_backend import json_schema_grammar

    try:
        json_schema_grammar(schema)
    except Exception as exc:
        raise ApiError(400, f"unsupported JSON schema: {exc}", param="response_format") from None


# -- responses -----------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def parse_tool_reply(text: str, plan: ToolPlan) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) from a constrained reply; unparsable text stays content."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text, []
    if not isinstance(data, dict):
        return text, []
    names = {t.function.name for t in plan.tools}
    if data.get("name") in names and "arguments" in data:
        call = {
            "id": new_id("call"),
            "type": "function",
            "function": {"name": data["name"], "arguments": json.dumps(data["arguments"])},
        }
        return None, [call]
    if isinstance(data.get("content"), str):
        return data["content"], []
    return text, []


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_chunk(
    cid: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def now() -> int:
    return int(time.time())
