"""The REST API on the scripted engine: OpenAI shapes through the official client, native
endpoints, and the guards (auth, body limit, queue limit, disconnects, binding).

A real uvicorn serves on an ephemeral loopback port in a thread; the model is the scripted
backend, so answers are exact. test_server_real.py runs the same paths on the real model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmos.client import ApiError, Client
from llmos.config import Settings, load_settings
from llmos.core.process import ProcessState
from llmos.errors import ConfigError
from llmos.kernel.scripted import ScriptedBackend
from llmos.server import BackgroundServer, check_bind, create_app
from tests.conftest import HashEmbedder

MODEL = "smollm2-135m-instruct"
TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def responder(conversation: str) -> str:
    if "You can call these functions" in conversation:
        return json.dumps(TOOL_CALL)
    if "answer in JSON" in conversation:
        return '{"answer": 42}'
    last = conversation.strip().splitlines()[-1] if conversation.strip() else ""
    return f"You said: {last.removeprefix('<|user|>')}"


class Gate:
    """Holds the scripted engine inside decode while closed (the engine thread blocks)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()

    def __call__(self, entries: Any) -> None:
        self.open.wait(timeout=60)


def make_settings(tmp: Path, **kw: Any) -> Settings:
    return load_settings(data_dir=tmp / "data", **kw)


