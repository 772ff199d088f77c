"""Progress of long work (mount, fsck, model loads) on stderr, at a terminal or not.

At a terminal: a rich bar per phase. Elsewhere (redirected to a file, under a service
manager, in CI): one plain line per phase every `every_s` seconds, with the counts and the
rate, and a last one when the phase ends. A bar drawn to a file shows nothing until the end,
and an fsck of thousands of files once ran silent for minutes that way. Work shorter than
`every_s` prints no line (unless asked with `final=True`), so quick commands stay quiet and
their output stays machine-readable.

    with Reporter.for_flag(None, LABELS) as rep:
        fs.watch(rep.update)          # update(phase, done, total), from any thread
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TextIO

Mode = Literal["bar", "lines", "off"]

# phase -> (label, unit); unit "%" means done/total is a fraction shown as a percentage
LABELS: dict[str, tuple[str, str]] = {
    "read": ("reading files", "files"),
    "index": ("indexing chunks", "chunks"),
    "load": ("loading model", "%"),
}


@dataclass
class _Phase:
    started: float
    first_done: float
    last_line: float
    done: float = 0
    total: float = 0
    lines: int = 0
    ended: bool = False


class Reporter:
    """A context manager fed by `update(phase, done, total)` (thread-safe).

    `mode`: "bar" (rich, for a terminal), "lines" (plain periodic lines), "off".
    `clock`: seconds, monotonic (injected in tests). `transient`: a bar is cleared at the
    end (a model load's, before the answer streams)."""

    def __init__(
        self,
        mode: Mode,
        labels: dict[str, tuple[str, str]] | None = None,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 2.0,
        final: bool = False,
        transient: bool = False,
    ) -> None:
        self.mode = mode
        self.labels = labels if labels is not None else LABELS
        self._stream = stream
        self._clock = clock
        self.every_s = every_s
        self.final = final
        self.transient = transient
        self._phases: dict[str, _Phase] = {}
        self._lock = threading.Lock()
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    @classmethod
    def for_flag(
        cls, flag: bool | None, labels: dict[str, tuple[str, str]] | None = None, **kw: Any
    ) -> Reporter:
        """The reporter a `--progress/--no-progress` flag asks for: off when False; else a
        bar at a terminal and lines elsewhere (with the end line always when asked for
        explicitly, only after long work by default)."""
        if flag is False:
            return cls("off", labels, **kw)
        tty = sys.stderr.isatty()
        return cls("bar" if tty else "lines", labels, final=bool(flag), **kw)

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    # -- the context -----------------------------------------------------------------
    def __enter__(self) -> Reporter:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description:16}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(file=self.stream),
                transient=self.transient,
            )
            self._bar.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)
            self._bar = None
            return
        if self.mode == "lines":
            with self._lock:  # a phase cut short still gets its last line, if it had any
                for phase, st in self._phases.items():
                    if not st.ended and (st.lines or self.final):
                        self._line(phase, st, self._clock())

    # -- feeding -----------------------------------------------------------------------
    def update(self, phase: str, done: float, total: float) -> None:
        if self.mode == "off":
            return
        if self.mode == "bar":
            self._update_bar(phase, done, total)
            return
        with self._lock:
            now = self._clock()
            st = self._phases.get(phase)
            if st is None:
                st = self._phases[phase] = _Phase(started=now, first_done=done, last_line=now)
            st.done, st.total = done, total
            if total and done >= total:
                if not st.ended and (st.lines or self.final):
                    self._line(phase, st, now)
                st.ended = True
            elif now - st.last_line >= self.every_s:
                self._line(phase, st, now)

    def fraction(self, phase: str) -> Callable[[float], None]:
        """A `progress(fraction)` callback (a model load's) feeding `phase` in percent."""
        return lambda f: self.update(phase, round(max(0.0, min(1.0, f)) * 100), 100)

    def _update_bar(self, phase: str, done: float, total: float) -> None:
        with self._lock:
            if self._bar is None:
                return
            if phase not in self._tasks:
                label = self.labels.get(phase, (phase, ""))[0]
                self._tasks[phase] = self._bar.add_task(label, total=total)
            self._bar.update(self._tasks[phase], completed=done, total=total)

    def _line(self, phase: str, st: _Phase, now: float) -> None:
        label, unit = self.labels.get(phase, (phase, "items"))
        elapsed = now - st.started
        if unit == "%":
            text = f"{label}: {st.done / (st.total or 1):.0%}, {elapsed:.0f} s"
        else:
            pct = f" ({st.done / st.total:.0%})" if st.total else ""
            rate = (st.done - st.first_done) / elapsed if elapsed > 0 else 0.0
            text = (
                f"{label}: {st.done:,.0f}/{st.total:,.0f}{pct}, "
                f"{rate:,.1f} {unit}/s, {elapsed:.0f} s"
            )
        self.stream.write(text + "\n")
        self.stream.flush()
        st.lines += 1
        st.last_line = now
