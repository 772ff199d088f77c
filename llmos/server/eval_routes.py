"""The evaluation routes: `/v1/eval/*` over the `eval.*` syscalls (perplexity, a shipped
task set, retrieval over the memory FS, the stored runs, a comparison).

Each request is the syscall in a short process of its own (`api:eval.perplexity`, ...), with
capability `eval` only, so a long perplexity shows in `GET /v1/processes` and stops with
`POST /v1/processes/{pid}/signal` like any other process. A client names a catalog model,
never a file on the daemon's machine: it sends the text itself, or names a memory-FS file.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from llmos.server.state import Api


class PerplexityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a catalog model (default: the daemon's)")
    text: str | None = Field(None, description="the text to score (default: the shipped one)")
    ctx: int = Field(512, ge=8, le=65536, description="tokens per chunk; the second half scored")
    batch: int | None = Field(None, ge=1, description="tokens per decode (default: ctx)")
    source: str | None = Field(None, description="a name for the text in the stored run")


class TaskRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: str = Field(description="a shipped task set's name (translation, arithmetic, ...)")
    model: str | None = Field(None, description="a catalog model (default: the daemon's)")
    max_tokens: int = Field(64, ge=1, le=4096, description="tokens per answer")
    concurrency: int | None = Field(None, ge=1, le=256, description="prompts at once")


class RagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: str = Field(
        description="a JSONL file on the memory FS: question, sources, references (optional)"
    )
    scope: str = Field("/", description="the memory-FS folder searched")
    k: int = Field(4, ge=1, le=100, description="chunks retrieved per question")
    model: str | None = Field(None, description="the model answering (default: the daemon's)")
    max_tokens: int = Field(128, ge=1, le=4096, description="tokens per answer")
    concurrency: int | None = Field(None, ge=1, le=256, description="questions at once")


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[int] = Field(min_length=1, max_length=100, description="stored run ids")


def router(api: Api) -> APIRouter:
    r = APIRouter()

    @r.post("/v1/eval/perplexity", tags=["eval"])
    async def perplexity(body: PerplexityRequest) -> dict[str, Any]:
        args = body.model_dump()
        args["model"] = api.model_name(body.model)  # 404 for a name the catalog lacks
        result: dict[str, Any] = await api.syscall("eval.perplexity", args)
        return result

    @r.post("/v1/eval/run", tags=["eval"])
    async def run_tasks(body: TaskRunRequest) -> dict[str, Any]:
        args = body.model_dump()
        args["model"] = api.model_name(body.model)
        result: dict[str, Any] = await api.syscall("eval.run", args)
        return result

    @r.post("/v1/eval/rag", tags=["eval"])
    async def rag(body: RagRequest) -> dict[str, Any]:
        args = body.model_dump()
        if body.model is not None:  # none needed when no question has references
            args["model"] = api.model_name(body.model)
        result: dict[str, Any] = await api.syscall("eval.rag", args)
        return result

    @r.get("/v1/eval/runs", tags=["eval"])
    async def runs(last: int = 10) -> dict[str, Any]:
        data = await api.syscall("eval.runs", {"last": last})
        return {"object": "list", "data": data}

    @r.post("/v1/eval/compare", tags=["eval"])
    async def compare(body: CompareRequest) -> dict[str, Any]:
        result: dict[str, Any] = await api.syscall("eval.compare", {"ids": body.ids})
        return result

    return r