@contextmanager
def serve_scripted(
    tmp: Path, *, gate: Gate | None = None, embedder: Any = None, **settings_kw: Any
) -> Iterator[tuple[str, Any]]:
    """(url, app) of a server over a scripted kernel; the kernel is `app.state.api.kernel`.
    `embedder`: the kernel's (default: MiniLM, loaded on the first embed)."""
    backends: list[ScriptedBackend] = []

    def factory(entry: Any, progress: Callable[[float], None]) -> ScriptedBackend:
        b = ScriptedBackend(name=entry.name, responder=responder, on_decode=gate)
        backends.append(b)
        return b

    app = create_app(
        make_settings(tmp, **settings_kw), backend_factory=factory, embedder=embedder, preload=True
    )
    app.state.backends = backends
    server = BackgroundServer(app)
    try:
        yield server.start(), app
    finally:
        if gate is not None:
            gate.open.set()
        server.stop()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition another thread makes true (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
        with serve_scripted(tmp_path_factory.mktemp("srv")) as s:
            yield s


@pytest.fixture
def url(server: tuple[str, Any]) -> str:
    return server[0]


@pytest.fixture
def oai(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# -- OpenAI-compatible ---------------------------------------------------------------
def test_models_lists_the_default_model(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert MODEL in ids
    assert oai.models.retrieve(MODEL).id == MODEL


def test_models_list_the_default_first_then_loaded_then_the_rest(tmp_path: Path) -> None:
    """Clients that take the first model get one that chats: the default, then loaded
    models, then the rest; each entry says whether it is the default and can chat."""
    from llmos.kernel.models import ModelLibrary, smollm2_path

    smol = smollm2_path()
    assert smol is not None, "the default model is missing (make test installs it)"
    lib = ModelLibrary(tmp_path / "data")
    lib.add(smol, "aaa-copy")  # sorts first by name, as gemma3-270m did before the default
    lib.add(smol, "bbb-loaded")
    with serve_scripted(tmp_path) as (url, _):
        assert httpx.post(f"{url}/v1/models/bbb-loaded/load", timeout=60).status_code == 200
        data = httpx.get(f"{url}/v1/models").json()["data"]
        ids = [m["id"] for m in data]
        assert ids[:2] == [MODEL, "bbb-loaded"], ids
        assert ids.index("aaa-copy") > 1
        first = data[0]
        assert first["default"] is True and first["can_chat"] is True
        assert first["status"] == {"value": "loaded"}
        assert first["chat_format"] == "the GGUF's chat template"
        assert [m["default"] for m in data[1:]] == [False] * (len(data) - 1)
        by_id = {m["id"]: m for m in data}
        assert by_id["aaa-copy"]["status"] == {"value": "unloaded"}
        if "gemma3-270m" in by_id:  # a base model without a template: its family's format
            assert by_id["gemma3-270m"]["can_chat"] is True
            assert by_id["gemma3-270m"]["chat_format"].startswith("gemma (")
        one = httpx.get(f"{url}/v1/models/{MODEL}").json()
        assert one == first


def test_chat_completion(oai: openai.OpenAI, server: tuple[str, Any]) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=user("hello"), temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "You said: hello"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.completion_tokens == len("You said: hello") + 1  # + end of generation
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_runs_as_a_kernel_process(oai: openai.OpenAI, server: tuple[str, Any]) -> None:
    raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=user("pid?"))
    pid = int(raw.headers["x-llmos-pid"])
    proc = server[1].state.api.kernel.procs[pid]
    assert proc.name == "api:chat"
    assert proc.state is ProcessState.EXITED
    assert proc.exit_code == 0
    assert proc.stdout.getvalue() == "You said: pid?"


def test_chat_streaming(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL, messages=user("stream me"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream me"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # token by token
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text) + 1


def test_max_tokens_and_stop(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=user("abcdef"), max_tokens=4)
    assert r.choices[0].message.content == "You "
    assert r.choices[0].finish_reason == "length"
    r = oai.chat.completions.create(model=MODEL, messages=user("abcdef"), stop=["said"])
    assert r.choices[0].message.content == "You "
    assert r.choices[0].finish_reason == "stop"


def test_tools_become_tool_calls(oai: openai.OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    r = oai.chat.completions.create(
        model=MODEL, messages=user("Weather in Paris?"), tools=tools, tool_choice="required"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    fn = calls[0].function  # type: ignore[union-attr]
    assert fn.name == "get_weather"
    assert json.loads(fn.arguments) == {"city": "Paris"}
    # the call and its result go back in as history: the template still renders
    follow = oai.chat.completions.create(
        model=MODEL,
        messages=[
            *user("Weather in Paris?"),
            {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
        ],
    )
    assert follow.choices[0].message.content == "You said: Result of tool call: sunny"
    # streamed: one delta carries the whole call
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=user("Weather?"), tools=tools, tool_choice="auto", stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1
    assert deltas[0].tool_calls is not None
    assert deltas[0].tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_naming_an_unknown_tool_is_400(oai: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(
            model=MODEL,
            messages=user("x"),
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "b"}},
        )
    assert ei.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_response_format_json_schema(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL,
        messages=user("answer in JSON"),
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "a",
                "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}},
            },
        },
    )
    assert json.loads(r.choices[0].message.content or "") == {"answer": 42}


def test_text_completion(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model=MODEL, prompt="abc", max_tokens=5, seed=3)
    assert r.object == "text_completion"
    assert len(r.choices[0].text) == 5
    assert r.choices[0].finish_reason == "length"
    streamed = "".join(
        c.choices[0].text
        for c in oai.completions.create(model=MODEL, prompt="abc", max_tokens=5, stream=True)
        if c.choices
    )
    assert streamed == r.choices[0].text  # the scripted model is a pure function of its input


# -- errors in OpenAI's shape ----------------------------------------------------------
def _shape(body: Any) -> dict[str, Any]:
    assert set(body) == {"message", "type", "param", "code"}, body
    assert isinstance(body["message"], str) and body["message"]
    return dict(body)


def test_unknown_model_is_404_in_openai_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        oai.chat.completions.create(model="no-such-model", messages=user("x"))
    body = _shape(ei.value.body)
    assert body["code"] == "model_not_found" and body["param"] == "model"


def test_invalid_arguments_are_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model=MODEL, messages=user("x"), temperature=5)
    body = _shape(ei.value.body)
    assert body["type"] == "invalid_request_error" and body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model=MODEL, messages=user("x"), n=2)
    assert "n=1" in _shape(ei.value.body)["message"]


def test_max_tokens_cap_and_context_are_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=100_000)
    assert _shape(ei.value.body)["code"] == "max_tokens_exceeded"
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model=MODEL, messages=user("x" * 5000))
    assert _shape(ei.value.body)["code"] == "context_length_exceeded"


