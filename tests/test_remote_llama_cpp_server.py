"""Remote model backends against a third-party OpenAI-compatible server: llama-cpp-python's
own `python -m llama_cpp.server` (its `server` extra) over the packaged model, started once
for this module on an ephemeral loopback port. The cases of tests/test_remote_backend.py
that a real foreign server can show: `models add-remote`'s probe, a process chatting with
it (streamed, with its figures), a JSON schema passed through, and KILL mid-stream.

Where this server differs from `llmos serve` (seen with llama-cpp-python 0.3.x):
  - it sends no usage chunk (`stream_options.include_usage` is ignored): a process's token
    count is the number of streamed pieces, its prompt token count 0;
  - it ignores `ignore_eos` (not a field of its requests), but honours `grammar`;
  - it knows `response_format` types "text" and "json_object" (with an optional "schema")
    only, and answers the OpenAI "json_schema" type with HTTP 500 (its validation error):
    add-remote's probe finds the shape it takes, and a request sent in the other shape
    fails with the server's message, without marking the server down;
  - `interrupt_requests` (on by default) ends a running stream with `[DONE]`, and no
    finish reason, when another request arrives: the cut request fails saying so (it is
    not taken for a complete answer); add it with `--parallel 1`."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from llmos.cli import app as cli
from llmos.config import load_settings
from llmos.core.process import Signal
from llmos.kernel.kernel import Kernel
from llmos.kernel.models import DEFAULT_MODEL, ModelLibrary
from llmos.kernel.remote import probe_features, remote_meta
from tests.conftest import one_line_error, scripted_factory
from tests.servers import server_process
from tests.test_remote_backend import ask, free_port, local_kernel, until

runner = CliRunner()
START_S = 60.0  # loading a 100 MB model on a busy 2-core machine


@pytest.fixture(scope="module")
def llama_server(real_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on the packaged model: its base URL. The model is listed
    as DEFAULT_MODEL (the id `add_peer` registers); its output goes to a file (never a
    pipe that could fill and block it); it is always ended, killed if it must be."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("llama_cpp_server") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(real_model_path),
        "--model_alias", DEFAULT_MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2", "--n_threads_batch", "2",
    ]  # fmt: skip
    with server_process(cmd, f"{url}/v1/models", log, what="llama_cpp.server", within_s=START_S):
        yield url


def test_add_remote_probes_llama_cpp_server(llama_server: str) -> None:
    url = llama_server
    r = runner.invoke(
        cli,
        ["models", "add-remote", "lcs", "--url", url, "--model", DEFAULT_MODEL, "--parallel", "1"],
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"added lcs: {DEFAULT_MODEL} at {url} (1 at once"), r.output
    assert "grammar yes, json_schema yes (as json_object)" in r.output
    entry = ModelLibrary(load_settings().data_dir).get("lcs")
    assert entry.remote and entry.meta is not None
    assert entry.meta["url"] == url and entry.meta["model"] == DEFAULT_MODEL
    assert entry.meta["parallel"] == 1 and entry.meta["schema_format"] == "json_object"
    r = runner.invoke(cli, ["models", "list"])
    assert r.exit_code == 0 and "lcs" in r.output and "remote" in r.output, r.output
    # the server itself answers any model id; the probe holds to what it lists
    line = one_line_error(
        runner.invoke(cli, ["models", "add-remote", "x", "--url", url, "--model", "nope"])
    )
    assert f"does not serve 'nope' (it lists: {DEFAULT_MODEL})" in line
    assert [e.name for e in ModelLibrary(load_settings().data_dir).list() if e.remote] == ["lcs"]


async def test_a_process_chats_with_llama_cpp_server(tmp_path: Path, llama_server: str) -> None:
    k = await local_kernel(tmp_path, llama_server)

    async def chat(ctx: Any) -> dict[str, Any]:
        r = await ctx.sys.llm.chat(
            messages=[{"role": "user", "content": "Say hello."}],
            model="peer",
            temperature=0,
            max_tokens=12,
        )
        return dict(r.model_dump())

    try:
        p = await k.spawn(chat, caps=["llm.*"])
        assert await k.wait(p.pid) == 0, p.error
        r = p.result
        assert r["text"].strip() and r["finish_reason"] == "length"  # 12 tokens cut it short
        assert p.stdout.getvalue() == r["text"]  # streamed to its stdout
        assert 0 < r["tokens"] <= 12 and r["ttft"] is not None and r["tokens_per_s"]
        stats = p.gen_stats[0]
        assert stats.generated == r["tokens"] and stats.first_token is not None
        info = p.info()
        assert info["model"] == "peer" and info["tokens"] == r["tokens"]
        assert info["ttft_s"] is not None and info["tok_s"]
        top = [m for m in k.top()["models"] if m.get("remote")]
        assert top[0]["model"] == "peer" and top[0]["requests"] == 1 and top[0]["up"]
        assert top[0]["tokens"] == r["tokens"] and top[0]["retries"] == 0
        assert "peer" not in k.models.loaded  # nothing loaded here for it
    finally:
        await k.shutdown()


SCHEMA = {
    "type": "object",
    "properties": {"count": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["count", "name"],
}


async def test_a_json_schema_passes_through_to_llama_cpp_server(
    tmp_path: Path, llama_server: str
) -> None:
    url = llama_server
    features = await probe_features(url, DEFAULT_MODEL)
    assert features == {"grammar": True, "json_schema": True, "schema_format": "json_object"}

    async def structured(ctx: Any) -> str:
        r = await ctx.sys.llm.chat(
            messages=[{"role": "user", "content": "Describe a cat as JSON: a count, a name."}],
            model="peer",
            temperature=0,
            max_tokens=60,
            json_schema=SCHEMA,
        )
        return str(r.text)

    # as probed: the schema goes in the shape the server takes
    settings = load_settings(data_dir=tmp_path / "probed")
    meta = remote_meta(url, DEFAULT_MODEL, key_env=None, parallel=1, n_ctx=2048, features=features)  # fmt: skip
    ModelLibrary(settings.data_dir).add_remote("peer", meta)
    k = Kernel(settings, backend_factory=scripted_factory())
    await k.start()
    try:
        p = await k.spawn(structured, caps=["llm.*"])
        assert await k.wait(p.pid) == 0, p.error
        value = json.loads(p.result)
        jsonschema.validate(value, SCHEMA)
    finally:
        await k.shutdown()

    # not probed: OpenAI's shape, which this server answers with a 500. The request fails
    # with the server's own message; the server answered, so it is not marked down
    k = await local_kernel(tmp_path, url, remote_retries=1)
    try:
        for _ in range(2):
            p = await k.spawn(structured, caps=["llm.*"])
            await k.wait(p.pid)
            assert "HTTP 500" in str(p.error) and "json_object" in str(p.error), p.error
        engine = k.models.remote("peer")
        assert engine is not None and engine.down is None and engine.counts["failed"] == 2
        q = await k.spawn(ask, "Say hello.", caps=["llm.*"])
        assert await k.wait(q.pid) == 0, q.error
    finally:
        await k.shutdown()


async def test_a_stream_cut_short_is_an_error_not_an_answer(
    tmp_path: Path, llama_server: str
) -> None:
    """This server ends a running stream (`[DONE]`, no finish reason) when another request
    comes: the first process fails saying so; the second is answered."""
    k = await local_kernel(tmp_path, llama_server)  # parallel 4: both go to the server
    try:
        first = await k.spawn(ask, "Write a long essay about the sea.", caps=["llm.*"])
        engine = k.models.remote("peer")
        assert engine is not None
        await until(lambda: any(g.stats.generated >= 3 for g in engine.seqs.values()), 30.0)
        second = await k.spawn(ask, "Say hello.", caps=["llm.*"])
        await asyncio.wait_for(k.wait(first.pid), 60.0)
        assert first.exit_code != 0 and "without a finish reason" in str(first.error), first.error
        assert await asyncio.wait_for(k.wait(second.pid), 60.0) == 0, second.error
    finally:
        await k.shutdown()


async def test_kill_mid_stream_leaves_llama_cpp_server_serving(
    tmp_path: Path, llama_server: str
) -> None:
    k = await local_kernel(tmp_path, llama_server)

    async def essay(ctx: Any) -> str:
        r = await ctx.sys.llm.chat(  # at temperature 0 this runs to max_tokens
            messages=[
                {
                    "role": "user",
                    "content": "Write a 500-word essay about the history of the Roman Empire.",
                }
            ],
            model="peer",
            temperature=0,
            max_tokens=400,
        )
        return str(r.text)

    try:
        p = await k.spawn(essay, caps=["llm.*"])
        engine = k.models.remote("peer")
        assert engine is not None
        await until(lambda: any(g.stats.generated >= 3 for g in engine.seqs.values()), 30.0)
        streamed = p.stdout.getvalue()
        assert streamed and p.exit_code is None, (streamed, p.error)
        t0 = time.monotonic()
        k.signal(p.pid, Signal.KILL)
        await asyncio.wait_for(k.wait(p.pid), 5.0)
        assert time.monotonic() - t0 < 2.0 and p.exit_code == -9, p.error
        assert p.gen_stats[0].generated < 400  # it did not run on to the end
        await until(lambda: engine.active == 0 and not engine.seqs, 5.0)
        assert engine.active == 0 and not engine.seqs

        q = await k.spawn(ask, "Say hello.", caps=["llm.*"])
        assert await asyncio.wait_for(k.wait(q.pid), 60.0) == 0, q.error
        assert q.result.strip() and q.gen_stats[0].generated > 0
        assert engine.snapshot()["up"] and engine.counts["failed"] == 0
    finally:
        await k.shutdown()
