"""The SSE transport, and noticing a client that leaves.

Streams go out through sse-starlette's `EventSourceResponse`: it listens for
`http.disconnect` beside the body, so when the client goes away the body generator is
cancelled at once (even while it waits for its first token) and its `finally` kills the
request's process; and it sends a comment ping every 15 s, which keeps proxies from
timing out a long wait (`PING_S`). SSE clients (the OpenAI SDK, ours) skip comment lines.

The wire format stays OpenAI's: `data: {json}` lines ended by a single `\\n`, a blank line
between events, `data: [DONE]` last. sse-starlette's default separator is `\\r\\n`, which is
valid SSE but not what OpenAI sends, so every event here is built with `SEP`.

Importing sse-starlette also hooks uvicorn's `Server.handle_exit`, so a daemon told to stop
(Ctrl-C, SIGTERM) ends its open streams instead of waiting for them; their processes are
killed like any other stream's whose client left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from llmos.core.process import Process

SEP = "\n"
PING_S = 15.0  # a comment line this often while a stream is quiet

STREAMS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or server-sent events when streaming",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


def sse(data: Any, event: str | None = None) -> ServerSentEvent:
    """One event: a string as it is (`[DONE]`), anything else as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ServerSentEvent(text, event=event, sep=SEP)


def event_stream(
    events: AsyncIterator[ServerSentEvent], headers: dict[str, str] | None = None
) -> EventSourceResponse:
    return EventSourceResponse(events, headers=headers, sep=SEP, ping=PING_S)


async def until_done_or_gone(request: Request, proc: Process) -> bool:
    """Wait for a process; False if the client disconnects first (the caller KILLs it).

    A non-streaming answer sends nothing until it is done, so nothing but this listener
    would notice the client leaving."""
    await _first_of(proc.wait(), _disconnected(request.receive))
    return proc._done.is_set()


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    """Return when the HTTP client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _first_of(*aws: Awaitable[Any]) -> None:
    """Run awaitables until the first one ends; cancel and settle the others."""
    futs: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in futs:
            t.cancel()
        await asyncio.gather(*futs, return_exceptions=True)
