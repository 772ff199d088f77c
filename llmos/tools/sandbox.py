"""`shell.exec` and `python.exec`: commands in a sandbox, with approval required.

Each run is a child process tree inside fresh user, mount and PID namespaces (util-linux
`unshare`, no privileges needed):
- the whole filesystem is remounted read-only, except the process's scratch directory,
  which is also its working directory and $HOME;
- the kernel's data directory (process table, logs, models, memory) is covered by an
  empty tmpfs, so a tool cannot read the kernel's files;
- rlimits cap CPU seconds, address space, file size and the number of processes;
- the environment is scrubbed to a fixed PATH/HOME/LANG (no LLMOS_* or API keys);
- a wall-clock timeout kills the tree: `unshare --kill-child` ends the PID namespace's
  init, which takes every process in it along, even ones that called setsid();
- output past a limit is cut off and the tree killed.

Where user namespaces are unavailable the tools refuse to run rather than run unconfined.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from llmos.agents.context import Context
from llmos.errors import BadArguments, ToolFailed
from llmos.syscalls.table import syscall

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs as root of the new user namespace: lock the filesystem, then drop into the limits.
_SETUP = r"""
set -e
scratch="$1"; shift
mount --rbind / /
mount -o remount,bind,ro,X-mount.recursive /
while [ "$1" != "--" ]; do
  [ -d "$1" ] && mount -t tmpfs -o size=4k,ro,mode=000 none "$1"
  [ -f "$1" ] && mount --bind /dev/null "$1"
  shift
done
shift
mount --bind "$scratch" "$scratch"
mount -o remount,bind,rw "$scratch"
cd "$scratch"
exec "$@"
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512
    file_mb: int = 16
    max_procs: int = 16  # processes the tool may add to the user's current count
    max_output: int = 64 * 1024  # bytes kept per stream


class ExecResult(BaseModel):
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False


@cache
def namespaces_available() -> bool:
    exe = shutil.which("unshare")
    if exe is None or shutil.which("prlimit") is None:
        return False
    import subprocess

    try:
        r = subprocess.run(
            [exe, "-r", "-m", "-p", "--fork", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _user_procs() -> int:
    uid, n = os.getuid(), 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                n += os.stat(f"/proc/{d}").st_uid == uid
            except OSError:
                pass
    return n


def scratch_dir(ctx: Context) -> Path:
    """The process's scratch directory (outside the kernel's data dir), made on first use."""
    proc = ctx.process
    if proc.scratch is None:
        proc.scratch = Path(tempfile.mkdtemp(prefix=f"llmos-scratch-{proc.pid}-"))
    return proc.scratch


async def run_sandboxed(
    argv: list[str], *, scratch: Path, hidden: list[Path], limits: Limits, stdin: bytes = b""
) -> ExecResult:
    if not namespaces_available():
        raise ToolFailed(
            "sandbox unavailable: unprivileged user namespaces (unshare) are disabled; "
            "refusing to run the command unconfined"
        )
    mb = 1024 * 1024
    nproc = _user_procs() + limits.max_procs
    rlimits = [
        "prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_mb * mb}",
        f"--fsize={limits.file_mb * mb}", f"--nproc={nproc}", "--core=0", "--",
    ]  # fmt: skip
    hide = [str(h) for h in hidden if h.exists() and not scratch.is_relative_to(h)]
    cmd = [
        "unshare", "-r", "-m", "-p", "--fork", "--kill-child", "--mount-proc",
        "sh", "-c", _SETUP, "sh", str(scratch), *hide, "--", *rlimits, *argv,
    ]  # fmt: skip
    env = {"PATH": SAFE_PATH, "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=scratch, start_new_session=True,
    )  # fmt: skip
    truncated = False

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def read(stream: asyncio.StreamReader | None) -> bytes:
        nonlocal truncated
        buf = bytearray()
        if stream is None:
            return b""
        while chunk := await stream.read(65536):
            room = limits.max_output - len(buf)
            buf += chunk[: max(room, 0)]
            if len(chunk) > room:
                truncated = True
                kill()  # endless output: stop the producer, not just the reader
                break
        return bytes(buf)

    async def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin)
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass

    timed_out = False
    try:
        async with asyncio.timeout(limits.timeout_s):
            _, out, err = await asyncio.gather(feed(), read(proc.stdout), read(proc.stderr))
            code = await proc.wait()
    except TimeoutError:
        timed_out = True
        kill()
        code = await proc.wait()
        out, err = b"", b""
    except BaseException:  # cancelled (TERM/KILL of the calling process): leave nothing
        kill()
        await proc.wait()
        raise
    return ExecResult(
        exit_code=None if timed_out else code,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace")
        + (f"\n[killed after {limits.timeout_s} s timeout]" if timed_out else ""),
        timed_out=timed_out,
        truncated=truncated,
    )


def _limits(ctx: Context, timeout_s: float) -> Limits:
    if not 0 < timeout_s <= 300:
        raise BadArguments("timeout_s must be in (0, 300]")
    return Limits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s) + 1))


def _kernel_files(ctx: Context) -> list[Path]:
    """What a sandboxed command must not see: the kernel's data dir, its config file (which
    may hold the API key) and llmos's own config dir (older copies, editor backups). A hidden
    file reads as empty, a hidden dir as an unreadable empty one. The file is hidden by itself
    because `LLMOS_CONFIG` may put it in a directory the sandbox still needs (home, a project)."""
    from platformdirs import user_config_dir

    from llmos.config import config_file_path

    return [ctx.kernel.settings.data_dir, Path(user_config_dir("llmos")), config_file_path()]


@syscall("shell.exec", risk="high")
async def shell_exec(ctx: Context, command: str, timeout_s: float = 10.0) -> ExecResult:
    """Run a shell command in a sandbox (read-only filesystem but a scratch dir, rlimits,
    timeout, scrubbed environment). Needs approval."""
    return await run_sandboxed(
        ["sh", "-c", command], scratch=scratch_dir(ctx),
        hidden=_kernel_files(ctx), limits=_limits(ctx, timeout_s),
    )  # fmt: skip


@syscall("python.exec", risk="high")
async def python_exec(ctx: Context, code: str, timeout_s: float = 10.0) -> ExecResult:
    """Run Python code in the same sandbox as shell.exec. Needs approval."""
    return await run_sandboxed(
        [sys.executable, "-I", "-c", code], scratch=scratch_dir(ctx),
        hidden=_kernel_files(ctx), limits=_limits(ctx, timeout_s),
    )  # fmt: skip
