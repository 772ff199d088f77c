"""A worker process speaking JSON lines: the job on its stdin, events on its stdout.

Long native work (llama.cpp's quantizer, torch training) runs in a process of its own, so
the kernel or shell that asked stays responsive, a kill ends the work at once, and a crash
in native code takes down only the worker. Each worker module (`quantize_worker`,
`finetune_worker`) reads one JSON job from stdin and writes JSON events, one per line,
ending with `{"event": "done", ...}` or `{"event": "error", "message": ...}`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from llmos.errors import ModelError

Event = dict[str, Any]


class Worker:
    """A started worker (`python -m MODULE`) and its event stream."""

    def __init__(self, what: str, proc: subprocess.Popen[str], stderr: IO[bytes]) -> None:
        self.what = what
        self.proc = proc
        self.stderr = stderr

    @classmethod
    def start(cls, module: str, what: str, env: dict[str, str] | None = None) -> Worker:
        full = dict(os.environ, **(env or {}))
        # the worker imports llmos from where this process did, installed or not
        root = str(Path(__file__).resolve().parents[2])
        full["PYTHONPATH"] = os.pathsep.join(filter(None, [root, full.get("PYTHONPATH")]))
        # stderr goes to an unnamed file, read only if the worker dies: a pipe would need
        # a thread to drain it, and starting one costs more than the file
        stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            text=True, bufsize=1, env=full,
        )  # fmt: skip
        return cls(what, proc, stderr)

    def run(self, job: dict[str, Any], on_event: Callable[[Event], None]) -> Event:
        """Send the job; hand every event but the last to `on_event`; return the `done`
        event. An `error` event, or a worker that dies, is a `ModelError`."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died booting; the exit status below says how
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "done":
                return dict(event)
            if event["event"] == "error":
                raise ModelError(str(event["message"]))
            on_event(event)
        rc = self.proc.wait()
        raise ModelError(f"the {self.what} worker died (exit status {rc}): {self.last_error()}")

    def last_error(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else "no message"

    def close(self) -> None:
        """Stop the worker if it still runs (a failed check, an error, a kill, Ctrl-C)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None and not self.proc.stdin.closed:
                    self.proc.stdin.close()  # a worker still booting then exits by itself
            try:
                self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
