"""shell.exec / python.exec: approval by default, and escape attempts that must fail."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmos.errors import ApprovalDenied
from llmos.kernel.kernel import Kernel
from llmos.tools.sandbox import namespaces_available

pytestmark = pytest.mark.skipif(
    not namespaces_available(), reason="needs unprivileged user namespaces (the tools refuse)"
)

CAPS = ["shell.exec", "python.exec"]


async def allow(ctx: Any, spec: Any, values: Any) -> bool:
    return True


async def run_tool(k: Kernel, name: str, *, caps: list[str] = CAPS, **args: Any) -> Any:
    async def prog(ctx: Any) -> Any:
        return await ctx.call(name, args)

    p = await k.spawn(prog, caps=caps)
    code = await k.wait(p.pid)
    assert code == 0, p.error
    return p.result


async def test_needs_approval_and_non_interactive_ask_denies(scripted_kernel: Kernel) -> None:
    async def prog(ctx: Any) -> str:
        try:
            await ctx.sys.shell.exec(command="echo hi")
        except ApprovalDenied as exc:
            return exc.kind
        return "ran"

    p = await scripted_kernel.spawn(prog, caps=CAPS)
    await scripted_kernel.wait(p.pid)
    assert p.result == "approval_denied"


async def test_runs_in_scratch_with_scrubbed_env(scripted_kernel: Kernel) -> None:
    scripted_kernel.syscalls.approver = allow
    os.environ["LLMOS_SECRET_PROBE"] = "leak"
    try:
        r = await run_tool(
            scripted_kernel, "shell.exec", command="pwd; env | sort; echo hi > f; cat f"
        )
    finally:
        del os.environ["LLMOS_SECRET_PROBE"]
    assert r.exit_code == 0, r.stderr
    assert "llmos-scratch-" in r.stdout.splitlines()[0]
    assert "LLMOS_SECRET_PROBE" not in r.stdout and "leak" not in r.stdout
    assert r.stdout.rstrip().endswith("hi")


async def test_write_outside_scratch_fails(scripted_kernel: Kernel, tmp_path: Path) -> None:
    scripted_kernel.syscalls.approver = allow
    target = tmp_path / "escaped"
    r = await run_tool(scripted_kernel, "shell.exec", command=f"echo x > {target}")
    assert r.exit_code != 0
    assert "Read-only" in r.stderr
    assert not target.exists()
    r = await run_tool(
        scripted_kernel, "python.exec", code=f"open({str(target)!r}, 'w').write('x')"
    )
    assert r.exit_code != 0 and not target.exists()


async def test_cannot_read_the_kernels_files(scripted_kernel: Kernel) -> None:
    scripted_kernel.syscalls.approver = allow
    db = scripted_kernel.settings.data_dir / "kernel.db"
    assert db.exists()
    r = await run_tool(scripted_kernel, "shell.exec", command=f"cat {db}; ls -a {db.parent}")
    assert "No such file" in r.stderr
    assert "SQLite" not in r.stdout
    assert "kernel.db" not in r.stdout


async def test_sleep_past_timeout_is_killed(scripted_kernel: Kernel) -> None:
    scripted_kernel.syscalls.approver = allow
    # A deadline well short of the sleeps, not a measurement: the call can only end before
    # it if the timeout killed the whole tree (the background sleep holds the output pipe).
    async with asyncio.timeout(20):
        r = await run_tool(
            scripted_kernel, "shell.exec", command="sleep 30 & sleep 30; echo never", timeout_s=1
        )
    assert r.timed_out and r.exit_code is None
    assert "never" not in r.stdout


async def test_huge_output_is_cut_off(scripted_kernel: Kernel) -> None:
    scripted_kernel.syscalls.approver = allow
    r = await run_tool(scripted_kernel, "shell.exec", command="yes llmos", timeout_s=5)
    assert r.truncated
    assert len(r.stdout) <= 64 * 1024


async def test_fork_bomb_is_contained(scripted_kernel: Kernel) -> None:
    """A fork bomb ends with the tool: refused forks where the process limit applies (Linux
    exempts the host's root user from RLIMIT_NPROC, so as root it is the timeout), then the
    PID namespace's end takes every process along, so nothing survives."""
    scripted_kernel.syscalls.approver = allow
    marker = f"bomb-{os.getpid()}-{id(scripted_kernel)}"
    # Bounded (8 levels of doubling: 256 processes at most) so that even a broken limit
    # cannot take the machine down; each process outlives the timeout, so they pile up.
    code = (
        f"import os, time  # {marker}\n"
        "fails = 0\n"
        "for depth in range(8):\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        fails += 1\n"
        "        break\n"
        "print('F' if fails else '.', end='', flush=True)\n"
        "time.sleep(30)\n"
    )
    async with asyncio.timeout(60):  # a deadline: a bomb that got loose would not end
        r = await run_tool(scripted_kernel, "python.exec", code=code, timeout_s=3)
    assert r.timed_out  # nothing ends on its own within the limit
    if os.getuid() != 0:  # the limit itself bites
        assert "F" in r.stdout, r.stdout
    assert r.stdout.count(".") + r.stdout.count("F") <= 256
    # SIGKILLed processes may take a moment to be reaped: a deadline, not a timing check.
    for _ in range(200):
        if not _processes_running(marker):
            break
        await asyncio.sleep(0.05)
    assert _processes_running(marker) == []


def _processes_running(marker: str) -> list[str]:
    """Pids whose command line holds `marker` (the bomb's code carries it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


async def test_cpu_and_file_size_limits(scripted_kernel: Kernel) -> None:
    scripted_kernel.syscalls.approver = allow
    r = await run_tool(
        scripted_kernel, "shell.exec", command="head -c 40000000 /dev/zero > big; ls -l big"
    )
    assert "File size limit exceeded" in r.stderr
    assert " 16777216 " in r.stdout  # stopped at the 16 MB limit
    r = await run_tool(
        scripted_kernel, "python.exec", code="x = bytearray(2 * 1024**3)", timeout_s=5
    )
    assert r.exit_code != 0 and "MemoryError" in r.stderr


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """A listening TCP socket on the host's loopback: a connect succeeds from its backlog,
    no accept (and no thread, no waiting) needed."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
    "except OSError as exc:\n"
    "    sys.exit(f'no connection: {{exc}}')\n"
    "print('connected')\n"
)


