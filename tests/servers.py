"""A third-party server run by a test: a subprocess on loopback, waited for and always ended."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def log_tail(log: Path, lines: int = 30) -> str:
    text = log.read_text("utf-8", "replace") if log.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def server_process(
    cmd: list[str], health: str, log: Path, *, what: str, within_s: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd` with its output in the file `log` (never a pipe that could fill and block
    it) and wait until GET `health` answers 200. The test fails with the log's tail when the
    process exits first or `within_s` passes. The process is always ended: terminated, and
    killed if that has not ended it within 10 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + within_s
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"{what} exited with {proc.returncode} before answering:\n{log_tail(log)}",
                    pytrace=False,
                )
            try:
                if httpx.get(health, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what} did not answer {health} within {within_s:.0f} s:\n{log_tail(log)}",
                    pytrace=False,
                )
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
