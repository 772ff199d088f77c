"""Remote model backends: a model another engine serves over its OpenAI-compatible API, used
by kernel processes as a local one. The remote is a real `llmos serve` (uvicorn on an
ephemeral loopback port): over the scripted model for the scheduling and fault cases, over
the real packaged model for one end-to-end check. Faults come from a port with nothing on
it, a server started later on that port, and a loopback proxy that drops connections."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmos.cli import app as cli
from llmos.config import load_settings
from llmos.core.process import Signal
from llmos.kernel.kernel import Kernel
from llmos.kernel.models import DEFAULT_MODEL, ModelLibrary
from llmos.kernel.remote import probe_features, remote_meta
from llmos.server import BackgroundServer, create_app
from tests.conftest import one_line_error, scripted_factory
from tests.test_server import Gate, serve_scripted

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(cond: Any, within_s: float = 4.0) -> None:
    """Poll `cond` on the loop (the remote engine's state changes in other tasks) until it
    holds or `within_s` passes; the caller's assert says what was expected."""
    for _ in range(int(within_s / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)


def add_peer(data_dir: Path, url: str, parallel: int = 4) -> None:
    meta = remote_meta(url, DEFAULT_MODEL, key_env=None, parallel=parallel, n_ctx=4096)
    ModelLibrary(data_dir).add_remote("peer", meta)


async def ask(ctx: Any, text: str = "hi") -> str:
    r = await ctx.sys.llm.chat(
        messages=[{"role": "user", "content": text}], model="peer", temperature=0, max_tokens=40
    )
    return str(r.text)


async def local_kernel(tmp: Path, url: str, **kw: Any) -> Kernel:
    settings = load_settings(data_dir=tmp / "local", **{"remote_probe_s": 0.2, **kw})
    add_peer(settings.data_dir, url)
    k = Kernel(settings, backend_factory=scripted_factory())
    await k.start()
    return k


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[str, Gate]]:
    gate = Gate()
    with serve_scripted(tmp_path / "remote", gate=gate) as (url, _app):
        yield url, gate


async def test_a_process_uses_a_remote_model_as_a_local_one(
    tmp_path: Path, peer: tuple[str, Gate]
) -> None:
    url, _ = peer
    k = await local_kernel(tmp_path, url)
    try:
        p = await k.spawn(ask, "hello there", caps=["llm.*"])
        assert await k.wait(p.pid) == 0, p.error
        assert p.result == "You said: hello there"
        assert p.stdout.getvalue() == "You said: hello there"  # streamed to its stdout
        info = p.info()
        assert info["model"] == "peer" and info["tokens"] > 0
        top = [m for m in k.top()["models"] if m.get("remote")]
        assert top[0]["model"] == "peer" and top[0]["requests"] == 1 and top[0]["up"]
        assert "peer" not in k.models.loaded  # nothing loaded here for it
    finally:
        await k.shutdown()


async def test_requests_beyond_the_limit_wait_best_priority_first(
    tmp_path: Path, peer: tuple[str, Gate]
) -> None:
    url, gate = peer
    settings = load_settings(data_dir=tmp_path / "local", aging_s=1000.0)
    add_peer(settings.data_dir, url, parallel=1)
    k = Kernel(settings, backend_factory=scripted_factory())
    await k.start()
    try:
        gate.open.clear()  # the remote holds the first request inside its decode
        first = await k.spawn(ask, "first", caps=["llm.*"])
        engine = k.models.remote("peer")
        assert engine is not None
        await until(lambda: engine.active == 1)
        procs = [await k.spawn(ask, f"n{n}", caps=["llm.*"], nice=n) for n in (10, 0, -5)]
        await until(lambda: engine.waiting == 3)
        assert engine.snapshot()["waiting"] == 3 and engine.active == 1
        gate.open.set()
        for p in [first, *procs]:
            assert await k.wait(p.pid) == 0, p.error
        admitted = sorted(procs, key=lambda p: p.gen_stats[0].admitted)
        assert [p.nice for p in admitted] == [-5, 0, 10]
        assert all(p.gen_stats[0].queue_wait > 0 for p in procs)
    finally:
        gate.open.set()
        await k.shutdown()


async def test_kill_closes_the_stream_at_once(tmp_path: Path, peer: tuple[str, Gate]) -> None:
    url, gate = peer
    k = await local_kernel(tmp_path, url)
    try:
        gate.open.clear()
        p = await k.spawn(ask, "stuck", caps=["llm.*"])
        engine = k.models.remote("peer")
        assert engine is not None
        await until(lambda: engine.active == 1)
        t0 = time.monotonic()
        k.signal(p.pid, Signal.KILL)
        await k.wait(p.pid)
        assert time.monotonic() - t0 < 2.0 and p.exit_code == -9
        await until(lambda: engine.active == 0 and not engine.seqs, 2.0)
        assert engine.active == 0 and not engine.seqs
    finally:
        gate.open.set()
        await k.shutdown()


async def test_a_dead_backend_is_retried_marked_down_and_found_back(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    k = await local_kernel(tmp_path, url, remote_retries=2)
    engine = k.models.remote("peer")
    assert engine is not None
    try:
        for _ in range(2):  # nothing listens: each request fails after its retries
            p = await k.spawn(ask, caps=["llm.*"])
            await k.wait(p.pid)
            assert p.exit_code != 0 and "failed after 3 tries" in str(p.error)
        assert engine.counts["retries"] == 4 and engine.down is not None
        t0 = time.monotonic()
        p = await k.spawn(ask, caps=["llm.*"])
        await k.wait(p.pid)
        assert "is down" in str(p.error) and time.monotonic() - t0 < 1.0  # no waiting on it

        remote = load_settings(data_dir=tmp_path / "remote")
        server = BackgroundServer(create_app(remote, backend_factory=scripted_factory()), port=port)
        server.start()
        try:
            await asyncio.sleep(0.3)  # past remote_probe_s: the next request checks health
            p = await k.spawn(ask, "back", caps=["llm.*"])
            assert await k.wait(p.pid) == 0, p.error
            assert p.result == "You said: back" and engine.down is None
        finally:
            server.stop()
    finally:
        await k.shutdown()


class DroppingProxy:
    """A loopback TCP proxy that closes its first `drop` connections at once."""

    def __init__(self, target: int, drop: int) -> None:
        self.target, self.drop, self.seen = target, drop, 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen += 1
        if self.seen <= self.drop:
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


async def test_dropped_connections_are_retried(tmp_path: Path, peer: tuple[str, Gate]) -> None:
    url, _ = peer
    proxy = DroppingProxy(int(url.rsplit(":", 1)[1]), drop=2)
    port = await proxy.start()
    k = await local_kernel(tmp_path, f"http://127.0.0.1:{port}")
    try:
        p = await k.spawn(ask, "through", caps=["llm.*"])
        assert await k.wait(p.pid) == 0, p.error
        assert p.result == "You said: through"
        engine = k.models.remote("peer")
        assert engine is not None and engine.counts["retries"] == 2 and engine.down is None
    finally:
        await k.shutdown()
        assert proxy.server is not None
        proxy.server.close()


async def test_a_refused_request_says_why(tmp_path: Path, peer: tuple[str, Gate]) -> None:
    url, _ = peer
    k = await local_kernel(tmp_path, url)
    try:

        async def bad(ctx: Any) -> str:
            schema = {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}
            r = await ctx.sys.llm.chat(
                messages=[{"role": "user", "content": "x"}], model="peer", json_schema=schema
            )
            return str(r.text)

        p = await k.spawn(bad, caps=["llm.*"])
        await k.wait(p.pid)
        assert "refused the request: HTTP 400" in str(p.error)
        engine = k.models.remote("peer")
        assert engine is not None and engine.down is None and engine.counts["retries"] == 0
    finally:
        await k.shutdown()


async def test_the_real_model_served_remotely(tmp_path: Path, real_model_path: Path) -> None:
    remote = load_settings(data_dir=tmp_path / "remote")
    with BackgroundServer(create_app(remote)) as url:
        k = await local_kernel(tmp_path, url)
        try:
            p = await k.spawn(ask, "Say hello.", caps=["llm.*"])
            assert await k.wait(p.pid) == 0, p.error
            assert p.result.strip() and p.gen_stats[0].generated > 0
            assert p.gen_stats[0].ttft is not None and p.gen_stats[0].tokens_per_s
            # the real model follows both constraints, as add-remote's probe finds
            assert await probe_features(url, DEFAULT_MODEL) == {
                "grammar": True, "json_schema": True, "schema_format": "json_schema",
            }  # fmt: skip
        finally:
            await k.shutdown()


def test_add_remote_probes_the_server(tmp_path: Path, peer: tuple[str, Gate]) -> None:
    url, _ = peer
    r = runner.invoke(cli, ["models", "add-remote", "gpu", "--url", url, "--model", DEFAULT_MODEL])
    assert r.exit_code == 0, r.output
    # the scripted model answers "You said: ..." whatever the grammar: the probe finds it out
    assert "(4 at once; grammar no, json_schema no)" in r.output
    assert ModelLibrary(load_settings().data_dir).get("gpu").meta["grammar"] is False  # type: ignore[index]
    r = runner.invoke(cli, ["models", "list"])
    assert r.exit_code == 0 and "gpu" in r.output and "remote" in r.output, r.output
    line = one_line_error(
        runner.invoke(cli, ["models", "add-remote", "x", "--url", url, "--model", "nope"])
    )
    assert "does not serve 'nope'" in line
    dead = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(
        runner.invoke(cli, ["models", "add-remote", "x", "--url", dead, "--model", "m"])
    )
    assert "cannot be reached" in line
    line = one_line_error(
        runner.invoke(cli, ["models", "add-remote", "x", "--url", "ftp://h:1", "--model", "m"])
    )
    assert "--url must be an http:// or https:// URL" in line


def test_plan_measures_a_remote_model_over_its_api(tmp_path: Path, peer: tuple[str, Gate]) -> None:
    """`llmos plan` on a remote model: c is its `--parallel`, and the table is measured by
    sending k requests at once over its API (no simulation: its server batches)."""
    url, _ = peer
    args = ["models", "add-remote", "gpu", "--url", url, "--model", DEFAULT_MODEL]
    assert runner.invoke(cli, [*args, "--parallel", "2"]).exit_code == 0
    plan = ["plan", "--model", "gpu", "--rate", "1/s", "--prompt-tokens", "16"]
    r = runner.invoke(cli, [*plan, "--output-tokens", "8", "--repeats", "1"])
    assert r.exit_code == 0, r.output
    assert f"gpu (remote at {url}): 16 prompt + 8 output tokens" in r.output
    assert "rate 1/s on 2 slots" in r.output and "not simulated" in r.output
    table = [ln.split() for ln in r.output.splitlines() if ln[:5].strip() in ("1", "2")]
    assert [row[0] for row in table] == ["1", "2"] and all(float(row[1]) > 0 for row in table)
    again = runner.invoke(cli, [*plan, "--output-tokens", "8"])
    assert again.exit_code == 0 and "(cached;" in again.output, again.output


async def test_a_route_picks_a_model_and_falls_back(tmp_path: Path, peer: tuple[str, Gate]) -> None:
    url, _ = peer
    routes = {"auto": ["peer", DEFAULT_MODEL]}
    k = await local_kernel(tmp_path, url, routes=routes)

    async def ask_auto(ctx: Any) -> str:
        r = await ctx.sys.llm.chat(messages=[{"role": "user", "content": "hi"}], model="auto")
        return str(r.text)

    try:
        p = await k.spawn(ask_auto, caps=["llm.*"])
        assert await k.wait(p.pid) == 0, p.error
        assert p.info()["served_by"] == "peer" and p.info()["route"] == "route auto: peer"
        low = await k.spawn(ask_auto, caps=["llm.*"], nice=10)  # low priority: smallest first
        assert await k.wait(low.pid) == 0, low.error
        assert low.info()["served_by"] == DEFAULT_MODEL and "smallest first" in low.info()["route"]
    finally:
        await k.shutdown()

    dead = f"http://127.0.0.1:{free_port()}"  # the same route, its first model gone
    k = await local_kernel(tmp_path / "2", dead, routes=routes, remote_retries=0, remote_probe_s=60)
    try:
        for _ in range(2):  # the remote fails before any output: the next model serves
            p = await k.spawn(ask_auto, caps=["llm.*"])
            assert await k.wait(p.pid) == 0, p.error
            assert p.result == "You said: hi" and p.info()["served_by"] == DEFAULT_MODEL
            assert p.info()["route"] == "route auto: peer; peer failed"
        p = await k.spawn(ask_auto, caps=["llm.*"])  # now marked down: skipped at once
        assert await k.wait(p.pid) == 0, p.error
        assert p.info()["route"] == f"route auto: {DEFAULT_MODEL}; skipped peer down"
    finally:
        await k.shutdown()


def test_the_rest_api_serves_remote_models_and_routes(
    tmp_path: Path, peer: tuple[str, Gate]
) -> None:
    """A client of this daemon reaches a model another engine serves, by name or route."""
    import openai

    url, _ = peer
    settings = load_settings(data_dir=tmp_path / "front", routes={"auto": ["peer", DEFAULT_MODEL]})
    add_peer(settings.data_dir, url)
    app = create_app(settings, backend_factory=scripted_factory())
    with BackgroundServer(app) as front:
        oai = openai.OpenAI(base_url=f"{front}/v1", api_key="none")
        ids = {m.id for m in oai.models.list().data}
        assert {"peer", DEFAULT_MODEL} <= ids
        card = httpx.get(f"{front}/v1/models/peer").json()
        assert card["remote"] == url and card["status"] == {"value": "remote"}
        chat = oai.chat.completions.create(
            model="peer", messages=[{"role": "user", "content": "over there"}], max_tokens=20
        )
        assert chat.choices[0].message.content == "You said: over there"
        assert chat.usage is not None and chat.usage.completion_tokens > 0
        parts = oai.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "routed"}], stream=True
        )
        assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == (
            "You said: routed"
        )
        # no model of the route takes ~5000 tokens: a 400 before any stream opens
        with pytest.raises(openai.BadRequestError, match="no model can serve this request"):
            oai.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "word " * 4000}], stream=True
            )
        done = oai.completions.create(
            model="peer", prompt="<|user|>raw\n<|assistant|>", max_tokens=20
        )
        assert done.choices[0].text == "You said: raw"
