"""`/proc`: a read-only view of a kernel's processes, computed on every access.

    /proc/<pid>/          one directory per process in the kernel's table
    /proc/<pid>/status    `key:<TAB>value` lines (name, state, nice, model, tokens, exit code...)
    /proc/<pid>/stdout    what the process printed (its in-memory buffer)
    /proc/<pid>/stderr    its diagnostics: crash traceback, kill reasons (in-memory buffer)

Nothing is stored: SQLite holds only the `/proc` directory itself, so the view can never go
stale and a crash leaves nothing to clean up. `MemoryFS` asks its `proc` view (set by
`kernel.memory`) for any path below `/proc`; writes there fail as for every read-only
path. `status` is readable by all; `stdout` and `stderr` only by the process itself (its name)
and root.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from llmos.core.process import Process
from llmos.memory.paths import is_under
from llmos.memory.stat import Stat

PROC = "/proc"
FILES = {"status": 0o444, "stdout": 0o400, "stderr": 0o400}


def format_status(info: dict[str, Any], caps: Iterable[str] = ()) -> str:
    """A process's `info()` as `key:\\tvalue` lines, in its own key order (None is `-`)."""
    lines = []
    for key, value in info.items():
        if value is None:
            text = "-"
        elif isinstance(value, list):
            text = " ".join(str(v) for v in value) or "-"
        elif isinstance(value, float):
            text = f"{value:.3f}"
        else:
            text = str(value)
        lines.append(f"{key}:\t{text}")
    lines.append(f"caps:\t{' '.join(sorted(caps)) or '-'}")
    return "\n".join(lines) + "\n"


class ProcView:
    """The `/proc` subtree over a source of processes (a kernel's table)."""

    def __init__(
        self, processes: Callable[[], dict[int, Process]], clock: Callable[[], float] = time.time
    ) -> None:
        self._processes = processes
        self._clock = clock

    @classmethod
    def of_kernel(cls, kernel: Any) -> ProcView:
        return cls(lambda: dict(kernel.procs))

    # -- lookups -------------------------------------------------------------------------
    @staticmethod
    def covers(path: str) -> bool:
        """Whether `path` is below `/proc` (the directory itself lives in SQLite)."""
        return path != PROC and is_under(path, PROC)

    def _split(self, path: str) -> tuple[Process | None, str | None]:
        """(process, file name or None for its directory); (None, _) if there is none."""
        parts = path[len(PROC) + 1 :].split("/")
        if len(parts) > 2 or not parts[0].isdigit():
            return None, None
        proc = self._processes().get(int(parts[0]))
        if proc is None:
            return None, None
        if len(parts) == 1:
            return proc, None
        return (proc, parts[1]) if parts[1] in FILES else (None, None)

    def content(self, proc: Process, name: str) -> str:
        if name == "status":
            return format_status(proc.info(), proc.caps)
        return (proc.stderr if name == "stderr" else proc.stdout).getvalue()

    def stat(self, path: str) -> Stat | None:
        proc, name = self._split(path)
        if proc is None:
            return None
        mtime = proc.ended or self._clock()
        if name is None:
            return Stat(path, "dir", proc.name, 0o555, 0, 0, proc.started, True)
        size = len(self.content(proc, name))
        return Stat(path, "file", proc.name, FILES[name], size, 0, mtime, True)

    def read(self, path: str) -> str | None:
        proc, name = self._split(path)
        if proc is None or name is None:
            return None
        return self.content(proc, name)

    def entries(self, path: str) -> list[Stat]:
        """The children of `/proc` or of `/proc/<pid>` (empty for anything else)."""
        if path == PROC:
            pids = sorted(self._processes())
            found = (self.stat(f"{PROC}/{pid}") for pid in pids)
        else:
            proc, name = self._split(path)
            if proc is None or name is not None:
                return []
            found = (self.stat(f"{path}/{f}") for f in FILES)
        return [s for s in found if s is not None]

    def walk(self, root: str) -> list[Stat]:
        """Every node of the view under `root` (`/`, `/proc`, or a path inside it)."""
        if not (is_under(root, PROC) or is_under(PROC, root)):
            return []
        out: list[Stat] = []
        for d in self.entries(PROC):
            for s in [d, *self.entries(d.path)]:
                if is_under(s.path, root):
                    out.append(s)
        return out
