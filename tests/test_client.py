"""`llmos.client` (sync and async) and the daemon-backed commands (`ps`, `kill`, `logs`,
`fs`) against a real server over the scripted engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.client import ApiError, AsyncClient, Client
from tests.conftest import HashEmbedder
from tests.test_server import MODEL, serve_scripted

runner = CliRunner()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, hash_embedder: HashEmbedder
) -> Iterator[tuple[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
        with serve_scripted(
            tmp_path_factory.mktemp("client"), api_key="k3y", embedder=hash_embedder
        ) as s:
            yield s


@pytest.fixture
def client(server: tuple[str, Any]) -> Iterator[Client]:
    with Client(server[0], api_key="k3y") as c:
        yield c


def test_sync_client_generation(client: Client) -> None:
    assert client.health()["status"] == "ok"
    assert MODEL in client.models()
    assert client.chat("hi") == "You said: hi"
    assert "".join(client.chat_stream([{"role": "user", "content": "yo"}])) == "You said: yo"
    assert client.chat("abcdef", max_tokens=4) == "You "
    assert len(client.complete("abc", max_tokens=3)) == 3


def test_sync_client_processes(client: Client, tmp_path: Path) -> None:
    info = client.spawn("chat", "hey")
    assert client.wait(info["pid"])["exit_code"] == 0
    assert client.logs(info["pid"]) == "You said: hey"
    assert info["pid"] in [p["pid"] for p in client.ps()]
    prog = tmp_path / "talk.py"
    prog.write_text(
        "import asyncio\nasync def main(ctx):\n    ctx.print('a')\n    await asyncio.sleep(0.05)\n    ctx.print('b')\n"
    )
    pid = client.spawn(path=str(prog))["pid"]
    assert "".join(client.follow(pid)) == "a\nb\n"
    assert client.get(pid)["state"] == "exited"


def test_client_errors_are_api_errors(client: Client, server: tuple[str, Any]) -> None:
    with pytest.raises(ApiError) as ei:
        client.chat("x", model="nope")
    assert ei.value.status == 404 and ei.value.code == "model_not_found"
    with pytest.raises(ApiError) as ei:
        client.get(424242)
    assert ei.value.status == 404
    with Client(server[0], api_key="wrong") as bad, pytest.raises(ApiError) as ei:
        bad.ps()
    assert ei.value.status == 401


def test_async_client(server: tuple[str, Any]) -> None:
    async def main() -> None:
        async with AsyncClient(server[0], api_key="k3y") as c:
            answers = await asyncio.gather(*(c.chat(f"n{i}") for i in range(6)))
            assert answers == [f"You said: n{i}" for i in range(6)]
            assert "".join([t async for t in c.chat_stream("s")]) == "You said: s"
            pid = (await c.spawn("chat", "bg"))["pid"]
            assert (await c.wait(pid))["exit_code"] == 0
            assert await c.logs(pid) == "You said: bg"
            with pytest.raises(ApiError):
                await c.kill(pid, "BOGUS")

    asyncio.run(main())


def test_cli_ps_kill_logs(
    server: tuple[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmos.cli import app

    monkeypatch.setenv("LLMOS_API_KEY", "k3y")
    url = server[0]
    prog = tmp_path / "sleepy.py"
    prog.write_text(
        "import asyncio\nasync def main(ctx):\n    ctx.print('zz')\n    await asyncio.sleep(600)\n"
    )
    with Client(url, api_key="k3y") as c:
        pid = c.spawn(path=str(prog))["pid"]
    r = runner.invoke(app, ["ps", "--url", url])
    assert r.exit_code == 0, r.output
    assert any(ln.split()[0] == str(pid) and "sleepy" in ln for ln in r.output.splitlines()[1:])
    r = runner.invoke(app, ["ps", "--url", url, "--json"])
    assert pid in [p["pid"] for p in json.loads(r.output)]
    r = runner.invoke(app, ["logs", str(pid), "--url", url])
    assert r.output == "zz\n"
    r = runner.invoke(app, ["kill", str(pid), "-s", "KILL", "--url", url])
    assert r.exit_code == 0 and f"{pid}: exited" in r.output


def test_cli_errors_are_one_line(server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from llmos.cli import app

    monkeypatch.setenv("LLMOS_API_KEY", "k3y")
    r = runner.invoke(app, ["kill", "999999", "--url", server[0]])
    assert r.exit_code == 2 and r.output.startswith("error: 404") and "Traceback" not in r.output
    r = runner.invoke(app, ["ps", "--url", "http://127.0.0.1:9"])  # nothing listens there
    assert r.exit_code == 2 and "cannot reach the llmos daemon" in r.output


def test_cli_fs_commands(server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from llmos.cli import app

    monkeypatch.setenv("LLMOS_API_KEY", "k3y")
    url = server[0]
    tea = "/home/api/n/tea.txt"

    def fs(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, ["fs", *args, "--url", url], input=input)

    r = fs("write", tea, input="green tea\n")
    assert r.exit_code == 0 and r.output == f"wrote {tea} (version 1)\n"
    assert fs("write", tea, "green tea\n").output == f"wrote {tea} (version 2)\n"
    assert fs("cat", tea).output == "green tea\n\n"
    r = fs("ls", "/home/api/n")
    assert r.output.split() == ["-rw-r--r--", "root", "10", "v2", tea], r.output
    assert [e["path"] for e in json.loads(fs("ls", "/home/api/n", "--json").output)] == [tea]
    hits = json.loads(fs("search", "tea", "-k", "3", "--json").output)
    assert [h["path"] for h in hits] == [tea]
    assert fs("search", "tea").output.split()[1:] == [tea, "green", "tea"]
    assert fs("rm", tea).exit_code == 0
    r = fs("cat", tea)
    assert r.exit_code == 2 and "no such file" in r.output and "Traceback" not in r.output
