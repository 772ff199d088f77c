"""`shell.exec` and `python.exec`: commands in a sandbox, with approval required.

Each run is a child process tree inside fresh user, mount, PID and network namespaces
(util-linux `unshare`, no privileges needed). The threat is an agent steered by a prompt
injection in something it read: the command it runs may try to exfiltrate or tamper, so
- the whole filesystem is remounted read-only, except the process's scratch directory,
  which is also its working directory and $HOME;
- there is no network (a fresh network namespace, loopback only, so not even the host's
  loopback services such as the llmos daemon) unless the process holds capability `net`;
- the host user's home directory is an empty read-only tmpfs (keys, browser profiles,
  shell history); a capability `host.read:PATH/**` shows PATH again, read-only;
- the kernel's data directory (process table, logs, models, memory) is covered by an
  empty tmpfs, so a tool cannot read the kernel's files;
- rlimits cap CPU seconds, address space, file size and the number of processes;
- the environment is scrubbed to a fixed PATH/HOME/LANG (no LLMOS_* or API keys);
- a wall-clock timeout kills the tree: `unshare --kill-child` ends the PID namespace's
  init, which takes every process in it along, even ones that called setsid();
- output past a limit is cut off and the tree killed.

Where user (or, without `net`, network) namespaces are unavailable the tools refuse to run
rather than run unconfined.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from platformdirs import user_config_dir
from pydantic import BaseModel

from llmos.config import config_file_path
from llmos.core.context import Context
from llmos.core.syscall import capability_allows, syscall
from llmos.errors import BadArguments, ToolFailed

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs as root of the new user namespace: lock the filesystem, hide the home directory,
# then drop into the limits. Arguments: scratch, home ("" to leave it visible), 1 when the
# network namespace is a fresh one, the paths under home to show again (relative to it),
# "--", paths to hide, "--", the command.
_SETUP = r"""
set -e
scratch="$1"; home="$2"; fresh_net="$3"; shift 3
if [ "$fresh_net" = 1 ]; then
  # Its loopback up (without `ip` it stays down: no network at all, which is fine too).
  (PATH="$PATH:/usr/sbin:/sbin"; ip link set lo up) 2>/dev/null || true
fi
mount --rbind / /
mount -o remount,bind,ro,X-mount.recursive /
if [ -n "$home" ]; then
  # The shell's cwd keeps the real home reachable once the tmpfs covers its path:
  # relative names and /proc/self/cwd/... resolve below the tmpfs, not in it.
  cd "$home"
  mount -t tmpfs -o size=1m,mode=755 none "$home"
  while [ "$1" != "--" ]; do
    if [ -d "$1" ]; then
      mkdir -p "$home/$1"
    elif [ -e "$1" ]; then
      mkdir -p "$home/$(dirname "$1")"; : > "$home/$1"
    else
      shift; continue
    fi
    # --no-canonicalize: mount must not turn the source back into a path through the tmpfs.
    mount --no-canonicalize --rbind "/proc/self/cwd/$1" "$home/$1"
    mount -o remount,bind,ro,X-mount.recursive "$home/$1"
    shift
  done
  mount -o remount,bind,ro "$home"
  cd /
fi
shift
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
    max_procs: int = 16  # processes the tool may start (see _nproc_limit)
    max_output: int = 64 * 1024  # bytes kept per stream


class ExecResult(BaseModel):
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False


def _unshare_works(*flags: str) -> bool:
    exe = shutil.which("unshare")
    if exe is None or shutil.which("prlimit") is None:
        return False
    import subprocess

    try:
        r = subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@cache
def namespaces_available() -> bool:
    """Unprivileged user, mount and PID namespaces: without them the tools refuse."""
    return _unshare_works("-r", "-m", "-p", "--fork")


@cache
def net_namespace_available() -> bool:
    """A fresh network namespace: without one, only a process holding `net` may run tools."""
    return _unshare_works("-r", "-n")


