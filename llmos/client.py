"""A Python client for the llmos daemon (`llmos serve`), sync and async.

    from llmos.client import Client
    with Client() as c:                       # settings' host/port and api_key
        print(c.chat("Hello!"))
        for piece in c.chat_stream("Tell me a story"):
            print(piece, end="")
        pid = c.spawn("chat", "hi")["pid"]
        print(c.wait(pid)["exit_code"], c.logs(pid))

`AsyncClient` has the same methods as coroutines (streams are async iterators). Every
error the server answers becomes `ApiError` with its status, code and message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from llmos.errors import LlmosError

Messages = str | list[dict[str, Any]]


class ApiError(LlmosError):
    """The daemon answered with an error (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code


def default_url() -> str:
    from llmos.config import load_settings

    s = load_settings()
    host = s.server_host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: reach it on loopback
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{s.server_port}"


def _default_key() -> str | None:
    from llmos.config import load_settings

    return load_settings().api_key


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json().get("error", {})
        raise ApiError(resp.status_code, str(err.get("message")), err.get("code"))
    except (ValueError, AttributeError):
        raise ApiError(resp.status_code, resp.text[:500] or resp.reason_phrase) from None


def _messages(messages: Messages) -> list[dict[str, Any]]:
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else messages


def _chat_body(messages: Messages, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
    return {"messages": _messages(messages), "stream": stream, **_clean(options)}


def _clean(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _sse_data(line: str) -> Any:
    """The JSON of one `data:` line, None for other lines; raises on an error event."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None
    data = json.loads(payload)
    if isinstance(data, dict) and "error" in data:
        err = data["error"]
        raise ApiError(500, str(err.get("message")), err.get("code"))
    return data


def _delta_text(data: Any) -> str:
    choices = data.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    return str((c.get("delta") or {}).get("content") or c.get("text") or "")


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, timeout: float) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        key = api_key if api_key is not None else _default_key()
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout = timeout


class Client(_Base):
    """Blocking client; use as a context manager or call `close()`."""

    def __init__(
        self, base_url: str | None = None, *, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, path, **kw)
        _raise_for(resp)
        return resp.json()

    def _lines(self, method: str, path: str, **kw: Any) -> Iterator[str]:
        with self.http.stream(method, path, **kw) as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            yield from resp.iter_lines()

    # generation
    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    def models(self) -> list[str]:
        return [m["id"] for m in self._call("GET", "/v1/models")["data"]]

    def chat_completion(self, messages: Messages, **options: Any) -> dict[str, Any]:
        """The full OpenAI-shaped response of a chat completion."""
        return dict(
            self._call("POST", "/v1/chat/completions", json=_chat_body(messages, False, options))
        )

    def chat(self, messages: Messages, **options: Any) -> str:
        """The answer's text (options: model, max_tokens, temperature, seed, stop, ...)."""
        return str(
            self.chat_completion(messages, **options)["choices"][0]["message"]["content"] or ""
        )

    def chat_stream(self, messages: Messages, **options: Any) -> Iterator[str]:
        for line in self._lines(
            "POST", "/v1/chat/completions", json=_chat_body(messages, True, options)
        ):
            data = _sse_data(line)
            if data is not None and (text := _delta_text(data)):
                yield text

    def complete(self, prompt: str, **options: Any) -> str:
        body = {"prompt": prompt, **_clean(options)}
        return str(self._call("POST", "/v1/completions", json=body)["choices"][0]["text"])

    def embed(self, texts: str | list[str]) -> list[list[float]]:
        data = self._call("POST", "/v1/embeddings", json={"input": texts})["data"]
        return [d["embedding"] for d in data]

    # processes
    def ps(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/processes")["data"])

    def get(self, pid: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/processes/{pid}"))

    def spawn(
        self, program: str | None = None, *args: Any, path: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Start a built-in program by name, or a program file on the daemon's machine."""
        body = {"program": program, "path": path, "args": list(args), **_clean(options)}
        return dict(self._call("POST", "/v1/processes", json=_clean(body)))

    def kill(self, pid: int, signal: str | int = "TERM") -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/processes/{pid}/signal", json={"signal": signal}))

    def wait(self, pid: int, timeout_s: float = 60.0) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/processes/{pid}/wait", params={"timeout_s": timeout_s}))

    def logs(self, pid: int, stream: str = "stdout") -> str:
        """A process's stdout, or its stderr (tracebacks, kill reasons) with stream="stderr"."""
        params = {"stream": stream}
        return str(self._call("GET", f"/v1/processes/{pid}/logs", params=params)["text"])

    def follow(self, pid: int) -> Iterator[str]:
        """A process's output as it is written, until it exits."""
        for line in self._lines("GET", f"/v1/processes/{pid}/logs", params={"follow": True}):
            data = _sse_data(line)
            if isinstance(data, dict) and "text" in data:
                yield str(data["text"])

    # memory
    def fs_ls(self, path: str = "/") -> Any:
        return self._call("GET", "/v1/fs/ls", params={"path": path})["entries"]

    def fs_read(self, path: str) -> Any:
        return self._call("GET", "/v1/fs/read", params={"path": path})["content"]

    def fs_write(self, path: str, content: str) -> Any:
        return self._call("PUT", "/v1/fs/write", json={"path": path, "content": content})["result"]

    def fs_rm(self, path: str) -> Any:
        return self._call("DELETE", "/v1/fs/rm", params={"path": path})["result"]

    def fs_search(self, query: str, k: int = 5, path: str | None = None) -> Any:
        body = _clean({"query": query, "k": k, "path": path})
        return self._call("POST", "/v1/fs/search", json=body)["results"]

    def qa(self, question: str, k: int | None = None) -> Any:
        return self._call("POST", "/v1/qa", json=_clean({"question": question, "k": k}))["answer"]

    # any syscall, run by the daemon in its own process under the daemon's policy
    def syscalls(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/syscalls")["data"])

    def syscall(self, name: str, /, **args: Any) -> Any:
        return self._call("POST", f"/v1/syscalls/{name}", json={"args": args})["result"]

    def nice(self, pid: int, nice: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/processes/{pid}/nice", json={"nice": nice}))

    def load_model(self, name: str) -> list[str]:
        return list(self._call("POST", f"/v1/models/{name}/load")["loaded"])

    def unload_model(self, name: str) -> list[str]:
        return list(self._call("POST", f"/v1/models/{name}/unload")["loaded"])


class AsyncClient(_Base):
    """The same methods as `Client`, as coroutines; streams are async iterators."""

    def __init__(
        self, base_url: str | None = None, *, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.http.request(method, path, **kw)
        _raise_for(resp)
        return resp.json()

    async def _lines(self, method: str, path: str, **kw: Any) -> AsyncIterator[str]:
        async with self.http.stream(method, path, **kw) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _raise_for(resp)
            async for line in resp.aiter_lines():
                yield line

    async def health(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/health"))

    async def models(self) -> list[str]:
        return [m["id"] for m in (await self._call("GET", "/v1/models"))["data"]]

    async def chat_completion(self, messages: Messages, **options: Any) -> dict[str, Any]:
        body = _chat_body(messages, False, options)
        return dict(await self._call("POST", "/v1/chat/completions", json=body))

    async def chat(self, messages: Messages, **options: Any) -> str:
        r = await self.chat_completion(messages, **options)
        return str(r["choices"][0]["message"]["content"] or "")

    async def chat_stream(self, messages: Messages, **options: Any) -> AsyncIterator[str]:
        body = _chat_body(messages, True, options)
        async for line in self._lines("POST", "/v1/chat/completions", json=body):
            data = _sse_data(line)
            if data is not None and (text := _delta_text(data)):
                yield text

    async def complete(self, prompt: str, **options: Any) -> str:
        body = {"prompt": prompt, **_clean(options)}
        return str((await self._call("POST", "/v1/completions", json=body))["choices"][0]["text"])

    async def embed(self, texts: str | list[str]) -> list[list[float]]:
        data = (await self._call("POST", "/v1/embeddings", json={"input": texts}))["data"]
        return [d["embedding"] for d in data]

    async def ps(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/processes"))["data"])

    async def get(self, pid: int) -> dict[str, Any]:
        return dict(await self._call("GET", f"/v1/processes/{pid}"))

    async def spawn(
        self, program: str | None = None, *args: Any, path: str | None = None, **options: Any
    ) -> dict[str, Any]:
        body = {"program": program, "path": path, "args": list(args), **_clean(options)}
        return dict(await self._call("POST", "/v1/processes", json=_clean(body)))

    async def kill(self, pid: int, signal: str | int = "TERM") -> dict[str, Any]:
        return dict(
            await self._call("POST", f"/v1/processes/{pid}/signal", json={"signal": signal})
        )

    async def wait(self, pid: int, timeout_s: float = 60.0) -> dict[str, Any]:
        params = {"timeout_s": timeout_s}
        return dict(await self._call("GET", f"/v1/processes/{pid}/wait", params=params))

    async def logs(self, pid: int, stream: str = "stdout") -> str:
        params = {"stream": stream}
        return str((await self._call("GET", f"/v1/processes/{pid}/logs", params=params))["text"])

    async def follow(self, pid: int) -> AsyncIterator[str]:
        async for line in self._lines("GET", f"/v1/processes/{pid}/logs", params={"follow": True}):
            data = _sse_data(line)
            if isinstance(data, dict) and "text" in data:
                yield str(data["text"])

    async def fs_ls(self, path: str = "/") -> Any:
        return (await self._call("GET", "/v1/fs/ls", params={"path": path}))["entries"]

    async def fs_read(self, path: str) -> Any:
        return (await self._call("GET", "/v1/fs/read", params={"path": path}))["content"]

    async def fs_write(self, path: str, content: str) -> Any:
        body = {"path": path, "content": content}
        return (await self._call("PUT", "/v1/fs/write", json=body))["result"]

    async def fs_rm(self, path: str) -> Any:
        return (await self._call("DELETE", "/v1/fs/rm", params={"path": path}))["result"]

    async def fs_search(self, query: str, k: int = 5, path: str | None = None) -> Any:
        body = _clean({"query": query, "k": k, "path": path})
        return (await self._call("POST", "/v1/fs/search", json=body))["results"]

    async def qa(self, question: str, k: int | None = None) -> Any:
        body = _clean({"question": question, "k": k})
        return (await self._call("POST", "/v1/qa", json=body))["answer"]

    async def syscalls(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/syscalls"))["data"])

    async def syscall(self, name: str, /, **args: Any) -> Any:
        return (await self._call("POST", f"/v1/syscalls/{name}", json={"args": args}))["result"]

    async def nice(self, pid: int, nice: int) -> dict[str, Any]:
        return dict(await self._call("POST", f"/v1/processes/{pid}/nice", json={"nice": nice}))

    async def load_model(self, name: str) -> list[str]:
        return list((await self._call("POST", f"/v1/models/{name}/load"))["loaded"])

    async def unload_model(self, name: str) -> list[str]:
        return list((await self._call("POST", f"/v1/models/{name}/unload"))["loaded"])
