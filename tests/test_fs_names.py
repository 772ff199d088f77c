"""Control characters in memory-FS names are refused everywhere a path enters: the path rules,
a syscall, the CLI and the REST API, each with the typed `bad_path` error. A newline in a
name made `ls` show one file as two; an escape sequence could repaint a terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.errors import SyscallError
from llmos.kernel.kernel import Kernel
from llmos.memory.paths import BadPath, normalize
from tests.test_server import serve_scripted

CONTROLS = [chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))]


@pytest.mark.parametrize("ch", CONTROLS, ids=lambda ch: f"U+{ord(ch):04X}")
def test_every_control_character_is_refused(ch: str) -> None:
    with pytest.raises(BadPath, match="NUL byte" if ch == "\x00" else f"U\\+{ord(ch):04X}"):
        normalize(f"/tmp/a{ch}b")


def test_printable_names_still_pass() -> None:
    # Beyond C1: non-breaking space, accents, CJK and emoji are ordinary names.
    assert normalize("/tmp/caf\u00e9 \u00a0\u6771\u4eac \U0001f600") == (
        "/tmp/caf\u00e9 \u00a0\u6771\u4eac \U0001f600"
    )


async def test_a_syscall_gets_the_typed_error_and_writes_nothing(scripted_kernel: Kernel) -> None:
    async def prog(ctx: Any) -> list[str]:
        kinds = []
        for name in ("/tmp/a\x01b", "/tmp/two\nlines", "/tmp/del\x7f", "/tmp/c1\x9b"):
            try:
                await ctx.sys.fs.write(path=name, content="x")
                kinds.append("written")
            except SyscallError as exc:
                kinds.append(exc.kind)
        kinds.append(str(await ctx.sys.fs.ls(path="/tmp")))
        return kinds

    p = await scripted_kernel.spawn(prog, caps=["fs.write:/tmp/**", "fs.read:/tmp/**"])
    assert await scripted_kernel.wait(p.pid) == 0, p.error
    assert p.result[:4] == ["bad_path"] * 4
    assert "a\x01b" not in p.result[4] and "two" not in p.result[4]


def test_the_cli_refuses_in_one_line_with_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOS_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    for name in ("/tmp/a\x01b", "/tmp/a\nb", "/tmp/a\x00b"):
        result = runner.invoke(app, ["fs", "write", name, "x", "--local"])
        assert result.exit_code == 2, result.output
        out = result.output.strip()
        assert out.startswith("error: ") and "\n" not in out and "Traceback" not in out, out
        assert "control character" in out or "NUL" in out, out
    ls = runner.invoke(app, ["fs", "ls", "/tmp", "--local"])
    assert ls.exit_code == 0 and ls.output.strip() == "", ls.output


def test_the_api_answers_400_bad_path(tmp_path: Path) -> None:
    with serve_scripted(tmp_path) as (url, _):
        for name in ("/tmp/a\x01b", "/tmp/a\nb", "/tmp/a\x9bb"):
            r = httpx.put(f"{url}/v1/fs/write", json={"path": name, "content": "x"}, timeout=60)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "bad_path", r.text
        r = httpx.get(f"{url}/v1/fs/ls", params={"path": "/tmp"})
        assert r.status_code == 200 and r.json()["entries"] == [], r.text
