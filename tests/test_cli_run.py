"""`llmos run`: granting capabilities (--cap), approval policy (--approve), and the report
of a crashing program (its own frames, on a fresh line)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.tools.sandbox import namespaces_available
from tests.conftest import one_line_error

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
ENV = {"HF_HUB_OFFLINE": "1"}

CALC = (
    "from llmos.errors import SyscallError\n"
    "async def main(ctx):\n"
    "    try:\n"
    "        r = await ctx.sys.calc(expression='17*23')\n"
    "    except SyscallError as exc:\n"
    "        ctx.print(exc.kind, str(exc))\n"
    "        return 3\n"
    "    ctx.print('calc', r)\n"
)


def _prog(tmp_path: Path, text: str, name: str = "prog.py") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_approve_deny_and_allow(tmp_path: Path) -> None:
    p = _prog(tmp_path, CALC)
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 0 and "calc 391" in r.output, r.output
    r = runner.invoke(app, ["run", str(p), "--approve", "calc=deny"])
    assert r.exit_code == 3 and "approval_denied" in r.output, r.output
    r = runner.invoke(app, ["run", str(p), "--approve", "calc=deny", "--approve", "calc=allow"])
    assert r.exit_code == 0 and "calc 391" in r.output, r.output  # the last one wins


def test_ask_without_a_terminal_denies_and_says_how_to_allow(tmp_path: Path) -> None:
    p = _prog(tmp_path, CALC)
    r = runner.invoke(app, ["run", str(p), "--approve", "calc=ask"])
    assert r.exit_code == 3, r.output
    assert "approval_denied" in r.output and "--approve calc=allow" in r.output, r.output


def test_bad_approve_values_are_one_line(tmp_path: Path) -> None:
    p = _prog(tmp_path, CALC)
    out = one_line_error(runner.invoke(app, ["run", str(p), "--approve", "calc=maybe"]))
    assert "NAME=allow" in out
    one_line_error(runner.invoke(app, ["run", str(p), "--approve", "calc"]))
    out = one_line_error(runner.invoke(app, ["run", str(p), "--approve", "no.such=allow"]))
    assert "no.such" in out and "no such syscall" in out


def test_cap_grants_a_capability(tmp_path: Path) -> None:
    p = _prog(
        tmp_path,
        "from llmos.errors import SyscallError\n"
        "async def main(ctx):\n"
        "    try:\n"
        "        await ctx.sys.ipc.send(pid=ctx.pid, message={'hi': 1})\n"
        "    except SyscallError as exc:\n"
        "        ctx.print(exc.kind)\n"
        "        return 3\n"
        "    ctx.print('got', (await ctx.sys.ipc.recv())['message'])\n",
    )
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 3 and "permission_denied" in r.output, r.output
    r = runner.invoke(app, ["run", str(p), "--cap", "ipc"])
    assert r.exit_code == 0 and "got {'hi': 1}" in r.output, r.output
    one_line_error(runner.invoke(app, ["run", str(p), "--cap", ""]))


@pytest.mark.skipif(not namespaces_available(), reason="needs unprivileged user namespaces")
def test_cap_and_approve_run_a_shell_command(tmp_path: Path) -> None:
    p = _prog(
        tmp_path,
        "async def main(ctx):\n"
        "    r = await ctx.sys.shell.exec(command='echo from-the-sandbox')\n"
        "    ctx.write(r.stdout)\n",
    )
    r = runner.invoke(app, ["run", str(p), "--cap", "shell.exec"])  # no terminal to ask
    assert r.exit_code == 1, r.output
    assert "ApprovalDenied" in r.output and "--approve shell.exec=allow" in r.output
    r = runner.invoke(app, ["run", str(p), "--cap", "shell.exec", "--approve", "shell.exec=allow"])
    assert r.exit_code == 0 and "from-the-sandbox" in r.output, r.output


def test_crash_report_shows_the_programs_frames_on_a_fresh_line(tmp_path: Path) -> None:
    p = _prog(
        tmp_path,
        "async def main(ctx):\n"
        "    ctx.write('partial output')\n"
        "    await helper(ctx)\n"
        "\n"
        "async def helper(ctx):\n"
        "    await ctx.sys.shell.exec(command='true')\n",
        name="crashy.py",
    )
    r = subprocess.run(
        [sys.executable, "-m", "llmos", "run", str(p)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # as a terminal shows both
        text=True, timeout=120, env={**os.environ, **ENV}, cwd=ROOT,
    )  # fmt: skip
    out = r.stdout
    assert r.returncode == 1, out
    assert f'File "{p}", line 3, in main' in out and f'File "{p}", line 6, in helper' in out
    for ours in ("kernel.py", "context.py", "table.py", "llmos/"):
        assert ours not in out, out
    assert "llmos.errors.PermissionDenied: process 1 lacks capability 'shell.exec'" in out
    lines = out.splitlines()
    assert lines[0] == "partial output", out  # the program's output, then the report below it
    assert "Traceback (most recent call last):" in lines


def test_ask_at_a_terminal_prompts(tmp_path: Path) -> None:
    """With a terminal, `ask` asks there (y/N): yes runs the call, anything else denies."""
    p = _prog(tmp_path, CALC)
    for answer, expect in ((b"y\n", "calc 391"), (b"\n", "approval_denied")):
        out = _run_in_pty(
            [sys.executable, "-m", "llmos", "run", str(p), "--approve", "calc=ask"],
            prompt=b"allow?", answer=answer,
        )  # fmt: skip
        assert "wants calc" in out and expect in out, out


def _run_in_pty(argv: list[str], *, prompt: bytes, answer: bytes, timeout: float = 120) -> str:
    """Run `argv` with a pseudo-terminal as stdin, stdout and stderr; type `answer` once
    `prompt` shows. Returns everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env={**os.environ, **ENV},
        close_fds=True,
    )  # fmt: skip
    os.close(slave)
    buf, answered = b"", False
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            assert ready, f"no output for {timeout} s: {buf!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            buf += chunk
            if not answered and prompt in buf:
                os.write(master, answer)
                answered = True
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert answered, buf
    return buf.decode("utf-8", "replace").replace("\r\n", "\n")
