"""End to end: `python -m llmos shell` in a pseudo-terminal with the real default model.

A question is typed as keystrokes and the answer is read off the screen, through a small
terminal emulator below (cursor moves and text; styles ignored), so CI needs no tmux.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROWS, COLS = 30, 110
CSI = re.compile(rb"\x1b\[([0-9;?<=>]*)([ -/]*)([@-~])")
OSC = re.compile(rb"\x1b\].*?(?:\x07|\x1b\\)", re.S)


class Screen:
    """Just enough of a VT100 to know which text is where."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.grid = [[" "] * cols for _ in range(rows)]
        self.y = self.x = 0
        self.pending = b""

    def feed(self, data: bytes) -> None:
        data = self.pending + data
        self.pending = b""
        i = 0
        text = bytearray()
        while i < len(data):
            b = data[i]
            if b == 0x1B:
                self._put(text)
                text.clear()
                m = CSI.match(data, i) or OSC.match(data, i)
                if m is None:
                    if i + 1 >= len(data) or (data[i + 1] in b"[]" and len(data) - i < 64):
                        self.pending = data[i:]  # a sequence cut by the read: wait for more
                        return
                    i += 2  # a two-byte escape (charset, keypad mode)
                    continue
                if m.re is CSI:
                    self._csi(m.group(1).decode(), m.group(3).decode())
                i = m.end()
            elif b in (0x0D, 0x0A, 0x08):
                self._put(text)
                text.clear()
                if b == 0x0D:
                    self.x = 0
                elif b == 0x0A:
                    self.y = min(self.rows - 1, self.y + 1)
                else:
                    self.x = max(0, self.x - 1)
                i += 1
            else:
                text.append(b)
                i += 1
        self._put(text)

    def _put(self, raw: bytearray) -> None:
        if not raw:
            return
        for ch in raw.decode("utf-8", "replace"):
            if ch.isprintable() and self.x < self.cols:
                self.grid[self.y][self.x] = ch
                self.x += 1

    def _csi(self, params: str, final: str) -> None:
        nums = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []
        if final in "Hf":
            row = nums[0] if nums else 1
            col = nums[1] if len(nums) > 1 else 1
            self.y = min(self.rows - 1, max(0, row - 1))
            self.x = min(self.cols - 1, max(0, col - 1))
        elif final == "J" and nums[:1] == [2]:
            self.grid = [[" "] * self.cols for _ in range(self.rows)]
        elif final == "C":
            self.x = min(self.cols - 1, self.x + (nums[0] if nums else 1))

    def lines(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.grid]

    def text(self) -> str:
        return "\n".join(self.lines())


def _read(fd: int, screen: Screen, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            return
        if not chunk:
            return
        screen.feed(chunk)


def _until(fd: int, screen: Screen, pattern: str, timeout: float) -> re.Match[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(pattern, screen.text())
        if m:
            return m
        _read(fd, screen, 0.2)
    raise AssertionError(f"{pattern!r} never appeared; the screen:\n{screen.text()}")


def start_shell(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", LLMOS_DATA_DIR=str(tmp_path / "data"))
    env.pop("TEXTUAL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmos", "shell", *extra],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    os.close(slave)
    return proc, master


@pytest.mark.real_model
def test_real_shell_in_a_terminal_answers_a_question(tmp_path: Path, real_model_path: Any) -> None:
    proc, fd = start_shell(tmp_path)
    screen = Screen(ROWS, COLS)
    try:
        _until(fd, screen, r"ask something, or type help", 60)
        os.write(fd, b"What is the capital of Japan?\r")
        _until(fd, screen, r"> What is the capital of Japan\?", 60)
        _until(fd, screen, r"pid \d+ (done|failed|stopped)", 240)
        lines = screen.lines()
        # A long answer scrolls the question off the screen: then every log line is answer.
        asked = next((i for i, ln in enumerate(lines) if "> What is the capital of" in ln), -1)
        answer = " ".join(
            ln.strip("│ ")
            for ln in lines[asked + 1 :]
            if ln.startswith("│") and not re.search(r"pid \d+|ask something", ln)
        )
        assert re.search(r"pid \d+ done", screen.text()), screen.text()
        assert len(answer.split()) >= 3, screen.text()  # sampled text: its length, not words
        os.write(fd, b"\x11")  # Ctrl+Q
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(fd)
