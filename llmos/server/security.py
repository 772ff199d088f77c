"""The daemon's guards: where it may bind, bearer auth, body size, request metrics.

They live in one pure-ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers
streaming responses) so every route, streaming or not, passes the same checks.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from llmos.errors import ConfigError
from llmos.server.errors import error_body
from llmos.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})  # answered without a key: liveness probes
MCP_PATH = "/mcp"
MCP_CLIENT = "mcp_client"  # the scope state key naming the MCP client an mcp_keys key is


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise ConfigError(
            f"refusing to bind {host}: serving beyond loopback needs an API key "
            "(set LLMOS_API_KEY or pass --api-key)"
        )


class _BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without Content-Length grows past the limit; an
    HTTPException so that FastAPI's body parsing passes it through as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body: int,
        metrics: Metrics,
        mcp_keys: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.mcp_keys = dict(mcp_keys or {})  # key -> MCP client: opens /mcp, nothing else
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                started = True
            await send(message)

        try:
            if not self._authorized(scope):
                status = 401
                self.metrics.reject("auth")
                await _send_error(
                    send,
                    401,
                    "missing or wrong API key (Authorization: Bearer <key>)",
                    "invalid_api_key",
                )
                return
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                status = 413
                self.metrics.reject("body")
                await _send_error(
                    send, 413, f"request body exceeds {self.max_body} bytes", "body_too_large"
                )
                return
            seen = 0

            async def receive_limited() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise _BodyTooLarge(self.max_body)
                return message

            try:
                await self.app(scope, receive_limited, send_wrapper)
            except _BodyTooLarge:
                self.metrics.reject("body")
                if not started:
                    status = 413
                    await _send_error(
                        send, 413, f"request body exceeds {self.max_body} bytes", "body_too_large"
                    )
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            spent = time.perf_counter() - t0
            self.metrics.answered(scope.get("method", "GET"), path, status, spent)

    def _authorized(self, scope: Scope) -> bool:
        auth = _header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if token and scope.get("path") == MCP_PATH:
            for key, client in self.mcp_keys.items():
                if hmac.compare_digest(token.encode(), key.encode()):
                    scope.setdefault("state", {})[MCP_CLIENT] = client
                    return True
        if not self.api_key or scope.get("path") in OPEN_PATHS:
            return True
        return bool(token) and hmac.compare_digest(token.encode(), self.api_key.encode())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _send_error(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
