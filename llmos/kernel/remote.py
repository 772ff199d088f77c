"""Remote model backends: a model served by another engine (llama-server, vLLM, Ollama,
another `llmos serve`) through its OpenAI-compatible API, with a local model's kernel
semantics.

    RemoteEngine      one catalog entry of kind "openai": its URL, the remote model id,
                      the API key's environment variable (the key itself is never
                      stored), its context length and how many requests it takes at once
    RemoteGeneration  one request, streamed: iterate it for text, as a local Generation

What a process gets, as with a local model: its output streamed to its stdout, budgets,
the audit log, `ps`/`top` figures (queue wait, TTFT, tok/s), KILL (which closes the HTTP
stream at once) and priority. Priority works at admission: beyond the backend's
`parallel` limit requests wait in the engine's queue, the best `nice` first, with the
scheduler's aging (`aging_s`) so none starves.

Faults: a connection error, a timeout or a 5xx/429 answer before any token has streamed
is retried with exponential backoff and jitter (`remote_retries`); after that many
failures in a row the backend is marked down, and requests fail at once with the reason
until a health check (`GET /v1/models`, at most every `remote_probe_s`) finds it back.
Every request has timeouts (connect, and between two streamed chunks), so nothing hangs.
A stream that breaks after tokens came is an error for that request (it cannot resume).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from llmos.config import Settings
from llmos.core.sampling import SamplingParams
from llmos.errors import GenerationError, ModelError, UserError
from llmos.kernel.engine import SeqStats

Prompt = str | list[int] | list[dict[str, Any]]  # raw text, token ids, or chat messages
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class RemoteDown(GenerationError):
    """The backend is marked down (it kept failing) and no health check has found it back."""


@dataclass
class _Waiter:
    nice: int
    since: float
    ready: asyncio.Future[None]


def remote_meta(
    url: str, model: str, *, key_env: str | None, parallel: int, n_ctx: int,
    features: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A catalog entry of kind "openai"; `features` as `probe_features` found them."""
    return {
        "kind": "openai", "url": url.rstrip("/"), "model": model, "key_env": key_env,
        "parallel": parallel, "n_ctx": n_ctx, **(features or {}),
    }  # fmt: skip


def _headers(key_env: str | None) -> dict[str, str]:
    if not key_env:
        return {}
    key = os.environ.get(key_env)
    if not key:
        raise ModelError(f"the API key's environment variable {key_env} is not set")
    return {"Authorization": f"Bearer {key}"}


async def probe(url: str, key_env: str | None = None, wait_s: float = 10.0) -> list[str]:
    """The model ids an OpenAI-compatible server lists (`GET /v1/models`); a clear
    ModelError when it cannot be reached or answers otherwise."""
    import httpx

    base = url.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=wait_s) as http:
            r = await http.get(f"{base}/v1/models", headers=_headers(key_env))
    except httpx.HTTPError as exc:
        raise ModelError(f"{base} cannot be reached: {type(exc).__name__}: {exc}") from None
    if r.status_code != 200:
        raise ModelError(f"{base}/v1/models answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        return [str(m["id"]) for m in r.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ModelError(f"{base}/v1/models did not answer an OpenAI model list") from None


def response_format(schema: dict[str, Any], shape: str = "json_schema") -> dict[str, Any]:
    """A JSON schema as the server takes it: OpenAI's `json_schema` response format, or
    the `json_object` type with a `schema` (llama-cpp-python's server knows only that)."""
    if shape == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}


# One short request each, at temperature 0, whose natural answer is not the constrained
# one: a server that follows the constraint answers exactly it; one that ignores the field
# answers something else, and one that refuses it answers an error.
_ASK = "Name a colour."
_GRAMMAR_PROBE = ("/v1/completions", {"prompt": f"{_ASK}\n", "grammar": 'root ::= "7"'})
_SEVEN_SCHEMA = {
    "type": "object", "properties": {"n": {"type": "integer", "enum": [7]}},
    "required": ["n"], "additionalProperties": False,
}  # fmt: skip


