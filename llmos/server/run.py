"""Running the API: `serve()` for `llmos serve`, `BackgroundServer` for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from llmos.config import Settings
from llmos.server.security import check_bind


def _config(app: Any, **kw: Any) -> Any:
    import uvicorn

    # a client holding a stream open (an MCP client's GET stream, an SSE chat) would keep a
    # graceful shutdown waiting for ever: after 5 s the open connections are closed
    kw.setdefault("timeout_graceful_shutdown", 5)
    return uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, **kw)


def serve(
    settings: Settings, *, host: str | None = None, port: int | None = None, preload: bool = True
) -> None:
    """Serve until interrupted. Refuses a non-loopback address without an API key."""
    import uvicorn

    from llmos.server.app import create_app

    host = host or settings.server_host
    port = settings.server_port if port is None else port
    check_bind(host, settings.api_key)
    app = create_app(settings, preload=preload)
    uvicorn.Server(_config(app, host=host, port=port)).run()


class BackgroundServer:
    """uvicorn on an ephemeral loopback port in a thread of its own (its own event loop).

    with BackgroundServer(create_app(settings)) as url:
        ...
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(_config(app))
        self.thread = threading.Thread(target=self._run, name="llmos-api", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    def start(self, timeout: float = 120.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
