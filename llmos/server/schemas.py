"""Request bodies of the REST API: OpenAI's shapes (the fields llmos honours) and native ones.

Unknown fields are ignored rather than refused, as OpenAI-compatible servers do, so a
newer client's extra options never break a request. Fields llmos cannot honour with a
given value (`n` > 1, image content, `logit_bias`) are refused with a clear 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"


class ToolCall(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None
    # llama.cpp's servers accept a bare schema next to json_object; so do we
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingFields(_Lenient):
    """Sampling options shared by chat and text completions (plus llama.cpp's extras)."""

    model: str | None = Field(None, description="a model name from GET /v1/models")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # llama.cpp-style extensions
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False
    grammar: str | None = Field(
        None, max_length=65536, description="GBNF the output must follow (as llama-server's)"
    )


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for text completions


class EmbeddingRequest(_Lenient):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


# -- native ------------------------------------------------------------------------------
class SpawnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    program: str | None = Field(None, description="a built-in program, e.g. 'chat'")
    path: str | None = Field(
        None, description="an agent program file on the daemon's machine (async def main(ctx, ...))"
    )
    args: list[Any] = Field(default_factory=list)
    name: str | None = None
    model: str | None = None
    nice: int = Field(0, ge=-20, le=19)
    caps: list[str] | None = Field(None, description="capabilities (default: the kernel's)")


class SignalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signal: str | int = Field("TERM", description="TERM, KILL, STOP or CONT")


class NiceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nice: int = Field(ge=-20, le=19, description="new priority, like Unix nice")


class SyscallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    args: dict[str, Any] = Field(default_factory=dict, description="the syscall's arguments")


class FsWriteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    content: str


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    k: int = Field(5, ge=1, le=100)
    path: str | None = Field(None, description="only files under this directory")


class QaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=50)