def test_malformed_json_and_unknown_route(url: str) -> None:
    r = httpx.post(
        f"{url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    _shape(r.json()["error"])
    r = httpx.get(f"{url}/v1/nothing-here")
    assert r.status_code == 404
    _shape(r.json()["error"])


# -- native endpoints ------------------------------------------------------------------
def test_health_and_metrics(url: str, oai: openai.OpenAI) -> None:
    oai.chat.completions.create(model=MODEL, messages=user("count me"))
    h = httpx.get(f"{url}/health").json()
    assert h["status"] == "ok" and MODEL in h["models_loaded"]
    text = httpx.get(f"{url}/metrics").text
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    for ln in lines:  # every sample is `name{labels} number`
        float(ln.rsplit(" ", 1)[1])
    assert any(
        ln.startswith(
            'llmos_http_requests_total{method="POST",path="/v1/chat/completions",status="200"}'
        )
        for ln in lines
    )
    decoded = [ln for ln in lines if ln.startswith("llmos_engine_tokens_decoded_total")]
    assert decoded and float(decoded[0].rsplit(" ", 1)[1]) > 0
    assert "# TYPE llmos_processes gauge" in text


def test_spawn_list_wait_logs(url: str) -> None:
    r = httpx.post(f"{url}/v1/processes", json={"program": "chat", "args": ["from the API"]})
    assert r.status_code == 201, r.text
    pid = r.json()["pid"]
    assert pid in [p["pid"] for p in httpx.get(f"{url}/v1/processes").json()["data"]]
    done = httpx.get(f"{url}/v1/processes/{pid}/wait").json()
    assert done["state"] == "exited" and done["exit_code"] == 0
    assert httpx.get(f"{url}/v1/processes/{pid}/logs").json()["text"] == "You said: from the API"
    assert httpx.get(f"{url}/v1/processes/{pid}").json()["name"] == "chat"


def test_logs_follow_streams_until_exit(url: str) -> None:
    pid = httpx.post(f"{url}/v1/processes", json={"program": "chat", "args": ["follow"]}).json()[
        "pid"
    ]
    texts: list[str] = []
    events: list[str] = []
    with httpx.stream("GET", f"{url}/v1/processes/{pid}/logs", params={"follow": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if "text" in data:
                    texts.append(data["text"])
                else:
                    assert data["exit_code"] == 0
    assert "".join(texts) == "You said: follow"
    assert events == ["exit"]


def test_spawn_program_file_and_errors(url: str, tmp_path: Path) -> None:
    prog = tmp_path / "hello.py"
    prog.write_text("async def main(ctx, who):\n    ctx.print('hi', who)\n    return 7\n")
    pid = httpx.post(f"{url}/v1/processes", json={"path": str(prog), "args": ["bob"]}).json()["pid"]
    info = httpx.get(f"{url}/v1/processes/{pid}/wait").json()
    assert info["exit_code"] == 7 and info["name"] == "hello"
    assert httpx.get(f"{url}/v1/processes/{pid}/logs").json()["text"] == "hi bob\n"
    r = httpx.post(f"{url}/v1/processes", json={"program": "nope"})
    assert r.status_code == 404 and "chat" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/processes", json={}).status_code == 400
    assert httpx.get(f"{url}/v1/processes/999999").status_code == 404


def test_signal_kill_and_stop(url: str, server: tuple[str, Any], tmp_path: Path) -> None:
    prog = tmp_path / "sleeper.py"
    prog.write_text(
        "import asyncio\nasync def main(ctx):\n    ctx.print('up')\n    await asyncio.sleep(600)\n"
    )
    pid = httpx.post(f"{url}/v1/processes", json={"path": str(prog)}).json()["pid"]
    waited = httpx.get(f"{url}/v1/processes/{pid}/wait", params={"timeout_s": 0.05}).json()
    assert waited["exit_code"] is None and waited["state"] in ("running", "blocked")
    r = httpx.post(f"{url}/v1/processes/{pid}/signal", json={"signal": "STOP"})
    assert r.json()["state"] == "stopped"
    r = httpx.post(f"{url}/v1/processes/{pid}/signal", json={"signal": "bogus"})
    assert r.status_code == 400
    r = httpx.post(f"{url}/v1/processes/{pid}/signal", json={"signal": "KILL"})
    assert r.json()["state"] == "exited" and r.json()["exit_code"] == -9


# -- memory filesystem (through the syscall table) ------------------------------------
def test_fs_endpoints_go_through_syscalls(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    """The memory endpoints dispatch the real fs.* / qa.ask syscalls over the real memory
    FS (SQLite + Chroma; a deterministic embedder in MiniLM's place), each from a process of
    its own, and answer in the syscalls' own shapes."""
    tea, bikes = "/home/api/notes/tea.txt", "/home/api/notes/bikes.txt"
    with serve_scripted(tmp_path, embedder=hash_embedder) as (url, app):
        api = app.state.api

        def made_by(syscall: str) -> None:
            assert api.kernel.procs[api.finished[-1]].name == f"api:{syscall}"

        r = httpx.put(f"{url}/v1/fs/write", json={"path": tea, "content": "tea time"})
        assert r.status_code == 200, r.text
        assert r.json()["result"] == {"path": tea, "version": 1}
        made_by("fs.write")
        text = "Green tea is steeped at eighty degrees for two minutes."
        r = httpx.put(f"{url}/v1/fs/write", json={"path": tea, "content": text})
        assert r.json()["result"] == {"path": tea, "version": 2}
        httpx.put(f"{url}/v1/fs/write", json={"path": bikes, "content": "Oil a bicycle chain."})

        assert httpx.get(f"{url}/v1/fs/read", params={"path": tea}).json()["content"] == text
        made_by("fs.read")
        r = httpx.get(f"{url}/v1/fs/ls", params={"path": "/home/api/notes"})
        made_by("fs.ls")
        assert [(e["path"], e["kind"], e["version"]) for e in r.json()["entries"]] == [
            (bikes, "file", 1),
            (tea, "file", 2),
        ]
        r = httpx.post(f"{url}/v1/fs/search", json={"query": "green tea", "k": 1})
        made_by("fs.search")
        assert [(h["path"], h["text"]) for h in r.json()["results"]] == [(tea, text)]

        r = httpx.post(f"{url}/v1/qa", json={"question": "How is green tea steeped?", "k": 1})
        assert r.status_code == 200, r.text
        made_by("qa.ask")
        answer = r.json()["answer"]
        assert answer["sources"] == [tea] and answer["answer"].startswith("You said:")

        r = httpx.delete(f"{url}/v1/fs/rm", params={"path": tea})
        assert r.json()["result"] == {"path": tea, "removed": 1}
        made_by("fs.rm")
        r = httpx.get(f"{url}/v1/fs/read", params={"path": tea})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_fs_without_a_memory_syscall_is_501(url: str, server: tuple[str, Any]) -> None:
    """A daemon whose kernel lacks a memory syscall (a plug-in set without it) says so."""
    kernel = server[1].state.api.kernel
    saved = kernel.syscalls.specs.pop("fs.ls")
    try:
        r = httpx.get(f"{url}/v1/fs/ls")
        assert r.status_code == 501
        assert r.json()["error"]["code"] == "not_available"
    finally:
        kernel.syscalls.specs["fs.ls"] = saved


# -- guards ----------------------------------------------------------------------------
def test_non_loopback_bind_without_key_refuses() -> None:
    with pytest.raises(ConfigError, match="API key"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError):
        check_bind("192.168.1.10", "")
    check_bind("0.0.0.0", "sekret")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)


def test_serve_command_refuses_non_loopback_without_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llmos.cli import app

    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code == 2
    assert "needs an API key" in r.output
    assert "Traceback" not in r.output


def test_bearer_auth(tmp_path: Path) -> None:
    with serve_scripted(tmp_path, api_key="sekret") as (url, _):
        assert httpx.get(f"{url}/health").status_code == 200  # liveness stays open
        r = httpx.get(f"{url}/v1/models")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert _shape(r.json()["error"])["code"] == "invalid_api_key"
        with openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        with openai.OpenAI(base_url=f"{url}/v1", api_key="sekret", max_retries=0) as good:
            r2 = good.chat.completions.create(model=MODEL, messages=user("ok"))
            assert r2.choices[0].message.content == "You said: ok"


def test_body_size_limit(tmp_path: Path) -> None:
    with serve_scripted(tmp_path, server_max_body_bytes=2048) as (url, _):
        big = {"model": MODEL, "messages": user("x" * 4000)}
        r = httpx.post(f"{url}/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert _shape(r.json()["error"])["code"] == "body_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield json.dumps(big).encode()

        r = httpx.post(
            f"{url}/v1/chat/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        small = httpx.post(
            f"{url}/v1/chat/completions", json={"model": MODEL, "messages": user("y")}
        )
        assert small.status_code == 200


def _first_event(lines: Iterator[str]) -> dict[str, Any]:
    """The first SSE event. The caller keeps `lines` alive: dropping a half-read httpx
    stream closes its connection, which the server rightly takes as a disconnect."""
    for line in lines:
        if line.startswith("data:"):
            return dict(json.loads(line[5:]))
    raise AssertionError("stream ended without an event")


def test_queue_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    gate = Gate()
    with serve_scripted(tmp_path, gate=gate, server_queue_limit=2) as (url, app):
        gate.open.clear()  # the engine holds every request inside its first step
        body = {"model": MODEL, "messages": user("hold"), "stream": True}
        with httpx.Client(base_url=url, timeout=60) as http, ExitStack() as stack:
            streams = [
                stack.enter_context(http.stream("POST", "/v1/chat/completions", json=body))
                for _ in range(2)
            ]
            lines = [s.iter_lines() for s in streams]
            for s, it in zip(streams, lines, strict=True):
                assert s.status_code == 200
                _first_event(it)
            r = http.post("/v1/chat/completions", json={**body, "stream": False})
            assert r.status_code == 429
            assert r.headers["retry-after"] == "1"
            assert _shape(r.json()["error"])["code"] == "rate_limit_exceeded"
            gate.open.set()
            for it in lines:
                text = "".join(
                    json.loads(ln[5:])["choices"][0]["delta"].get("content") or ""
                    for ln in it
                    if ln.startswith("data:")
                    and ln != "data: [DONE]"
                    and json.loads(ln[5:])["choices"]
                )
                assert text == "You said: hold"
        wait_for(lambda: app.state.api.in_flight == 0, "the queue to drain")
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False})
        assert r.status_code == 200


def _kv_free(app: Any) -> bool:
    engine = app.state.api.kernel.models.loaded[MODEL].engine
    backend = app.state.backends[0]
    return not engine.seqs and all(not kv for kv in backend.kv)


def test_stream_disconnect_kills_the_process_and_frees_kv(tmp_path: Path) -> None:
    gate = Gate()
    with serve_scripted(tmp_path, gate=gate) as (url, app):
        kernel = app.state.api.kernel
        gate.open.clear()
        body = {"model": MODEL, "messages": user("long " * 50), "stream": True}
        with httpx.Client(base_url=url, timeout=60) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as s:
                pid = int(s.headers["x-llmos-pid"])
                it = s.iter_lines()
                _first_event(it)
                assert kernel.procs[pid].alive
            # leaving the block closed the connection mid-answer
        wait_for(lambda: not kernel.procs[pid].alive, "the request process to end")
        proc = kernel.procs[pid]
        assert proc.exit_code == -9 and proc.exit_reason == "client disconnected"
        gate.open.set()
        wait_for(lambda: _kv_free(app), "the engine to free the sequence's KV")
        assert proc.tokens < len("You said: " + "long " * 50)
        # the request's admission slot is given back by the handler's cleanup, on the
        # server's loop, which may come after the engine (its own thread) freed the KV
        wait_for(lambda: app.state.api.in_flight == 0, "the request's admission slot to free")


def test_non_streaming_disconnect_kills_the_process(tmp_path: Path) -> None:
    gate = Gate()
    with serve_scripted(tmp_path, gate=gate) as (url, app):
        kernel = app.state.api.kernel
        gate.open.clear()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": MODEL, "messages": user("bye")},
                timeout=httpx.Timeout(60, read=0.5),
            )
        wait_for(
            lambda: any(p.exit_reason == "client disconnected" for p in kernel.procs.values()),
            "the request process to be killed",
        )
        gate.open.set()
        wait_for(lambda: _kv_free(app), "the engine to free the sequence's KV")
        assert app.state.api.in_flight == 0


def test_stream_wire_format_and_keepalive_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's framing exactly (`data: {json}\\n\\n` ... `data: [DONE]\\n\\n`, no `\\r`), and
    the comment pings a quiet stream gets do not trouble the OpenAI client."""
    from llmos.server import streaming

    monkeypatch.setattr(streaming, "PING_S", 0.02)
    gate = Gate()
    body = {"model": MODEL, "messages": user("ping me"), "stream": True}
    with serve_scripted(tmp_path, gate=gate) as (url, _):
        gate.open.clear()  # the engine holds the answer until a ping has gone out
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            chunks = r.iter_raw()
            raw = b""
            while b": ping" not in raw:
                raw += next(chunks)
            gate.open.set()
            text = (raw + b"".join(chunks)).decode()
        assert "\r" not in text and text.endswith("data: [DONE]\n\n")
        events = text.split("\n\n")[:-1]
        data = [e for e in events if not e.startswith(": ping")]
        assert len(data) < len(events)
        assert all(e.startswith("data: ") and "\n" not in e for e in data)

        gate.open.clear()
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai:
            stream = oai.chat.completions.create(model=MODEL, messages=user("ping me"), stream=True)
            first = next(iter(stream))
            time.sleep(0.2)  # quiet: pings go out meanwhile
            gate.open.set()
            rest = list(stream)
        said = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
        assert said == "You said: ping me"


def test_generic_syscall_endpoint_runs_each_call_in_a_process(
    url: str, server: tuple[str, Any]
) -> None:
    """POST /v1/syscalls/{name}: the syscall's own capability, a process of its own."""
    kernel = server[1].state.api.kernel
    listed = {s["name"]: s for s in httpx.get(f"{url}/v1/syscalls").json()["data"]}
    assert "calc" in listed and "proc.ps" in listed
    assert listed["calc"]["args"]["required"] == ["expression"]
    assert listed["time.now"]["result"] == {"type": "string"}
    before = set(kernel.procs)
    r = httpx.post(f"{url}/v1/syscalls/calc", json={"args": {"expression": "17*23"}})
    assert r.status_code == 200 and r.json() == {"name": "calc", "result": 391}
    new = [kernel.procs[p] for p in set(kernel.procs) - before]
    assert [p.name for p in new] == ["api:calc"] and new[0].caps == frozenset({"calc"})
    r = httpx.post(f"{url}/v1/syscalls/calc", json={"args": {"expression": "1/0"}})
    assert r.status_code == 400, r.text
    r = httpx.post(f"{url}/v1/syscalls/calc", json={"args": {"nope": 1}})
    assert r.status_code == 400 and "expression" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/syscalls/no.such", json={"args": {}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_syscall"
    with Client(url) as c:
        assert c.syscall("calc", expression="2+3") == 5
        assert any(s["name"] == "calc" for s in c.syscalls())
        # a syscall argument called `name` is the syscall's, not the client's
        text = c.syscall("prompt.render", name="summarize", values={"text": "tea and cake"})
        assert "tea and cake" in text
    assert httpx.get(f"{url}/health").json()["data_dir"] == str(kernel.settings.data_dir)


def test_high_risk_syscalls_follow_the_daemons_approval_policy(tmp_path: Path) -> None:
    """Nobody is interactive on a daemon: `ask` means deny unless `approvals` allows it."""
    with serve_scripted(tmp_path / "deny") as (u, _):
        r = httpx.post(f"{u}/v1/syscalls/shell.exec", json={"args": {"command": "echo hi"}})
        assert r.status_code == 403, r.text
    with serve_scripted(tmp_path / "allow", approvals={"shell.exec": "allow"}) as (u, _):
        r = httpx.post(f"{u}/v1/syscalls/shell.exec", json={"args": {"command": "echo hi"}})
        assert r.status_code == 200, r.text
        assert "hi" in json.dumps(r.json()["result"])


def test_nice_models_and_named_programs(url: str, server: tuple[str, Any]) -> None:
    kernel = server[1].state.api.kernel
    with Client(url) as c:
        for program in ("chat", "react", "rag"):  # the kernel's own table of named programs
            assert program in kernel.programs
        info = c.spawn("chat", "slowly")
        pid = info["pid"]
        assert c.nice(pid, 5)["nice"] == 5 and kernel.get(pid).nice == 5
        c.wait(pid)
        with pytest.raises(ApiError) as err:
            c.nice(pid + 10_000, 1)
        assert err.value.status == 404
        name = kernel.settings.default_model
        assert name not in c.unload_model(name)
        assert name in c.load_model(name)
        with pytest.raises(ApiError) as err:
            c.load_model("no-such-model")
        assert err.value.status == 404


def test_a_failed_process_says_why_in_one_line(url: str, tmp_path: Path) -> None:
    prog = tmp_path / "boom.py"
    prog.write_text("async def main(ctx):\n    raise ValueError('the sky fell')\n")
    with Client(url) as c:
        pid = c.spawn(path=str(prog))["pid"]
        info = c.wait(pid)
        assert info["exit_code"] == 1 and info["message"] == "ValueError: the sky fell"
        err = c.logs(pid, stream="stderr")
        assert "Traceback" in err and "ValueError: the sky fell" in err
        ok = c.spawn("chat", "hello")["pid"]
        assert c.wait(ok)["message"] is None
