"""The CLI's progress reporter: plain periodic lines when stderr is not a terminal, on an
injected clock (no sleeping, no timing asserts)."""

from __future__ import annotations

import io
import sys

import pytest

from llmos.cli.progress import Reporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_interval_and_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    with Reporter("lines", stream=out, clock=clock, every_s=2.0) as rep:
        rep.update("index", 0, 1000)  # the phase starts
        clock.now += 1.0
        rep.update("index", 100, 1000)
        assert out.getvalue() == ""  # under 2 s: nothing yet
        clock.now += 1.5
        rep.update("index", 250, 1000)
        clock.now += 0.5
        rep.update("index", 300, 1000)  # 0.5 s after the last line: quiet
        clock.now += 2.0
        rep.update("index", 500, 1000)
        clock.now += 1.0
        rep.update("index", 1000, 1000)  # the end: its line at once
        rep.update("index", 1000, 1000)  # (said once)
    assert out.getvalue().splitlines() == [
        "indexing chunks: 250/1,000 (25%), 100.0 chunks/s, 2 s",
        "indexing chunks: 500/1,000 (50%), 100.0 chunks/s, 5 s",
        "indexing chunks: 1,000/1,000 (100%), 166.7 chunks/s, 6 s",
    ]


def test_short_work_is_quiet_unless_asked() -> None:
    out, clock = io.StringIO(), Clock()
    with Reporter("lines", stream=out, clock=clock) as rep:
        rep.update("read", 1, 3)
        clock.now += 0.1
        rep.update("read", 3, 3)
    assert out.getvalue() == ""  # a quick command's output stays what it was
    with Reporter("lines", stream=out, clock=clock, final=True) as rep:  # --progress
        rep.update("read", 1, 3)
        clock.now += 0.5
        rep.update("read", 3, 3)
    assert out.getvalue() == "reading files: 3/3 (100%), 4.0 files/s, 0 s\n"


def test_a_phase_cut_short_gets_its_last_line_and_fractions_show_percent() -> None:
    out, clock = io.StringIO(), Clock()
    with Reporter("lines", stream=out, clock=clock) as rep:
        load = rep.fraction("load")
        load(0.0)
        clock.now += 3.0
        load(0.4)
        clock.now += 1.0
        load(0.5)
    assert out.getvalue().splitlines() == ["loading model: 40%, 3 s", "loading model: 50%, 4 s"]


def test_off_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    out, clock = io.StringIO(), Clock()
    with Reporter("off", stream=out, clock=clock) as rep:
        rep.update("index", 0, 10)
        clock.now += 10
        rep.update("index", 10, 10)
    assert out.getvalue() == ""
    assert Reporter.for_flag(False).mode == "off"
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert Reporter.for_flag(None).mode == "lines"
