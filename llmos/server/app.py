"""The REST API, assembled: `create_app` puts the routers, the guard and the error
handlers together over one kernel.

    app = create_app(settings)             # owns a kernel for the app's lifetime
    app = create_app(settings, kernel=k)   # serves a kernel someone else owns

Where each job lives:
    state.py          `Api`: the kernel, admission to the generation queue, models, embeddings
    openai_routes.py  /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings
    generation.py     the one admit → generate → stream-or-settle path chat and completions share
    streaming.py      the SSE transport (sse-starlette) and noticing a client that leaves
    native_routes.py  processes, syscalls, model load/unload, the memory filesystem
    app_routes.py     apps: list, search the index, install (explicit grants), run, remove
    eval_routes.py    /v1/eval/*: perplexity, task sets, retrieval, stored runs, comparison
    metrics.py        /metrics (prometheus_client, a registry per app) and /health
    llmos.mcp.server  /mcp: the MCP server over streamable HTTP (docs/MCP.md)
    security.py       the guard: bind rules, bearer auth, body limit, request counts
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from llmos import __version__
from llmos.config import Settings, load_settings
from llmos.errors import LlmosError
from llmos.kernel.kernel import Kernel
from llmos.memory.index import Embedder
from llmos.server import app_routes, eval_routes, metrics, native_routes, openai_routes
from llmos.server.errors import ApiError, error_body, from_llmos
from llmos.server.security import MCP_CLIENT, Guard
from llmos.server.state import Api

# -- the app ----------------------------------------------------------------------------
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "invalid request (OpenAI error shape)"},
    401: {"description": "missing or wrong API key"},
    404: {"description": "no such model, process or file"},
    413: {"description": "request body too large"},
    429: {"description": "queue full; see Retry-After"},
    501: {"description": "the daemon has no such subsystem (e.g. no memory filesystem)"},
}


def create_app(
    settings: Settings | None = None,
    *,
    kernel: Kernel | None = None,
    backend_factory: Callable[..., Any] | None = None,
    embedder: Embedder | None = None,
    preload: bool = False,
) -> FastAPI:
    """The FastAPI app. Without `kernel`, it boots one at startup and shuts it down after
    (`backend_factory` and `embedder` go to that kernel: a test's scripted model and
    deterministic embedder)."""
    settings = settings or (kernel.settings if kernel is not None else load_settings())
    owned = kernel is None
    k = kernel or Kernel(settings, backend_factory=backend_factory, embedder=embedder)
    api = Api(settings, k)
    from llmos.mcp.server import HttpEndpoint  # the MCP SDK loads with the app, not llmos

    mcp = HttpEndpoint(k, settings, lambda scope: (scope.get("state") or {}).get(MCP_CLIENT))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await k.start()
        if preload:
            await k.engine(settings.default_model)
        try:
            async with mcp.run():  # the task groups MCP sessions run in
                yield
        finally:
            if owned:
                await k.shutdown()

    app = FastAPI(
        title="llmos",
        version=__version__,
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
        mcp_keys=settings.mcp_keys,
    )
    _install_error_handlers(app)
    app.include_router(openai_routes.router(api))
    app.include_router(native_routes.router(api))
    app.include_router(app_routes.router(api))
    app.include_router(eval_routes.router(api))
    app.include_router(metrics.router(api))
    # an ASGI endpoint (every method: POST messages, GET stream, DELETE session)
    app.router.routes.append(Route("/mcp", endpoint=mcp, include_in_schema=False))
    return app


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