async def probe_features(
    url: str, model: str, key_env: str | None = None, wait_s: float = 60.0
) -> dict[str, Any]:
    """Whether the server follows a GBNF `grammar` (llama-server's and llmos's extension)
    and a JSON schema: True, False (it ignored or refused the field), or None (not known:
    the probe failed otherwise, e.g. timed out or the server was busy). The schema is tried
    as OpenAI's `json_schema` response format, then as `json_object` with a schema; the
    shape it followed is `schema_format`."""
    import httpx

    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=wait_s) as http:

        async def answer(path: str, extra: dict[str, Any]) -> str | bool | None:
            """The answer's text; False when the server refused; None when not known."""
            body = {"model": model, "max_tokens": 12, "temperature": 0, **extra}
            try:
                r = await http.post(path, json=body, headers=_headers(key_env))
            except httpx.HTTPError:
                return None
            if r.status_code in RETRYABLE_STATUS - {500}:
                return None  # busy or away: not an answer about the field
            if r.status_code != 200:
                return False  # refused (some servers answer a field they reject with 500)
            try:
                choice = r.json()["choices"][0]
                text = choice.get("text") or (choice.get("message") or {}).get("content") or ""
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                return None
            return str(text).strip()

        def followed(got: str | bool | None, want: Any) -> bool | None:
            if not isinstance(got, str):
                return got
            try:
                return bool(json.loads(got) == want)
            except ValueError:
                return False

        out: dict[str, Any] = {"grammar": followed(await answer(*_GRAMMAR_PROBE), 7)}
        seen: list[bool | None] = []
        for shape in ("json_schema", "json_object"):
            chat = {
                "messages": [{"role": "user", "content": f"{_ASK} Answer in JSON."}],
                "response_format": response_format(_SEVEN_SCHEMA, shape),
            }
            seen.append(followed(await answer("/v1/chat/completions", chat), {"n": 7}))
            if seen[-1]:
                return {**out, "json_schema": True, "schema_format": shape}
        out["json_schema"] = None if None in seen else False
        return out


class Unsupported(GenerationError, UserError):
    """The request needs what this remote model's server does not follow (a grammar, a
    JSON schema): the caller's to change, not a fault of the server."""