async def test_no_network_without_the_net_capability(
    scripted_kernel: Kernel, loopback_server: int
) -> None:
    scripted_kernel.syscalls.approver = allow
    code = CONNECT.format(port=loopback_server)
    r = await run_tool(scripted_kernel, "python.exec", code=code)
    assert r.exit_code != 0 and "connected" not in r.stdout, (r.stdout, r.stderr)
    assert "no connection" in r.stderr
    r = await run_tool(scripted_kernel, "python.exec", caps=[*CAPS, "net"], code=code)
    assert r.exit_code == 0 and r.stdout.strip() == "connected", r.stderr


async def test_loopback_inside_the_sandbox_still_works(scripted_kernel: Kernel) -> None:
    """Only the host is cut off: a command may still talk to itself over its own loopback."""
    scripted_kernel.syscalls.approver = allow
    code = (
        "import socket\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "socket.create_connection(s.getsockname(), timeout=5).close(); print('ok')\n"
    )
    r = await run_tool(scripted_kernel, "python.exec", code=code)
    assert r.exit_code == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory (what `Path.home()` answers) with a secret and a granted folder."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / "docs").mkdir()
    (home / "docs" / "notes.txt").write_text("shared notes\n")
    monkeypatch.setenv("HOME", str(home))
    assert Path.home() == home
    return home


async def test_home_is_hidden_unless_granted(scripted_kernel: Kernel, fake_home: Path) -> None:
    scripted_kernel.syscalls.approver = allow
    key, notes = fake_home / ".ssh" / "id_ed25519", fake_home / "docs" / "notes.txt"
    cmd = f"cat {key}; cat {notes}; ls -A {fake_home}"
    r = await run_tool(scripted_kernel, "shell.exec", command=cmd)
    assert "PRIVATE KEY" not in r.stdout and "shared notes" not in r.stdout
    assert ".ssh" not in r.stdout and "docs" not in r.stdout  # not even the names
    assert "No such file" in r.stderr

    docs = [*CAPS, f"host.read:{fake_home}/docs/**"]
    r = await run_tool(scripted_kernel, "shell.exec", caps=docs, command=cmd)
    assert "shared notes" in r.stdout and "PRIVATE KEY" not in r.stdout, (r.stdout, r.stderr)
    r = await run_tool(scripted_kernel, "shell.exec", caps=docs, command=f"echo x > {notes}")
    assert r.exit_code != 0 and "Read-only" in r.stderr  # shown read-only
    assert notes.read_text() == "shared notes\n"

    everything = [*CAPS, f"host.read:{fake_home}/**"]
    r = await run_tool(scripted_kernel, "shell.exec", caps=everything, command=cmd)
    assert "PRIVATE KEY" in r.stdout and "shared notes" in r.stdout, r.stderr


async def test_a_scratch_dir_under_home_stays_writable(
    scripted_kernel: Kernel, fake_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted_kernel.syscalls.approver = allow
    tmp = fake_home / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where mkdtemp puts the scratch dir
    r = await run_tool(
        scripted_kernel, "shell.exec", command=f"echo hi > f; cat f; pwd; ls -A {fake_home}"
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "hi" and lines[1].startswith(str(tmp))
    assert lines[2:] == ["tmp"]  # the way to the scratch dir, nothing else of home