@cache
def _nproc_counts_the_namespace() -> bool:
    """Whether RLIMIT_NPROC inside a fresh user namespace counts that namespace's processes
    only (Linux 5.14 and later) rather than every process of the host user. Probed: with a
    limit of 8, three children fork there only if the count starts afresh (the host user
    of a running kernel has more than 8 processes, or the limit could not bite anyway).
    Linux never applies the limit to the host's root user: run as root, a fork bomb is
    stopped by the timeout and the PID namespace's end instead (tests cover both)."""
    import subprocess

    try:
        r = subprocess.run(
            ["unshare", "-r", "--", "prlimit", "--nproc=8", "--", "sh", "-c",
             "true & true & true & wait && echo ok"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and r.stdout.strip() == "ok"


def _nproc_limit(max_procs: int) -> int:
    """The sandbox's process limit: `max_procs` beyond what it starts with (its namespace's
    init and the setup shell), counted where the kernel counts."""
    if _nproc_counts_the_namespace():
        return max_procs + 4
    return _user_procs() + max_procs


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


@dataclass(frozen=True)
class Confinement:
    """What one run may reach beyond its scratch dir, from the process's capabilities."""

    net: bool = False  # the host's network (else a fresh namespace with loopback only)
    home: Path | None = None  # the home directory to cover with an empty tmpfs (None: none)
    shown: tuple[Path, ...] = ()  # paths under `home` shown again, read-only

    @classmethod
    def for_caps(cls, caps: Collection[str], home: Path | None = None) -> Confinement:
        """`net` grants the network; `host.read:PATH/**` (or `host.read:PATH`) shows PATH.
        Grants are matched as every capability is (`capability_allows`): `*` or a bare
        `host.read` shows the whole home."""
        home = Path(os.path.normpath(Path.home() if home is None else home))
        net = capability_allows(caps, "net")
        patterns: list[str] = []
        for g in caps:
            cap, _, res = g.partition(":")
            if not capability_allows([cap], "host.read"):
                continue
            if not res:
                return cls(net=net)  # the whole host may be read: nothing to hide
            patterns.append(res)
        if home == Path("/") or not home.is_dir():
            return cls(net=net)  # nothing sensible to cover (a service user's HOME=/)
        shown: set[Path] = set()
        for pat in patterns:
            base = pat.removesuffix("/**") if pat.endswith("/**") else pat
            if not os.path.isabs(base):
                continue  # grants name absolute host paths
            for m in glob.glob(base) if glob.has_magic(base) else [base]:
                path = Path(os.path.normpath(m))
                # Only what the grant itself matches (the path or everything under it).
                if capability_allows(caps, "host.read", str(path)) or capability_allows(
                    caps, "host.read", f"{path}/"
                ):
                    shown.add(path)
        if any(home.is_relative_to(p) for p in shown):
            return cls(net=net)  # home itself (or a parent) was granted
        shown.update(_interpreter_paths())  # python.exec may run from a venv or pyenv in home
        inside = sorted(p for p in shown if p.is_relative_to(home) and p.exists())
        # A path inside another shown one comes along with it.
        top = [p for p in inside if not any(p != q and p.is_relative_to(q) for q in inside)]
        return cls(net=net, home=home, shown=tuple(top))


def _home_args(confine: Confinement, scratch: Path) -> tuple[str, list[str], Path]:
    """The setup script's home ("" to leave it), the names under it to show again, and the
    scratch dir (a real path when it may lie under the covered home)."""
    if confine.home is None:
        return "", [], scratch
    # Mount points are real paths; the shown names stay relative to home as written, so a
    # symlink among them is followed when it is bound back (inside the real home).
    home = os.path.realpath(confine.home)
    shown = [str(p.relative_to(confine.home)) for p in confine.shown]
    scratch = Path(os.path.realpath(scratch))
    if scratch.is_relative_to(home):
        shown.append(str(scratch.relative_to(home)))  # bound back, then made writable
    return home, shown, scratch


def _interpreter_paths() -> list[Path]:
    """The Python installation python.exec runs (a venv or pyenv may live in home)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return [Path(os.path.normpath(r)) for r in roots if r]


async def run_sandboxed(
    argv: list[str],
    *,
    scratch: Path,
    hidden: list[Path],
    limits: Limits,
    stdin: bytes = b"",
    confine: Confinement | None = None,
) -> ExecResult:
    """Run `argv` confined. `confine` defaults to the strictest: no network, the current
    user's home covered."""
    if not namespaces_available():
        raise ToolFailed(
            "sandbox unavailable: unprivileged user namespaces (unshare) are disabled; "
            "refusing to run the command unconfined"
        )
    confine = confine or Confinement.for_caps(frozenset())
    if not confine.net and not net_namespace_available():
        raise ToolFailed(
            "sandbox unavailable: network namespaces (unshare --net) are disabled; "
            "refusing to run the command with network access (grant capability 'net' to allow it)"
        )
    mb = 1024 * 1024
    nproc = _nproc_limit(limits.max_procs)
    rlimits = [
        "prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_mb * mb}",
        f"--fsize={limits.file_mb * mb}", f"--nproc={nproc}", "--core=0", "--",
    ]  # fmt: skip
    hide = [str(h) for h in hidden if h.exists() and not scratch.is_relative_to(h)]
    home, shown, scratch = _home_args(confine, scratch)
    cmd = [
        "unshare", "-r", "-m", "-p", *([] if confine.net else ["-n"]), "--fork",
        "--kill-child", "--mount-proc", "sh", "-c", _SETUP, "sh", str(scratch), home,
        "0" if confine.net else "1", *shown, "--", *hide, "--", *rlimits, *argv,
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
    return [ctx.kernel.settings.data_dir, Path(user_config_dir("llmos")), config_file_path()]


@syscall("shell.exec", risk="high")
async def shell_exec(ctx: Context, command: str, timeout_s: float = 10.0) -> ExecResult:
    """Run a shell command in a sandbox (read-only filesystem but a scratch dir, no network
    without capability `net`, home hidden but `host.read:PATH/**` grants, rlimits, timeout,
    scrubbed environment). Needs approval."""
    return await run_sandboxed(
        ["sh", "-c", command], scratch=scratch_dir(ctx), hidden=_kernel_files(ctx),
        limits=_limits(ctx, timeout_s), confine=Confinement.for_caps(ctx.process.caps),
    )  # fmt: skip


@syscall("python.exec", risk="high")
async def python_exec(ctx: Context, code: str, timeout_s: float = 10.0) -> ExecResult:
    """Run Python code in the same sandbox as shell.exec. Needs approval."""
    return await run_sandboxed(
        [sys.executable, "-I", "-c", code], scratch=scratch_dir(ctx), hidden=_kernel_files(ctx),
        limits=_limits(ctx, timeout_s), confine=Confinement.for_caps(ctx.process.caps),
    )  # fmt: skip