class RemoteEngine:
    remote = True

    def __init__(self, name: str, meta: dict[str, Any], settings: Settings) -> None:
        self.name = name
        self.url = str(meta["url"]).rstrip("/")
        self.model = str(meta["model"])
        self.key_env: str | None = meta.get("key_env") or None
        self.parallel = max(1, int(meta.get("parallel") or 4))
        self.seq_ctx_max = int(meta.get("n_ctx") or 4096)
        # what add-remote's probe found: True, False, or None (not known: passed through)
        self.features: dict[str, bool | None] = {f: meta.get(f) for f in ("grammar", "json_schema")}
        self.schema_format = str(meta.get("schema_format") or "json_schema")  # as probed
        self.aging_s = settings.aging_s
        self.retries = settings.remote_retries
        self.read_timeout_s = settings.remote_timeout_s
        self.probe_s = settings.remote_probe_s
        self.seqs: dict[int, RemoteGeneration] = {}
        self.active = 0
        self._waiting: list[_Waiter] = []
        self._ids = itertools.count(1)
        self.failures = 0  # requests in a row that failed after their retries
        self.down: str | None = None  # why it is marked down
        self._next_probe = 0.0
        self.counts = {"requests": 0, "retries": 0, "failed": 0, "tokens": 0}
        self._http: Any = None
        self.closing: set[asyncio.Future[Any]] = set()  # streams being closed (KILL)

    # -- the engine's interface, as the kernel uses it -----------------------------------
    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        nice: int = 0,
        owner: int | None = None,
        adapter: str | None = None,
    ) -> RemoteGeneration:
        if adapter is not None:
            raise GenerationError(
                f"{self.name} is a remote model: a local LoRA adapter cannot apply"
            )
        p = params or SamplingParams()
        for feature, asked in (("grammar", p.grammar), ("json_schema", p.json_schema)):
            if asked is not None and self.features.get(feature) is False:
                raise Unsupported(
                    f"remote model {self.name} does not follow a {feature} (its server "
                    "ignored or refused one when it was added): use a local model, or a "
                    "route with one that does"
                )
        gen = RemoteGeneration(self, next(self._ids), prompt, p, nice)
        self.seqs[gen.id] = gen
        return gen

    def kill(self, seq_id: int) -> None:
        gen = self.seqs.get(seq_id)
        if gen is not None:
            gen.cancel()

    def pause(self, seq_id: int) -> None:
        gen = self.seqs.get(seq_id)
        if gen is not None:
            gen.running.clear()  # the stream is not read on: the server's writes back up

    def resume(self, seq_id: int) -> None:
        gen = self.seqs.get(seq_id)
        if gen is not None:
            gen.running.set()

    def renice(self, seq_id: int, nice: int) -> None:
        gen = self.seqs.get(seq_id)
        if gen is not None:
            gen.nice = nice
            for w in self._waiting:
                if w.ready is gen.waiter:
                    w.nice = nice

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        raise GenerationError(f"{self.name} is a remote model: it has no local tokenizer")

    @property
    def waiting(self) -> int:
        """Requests queued here beyond `parallel`."""
        return len(self._waiting)

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": self.name, "remote": self.url, "remote_model": self.model,
            "up": self.down is None, "down_reason": self.down, "active": self.active,
            "waiting": self.waiting, "slots": self.parallel, **self.counts,
        }  # fmt: skip

    def start(self) -> None:
        return None

    async def aclose(self) -> None:
        for gen in list(self.seqs.values()):
            gen.cancel()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- admission: at most `parallel` at once, the best nice first, with aging -----------
    def _key(self, w: _Waiter, now: float) -> float:
        return w.nice - (now - w.since) / self.aging_s if self.aging_s > 0 else w.nice

    async def _acquire(self, gen: RemoteGeneration) -> None:
        if self.active < self.parallel and not self._waiting:
            self.active += 1
            return
        loop = asyncio.get_running_loop()
        w = _Waiter(gen.nice, time.monotonic(), loop.create_future())
        gen.waiter = w.ready
        self._waiting.append(w)
        try:
            await w.ready
        except asyncio.CancelledError:
            if w in self._waiting:
                self._waiting.remove(w)
            elif w.ready.done() and not w.ready.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            raise

    def _release(self) -> None:
        if self._waiting:
            now = time.monotonic()
            best = min(self._waiting, key=lambda w: (self._key(w, now), w.since))
            self._waiting.remove(best)
            best.ready.set_result(None)  # the slot passes on: `active` is unchanged
        else:
            self.active -= 1

    # -- health --------------------------------------------------------------------------
    async def _check_up(self) -> None:
        if self.down is None:
            return
        now = time.monotonic()
        if now < self._next_probe:
            raise RemoteDown(
                f"remote model {self.name} ({self.url}) is down: {self.down}; "
                f"next health check in {self._next_probe - now:.0f} s"
            )
        self._next_probe = now + self.probe_s
        try:
            await probe(self.url, self.key_env, wait_s=5.0)
        except ModelError as exc:
            self.down = str(exc)
            raise RemoteDown(f"remote model {self.name} is down: {exc}") from None
        self.down, self.failures = None, 0

    def _failed(self, why: str, *, down: bool = True) -> None:
        """A request failed after its retries. Unless the server answered it (an HTTP
        500 says the server is up and this request is what it cannot serve), two such in
        a row mark the backend down."""
        self.counts["failed"] += 1
        if not down:
            self.failures = 0  # it answered: it is up
            return
        self.failures += 1
        if self.failures >= 2:  # two requests in a row, each after its retries
            self.down = why
            self._next_probe = time.monotonic() + self.probe_s

    def client(self) -> Any:
        import httpx

        if self._http is None:
            timeout = httpx.Timeout(10.0, read=self.read_timeout_s)
            self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)
        return self._http

    def body(self, prompt: Prompt, p: SamplingParams) -> tuple[str, dict[str, Any]]:
        """The endpoint and request body for a prompt: chat messages go to
        /v1/chat/completions (the server applies its own template), text or token ids to
        /v1/completions."""
        body: dict[str, Any] = {
            "model": self.model, "stream": True, "stream_options": {"include_usage": True},
            "temperature": p.temperature, "top_p": p.top_p,
        }  # fmt: skip
        if p.max_tokens is not None:
            body["max_tokens"] = p.max_tokens
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.json_schema is not None:
            body["response_format"] = response_format(p.json_schema, self.schema_format)
        if p.grammar is not None:
            body["grammar"] = p.grammar  # llama-server's (and llmos's) extension
        if p.ignore_eos:
            body["ignore_eos"] = True  # likewise
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            return "/v1/chat/completions", {**body, "messages": prompt}
        return "/v1/completions", {**body, "prompt": prompt}


