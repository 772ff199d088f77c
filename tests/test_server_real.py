"""The REST API on the real default model: the official openai client, LangChain's
ChatOpenAI, JSON-schema and tool-call constraints, a 32-client streaming load, a client
disconnect that frees the KV, and the real embedding model.

Its fixtures take `real_model_path` (and `minilm`), which marks them (conftest).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmos.memory.index import Embedder
from llmos.server import BackgroundServer, create_app
from tests.test_server import MODEL, _first_event, make_settings, user, wait_for

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}


@pytest.fixture(scope="module")
def real(
    tmp_path_factory: pytest.TempPathFactory, real_model_path: Path
) -> Iterator[tuple[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
        app = create_app(make_settings(tmp_path_factory.mktemp("real")), preload=True)
        server = BackgroundServer(app)
        try:
            yield server.start(), app
        finally:
            server.stop()


@pytest.fixture
def oai(real: tuple[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{real[0]}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_chat_stream_and_non_stream_agree(oai: openai.OpenAI) -> None:
    kw: Any = {
        "model": MODEL,
        "messages": user("What is the capital of France?"),
        "temperature": 0,
        "max_tokens": 24,
    }
    r = oai.chat.completions.create(**kw)
    text = r.choices[0].message.content or ""
    assert text.strip()
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 24
    assert r.choices[0].finish_reason in ("stop", "length")
    chunks = list(oai.chat.completions.create(**kw, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy, and batching never changes a sequence's tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1


def test_seeded_sampling_is_reproducible(oai: openai.OpenAI) -> None:
    kw: Any = {
        "model": MODEL,
        "messages": user("Name a fruit."),
        "temperature": 0.9,
        "seed": 7,
        "max_tokens": 16,
    }
    a = oai.chat.completions.create(**kw).choices[0].message.content
    b = oai.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_json_schema_response_parses_and_conforms(oai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    for seed in (1, 2, 3):
        r = oai.chat.completions.create(
            model=MODEL,
            messages=user("Invent a person. Reply in JSON."),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema},
            },
            temperature=0.8,
            seed=seed,
            max_tokens=64,
        )
        data = json.loads(r.choices[0].message.content or "")
        assert isinstance(data["name"], str) and len(data["name"]) <= 20
        assert isinstance(data["age"], int)


def test_required_tool_call_is_valid(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL,
        messages=user("What's the weather in Paris?"),
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    fn = calls[0].function  # type: ignore[union-attr]
    assert fn.name == "get_weather"
    args = json.loads(fn.arguments)
    assert isinstance(args["city"], str) and args["unit"] in ("C", "F")


def test_auto_tool_choice_answers_or_calls(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model=MODEL, messages=user("Hi there!"), tools=[WEATHER_TOOL], temperature=0, max_tokens=64
    )
    msg = r.choices[0].message
    if msg.tool_calls:
        assert r.choices[0].finish_reason == "tool_calls"
        json.loads(msg.tool_calls[0].function.arguments)  # type: ignore[union-attr]
    else:
        assert isinstance(msg.content, str) and msg.content


def test_text_completion(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens <= 8


def test_a_gbnf_grammar_is_followed(oai: openai.OpenAI) -> None:
    """llama-server's `grammar` extension, on both endpoints (a client's extra_body)."""
    r = oai.completions.create(
        model=MODEL, prompt="Write the number seven in digits:", max_tokens=8, temperature=0,
        extra_body={"grammar": 'root ::= "7"'},
    )  # fmt: skip
    assert r.choices[0].text == "7" and r.choices[0].finish_reason == "stop"
    chat = oai.chat.completions.create(
        model=MODEL, messages=user("Is the sky green?"), max_tokens=8, temperature=0,
        extra_body={"grammar": 'root ::= "yes" | "no"'},
    )  # fmt: skip
    assert chat.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError) as ei:
        oai.completions.create(
            model=MODEL, prompt="x", max_tokens=8, extra_body={"grammar": "root ::= nowhere"}
        )
    assert ei.value.body["param"] == "grammar"  # type: ignore[index]


def test_openai_errors_from_the_real_model(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model=MODEL, messages=user("word " * 3000), max_tokens=8)
    assert ei.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(
            model=MODEL,
            messages=user("x"),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            },
        )
    assert ei.value.body["param"] == "response_format"  # type: ignore[index]


def test_langchain_chat_openai(real: tuple[str, Any]) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=f"{real[0]}/v1",
        api_key="unused",
        model=MODEL,
        temperature=0,
        max_tokens=24,
        max_retries=0,
    )  # type: ignore[arg-type]
    msgs = [SystemMessage("You are terse."), HumanMessage("Say hello.")]
    answer = llm.invoke(msgs)
    assert isinstance(answer.content, str) and answer.content.strip()
    streamed = "".join(str(c.content) for c in llm.stream(msgs))
    assert streamed == answer.content
    roomy = ChatOpenAI(
        base_url=f"{real[0]}/v1",
        api_key="unused",
        model=MODEL,
        temperature=0,
        max_tokens=64,
        max_retries=0,
    )  # type: ignore[arg-type]
    structured = roomy.with_structured_output(
        {
            "title": "City",
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
        method="json_schema",
    )
    out = structured.invoke("Name a city in Italy.")
    assert isinstance(out, dict) and isinstance(out["city"], str)


def test_32_concurrent_streaming_clients(real: tuple[str, Any]) -> None:
    url, app = real
    n = 32

    async def one(i: int, http: httpx.AsyncClient) -> tuple[int, str, str | None, bool]:
        body = {
            "model": MODEL,
            "messages": user(f"Count to {i + 3}."),
            "stream": True,
            "max_tokens": 16,
            "temperature": 0.7,
            "seed": i,
        }
        text, finish, done = "", None, False
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return r.status_code, (await r.aread()).decode(), None, False
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    continue
                data = json.loads(payload)
                assert "error" not in data, data
                for c in data["choices"]:
                    text += c["delta"].get("content") or ""
                    finish = c["finish_reason"] or finish
        return 200, text, finish, done

    async def main() -> list[tuple[int, str, str | None, bool]]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
            return await asyncio.gather(*(one(i, http) for i in range(n)))

    results = asyncio.run(main())
    assert [r[0] for r in results] == [200] * n, results
    for status, text, finish, done in results:
        assert done and finish in ("stop", "length") and text.strip(), (status, text, finish)
    metrics = httpx.get(f"{url}/metrics").text
    assert not [ln for ln in metrics.splitlines() if 'status="5' in ln]
    assert app.state.api.in_flight == 0


def test_disconnect_frees_the_sequence(real: tuple[str, Any]) -> None:
    url, app = real
    kernel = app.state.api.kernel
    engine = kernel.models.loaded[MODEL].engine
    body = {
        "model": MODEL,
        "messages": user("Write a long story."),
        "stream": True,
        "max_tokens": 1000,
        "ignore_eos": True,
    }
    with httpx.Client(base_url=url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as s:
            pid = int(s.headers["x-llmos-pid"])
            it = s.iter_lines()
            _first_event(it)
            _first_event(it)  # a generated token: the sequence holds KV now
            assert kernel.procs[pid].alive and engine.seqs
    wait_for(lambda: not kernel.procs[pid].alive, "the request process to end")
    assert kernel.procs[pid].exit_reason == "client disconnected"
    wait_for(
        lambda: not engine.seqs and all(s is None for s in engine.slots),
        "the engine to drop the sequence",
    )
    assert kernel.procs[pid].tokens < 1000


def test_embeddings_with_the_real_model(oai: openai.OpenAI, minilm: Embedder) -> None:
    texts = [
        "The cat sat on the mat.",
        "A kitten rests on a rug.",
        "Quarterly tax filing deadlines.",
    ]
    r = oai.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the client asks for base64
    vecs = [d.embedding for d in r.data]
    assert [len(v) for v in vecs] == [384] * 3
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    floats = oai.embeddings.create(
        model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float"
    )
    assert all(abs(a - b) < 1e-5 for a, b in zip(floats.data[0].embedding, vecs[0], strict=True))


def test_llmos_serve_command_end_to_end(tmp_path: Path, real_model_path: Path) -> None:
    """`llmos serve` as its own process: binds loopback, preloads, answers, is seen by `ps`."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from typer.testing import CliRunner

    from llmos.cli import app
    from llmos.client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLMOS_DATA_DIR": str(tmp_path / "data"), "LLMOS_SERVER_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmos", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/health", timeout=1).json()["models_loaded"] == [MODEL]:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llmos serve did not come up"
            time.sleep(0.1)
        with Client(url) as c:
            assert c.chat("Say hi.", max_tokens=8, temperature=0)
        r = CliRunner().invoke(app, ["ps", "--url", url])
        assert r.exit_code == 0 and "api:chat" in r.output
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
        assert proc.wait(timeout=60) in (0, -15)
        err = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in err, err