class RemoteGeneration:
    """One remote request: iterate it for text chunks; `.text`, `.reason`, `.stats` after."""

    def __init__(
        self, engine: RemoteEngine, gid: int, prompt: Prompt, params: SamplingParams, nice: int
    ) -> None:
        self.engine = engine
        self.id = gid
        self.prompt = prompt
        self.params = params
        self.nice = nice
        self.text = ""
        self.tokens: list[int] = []  # the remote's token ids are not known here
        self.reason: str | None = None
        self.stats = SeqStats(submitted=time.monotonic())
        self.running = asyncio.Event()
        self.running.set()
        self.waiter: asyncio.Future[None] | None = None
        self._cancelled = False
        self._response: Any = None

    def cancel(self) -> None:
        """KILL: stop now; an open stream is closed at once."""
        self._cancelled = True
        self.running.set()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()
        if self._response is not None:
            task = asyncio.ensure_future(self._response.aclose())
            self.engine.closing.add(task)
            task.add_done_callback(self.engine.closing.discard)

    async def result(self) -> str:
        async for _ in self:
            pass
        return self.text

    async def __aiter__(self) -> AsyncIterator[str]:
        eng = self.engine
        try:
            await eng._check_up()
            await eng._acquire(self)
        except asyncio.CancelledError:
            self._end("killed")
            raise
        except GenerationError:
            self._end("error")
            raise
        self.stats.admitted = time.monotonic()
        eng.counts["requests"] += 1
        try:
            async for chunk in self._stream():
                yield chunk
            if self._cancelled:
                self._end("killed")
        finally:
            eng._release()
            if self.reason is None:
                self._end("killed")

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.stats.finished = time.monotonic()
        self.engine.seqs.pop(self.id, None)

    async def _stream(self) -> AsyncIterator[str]:
        import httpx

        eng = self.engine
        path, body = eng.body(self.prompt, self.params)
        headers = _headers(eng.key_env)
        why = ""
        answered = False  # the last try had an answer (HTTP 500): the server is up
        for attempt in range(eng.retries + 1):
            if attempt:
                eng.counts["retries"] += 1
                await asyncio.sleep(min(4.0, 0.25 * 2 ** (attempt - 1)) * (1 + random.random()))
            if self._cancelled:
                return
            self.reason = None  # a broken try's finish reason is not this one's
            try:
                async with eng.client().stream("POST", path, json=body, headers=headers) as r:
                    self._response = r
                    if r.status_code in RETRYABLE_STATUS:
                        detail = (await r.aread()).decode("utf-8", "replace")[:300]
                        why = f"HTTP {r.status_code}" + (f": {_message(detail)}" if detail else "")
                        answered = r.status_code == 500
                        continue
                    if r.status_code != 200:
                        detail = (await r.aread()).decode("utf-8", "replace")[:300]
                        self._end("error")
                        raise GenerationError(
                            f"remote model {eng.name} refused the request: HTTP {r.status_code}: "
                            f"{_message(detail)}"
                        )
                    async for chunk in self._events(r):
                        yield chunk
                    eng.failures = 0
                    return
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if self._cancelled:
                    return
                why = f"{type(exc).__name__}: {exc}".strip(": ")
                answered = False
                if self.stats.generated > 0:  # tokens went out: it cannot be resumed
                    self._end("error")
                    raise GenerationError(
                        f"remote model {eng.name}: the stream broke after "
                        f"{self.stats.generated} tokens ({why})"
                    ) from None
            finally:
                self._response = None
        eng._failed(why, down=not answered)
        self._end("error")
        raise GenerationError(
            f"remote model {eng.name} ({eng.url}) failed after {eng.retries + 1} tries: {why}"
        )

    async def _events(self, r: Any) -> AsyncIterator[str]:
        async for line in r.aiter_lines():
            if self._cancelled:
                return
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("error"):
                err = event["error"]
                why = err.get("message") if isinstance(err, dict) else err
                self._end("error")
                raise GenerationError(
                    f"remote model {self.engine.name} failed after {self.stats.generated} "
                    f"tokens: {why}"
                )
            usage = event.get("usage")
            if usage:
                self.stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                self.stats.generated = int(usage.get("completion_tokens") or self.stats.generated)
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                if choice.get("finish_reason"):
                    self.reason = str(choice["finish_reason"])
                if piece:
                    await self.running.wait()
                    if self.stats.first_token is None:
                        self.stats.first_token = time.monotonic()
                    self.stats.generated += 1
                    self.engine.counts["tokens"] += 1
                    self.text += piece
                    yield piece
        if self._cancelled:
            return
        if self.reason is None:  # no finish reason: the server cut the stream short
            self._end("error")
            raise GenerationError(
                f"remote model {self.engine.name}: the stream ended after "
                f"{self.stats.generated} tokens without a finish reason (the server cut it "
                "short; llama-cpp-python's server does so to serve another request unless "
                "started with --interrupt_requests False)"
            )
        self._end(self.reason)


def _message(detail: str) -> str:
    try:
        err = json.loads(detail).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except (ValueError, AttributeError):
        pass
    return " ".join(detail.split())
