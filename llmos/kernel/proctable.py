"""The persistent process table and audit log (SQLite, under the data dir).

In memory the kernel keeps live `Process` objects; this table keeps their history so it
survives a restart. A row still marked alive when a kernel boots belonged to a kernel that
died: it is marked `lost` and can be restarted (if its program is a named one).

Audit rows are buffered and written in batches: one syscall costs a list append, not a
disk transaction. `flush()` runs at 512 rows, on every process exit, on `audit_rows()`, at
shutdown, and once the oldest buffered row is `AUDIT_MAX_AGE_S` old (when the next row
comes, or from a timer on the running event loop), so a crash loses about a second of audit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.core.syscall import AuditRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS procs (
    boot INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    name TEXT NOT NULL,
    program TEXT,
    args TEXT,
    parent INTEGER,
    caps TEXT,
    budgets TEXT,
    model TEXT,
    state TEXT NOT NULL,
    exit_code INTEGER,
    exit_reason TEXT,
    started REAL,
    ended REAL,
    log_path TEXT,
    PRIMARY KEY (boot, pid)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    boot INTEGER NOT NULL,
    ts REAL NOT NULL,
    pid INTEGER,
    syscall TEXT NOT NULL,
    args_digest TEXT,
    outcome TEXT NOT NULL,
    duration_s REAL
);
CREATE TABLE IF NOT EXISTS boots (boot INTEGER PRIMARY KEY, started REAL, os_pid INTEGER);
"""

ALIVE_STATES = ("new", "ready", "running", "blocked", "stopped")
AUDIT_MAX_AGE_S = 1.0


class ProcTable:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._closed = False
        # Wall-clock time (rows are read across kernels and restarts); a test passes its own
        # to age the audit buffer without waiting.
        self._clock = clock
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        cols = {row[1] for row in self.db.execute("PRAGMA table_info(boots)")}
        if "os_pid" not in cols:  # a table from before boots recorded their OS process
            self.db.execute("ALTER TABLE boots ADD COLUMN os_pid INTEGER")
        self._audit: list[tuple[Any, ...]] = []
        self._audit_timer: asyncio.TimerHandle | None = None
        cur = self.db.execute(
            "INSERT INTO boots (started, os_pid) VALUES (?, ?)", (self._clock(), os.getpid())
        )
        assert cur.lastrowid is not None
        self.boot = cur.lastrowid
        # Whatever an earlier kernel left alive died with it, unless that kernel still runs
        # (`llmos serve` and a one-shot `llmos agent` may share the data dir).
        marks = ",".join("?" * len(ALIVE_STATES))
        boots = self.db.execute(
            "SELECT DISTINCT b.boot, b.os_pid FROM procs p JOIN boots b ON p.boot = b.boot"
            f" WHERE p.state IN ({marks})",
            ALIVE_STATES,
        ).fetchall()
        for boot, os_pid in boots:
            if _running(os_pid) and boot != self.boot:
                continue
            self.db.execute(
                "UPDATE procs SET state='lost', exit_reason='kernel died'"
                f" WHERE boot=? AND state IN ({marks})",
                (boot, *ALIVE_STATES),
            )

    # -- processes ----------------------------------------------------------------------
    def upsert(self, p: Any) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO procs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                self.boot, p.pid, p.name, p.program_ref, _json(p.args), p.parent,
                _json(sorted(p.caps)), _json(vars(p.budgets)), p.model, p.state.value,
                p.exit_code, p.exit_reason, p.started, p.ended,
                str(p.log_path) if p.log_path else None,
            ),
        )  # fmt: skip

    def history(self, *, limit: int = 100) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM procs ORDER BY started DESC LIMIT ?", (limit,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def row(self, pid: int) -> dict[str, Any] | None:
        """This boot's row for `pid`, if any."""
        cur = self.db.execute("SELECT * FROM procs WHERE boot=? AND pid=?", (self.boot, pid))
        found = cur.fetchone()
        return (
            None
            if found is None
            else dict(zip([c[0] for c in cur.description], found, strict=True))
        )

    def lost(self) -> list[dict[str, Any]]:
        return [r for r in self.history(limit=1_000_000) if r["state"] == "lost"]

    def mark(self, boot: int, pid: int, state: str) -> None:
        self.db.execute("UPDATE procs SET state=? WHERE boot=? AND pid=?", (state, boot, pid))

    # -- audit --------------------------------------------------------------------------
    def audit(self, rec: AuditRecord) -> None:
        now = self._clock()
        rows = self._audit
        rows.append(
            (self.boot, now, rec.pid, rec.name, rec.args_digest, rec.outcome, rec.duration_s)
        )  # fmt: skip
        if len(rows) == 1:
            self._arm_timer()
        elif len(rows) >= 512 or now - rows[0][1] >= AUDIT_MAX_AGE_S:
            self.flush()

    def _arm_timer(self) -> None:
        """Flush this batch within AUDIT_MAX_AGE_S even if no further syscall comes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop: the next row or exit flushes
            return
        self._audit_timer = loop.call_later(AUDIT_MAX_AGE_S, self.flush)

    def flush(self) -> None:
        if self._audit_timer is not None:
            self._audit_timer.cancel()
            self._audit_timer = None
        if not self._audit:
            return
        rows, self._audit = self._audit, []
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO audit (boot, ts, pid, syscall, args_digest, outcome, duration_s)"
            " VALUES (?,?,?,?,?,?,?)",
            rows,
        )
        self.db.execute("COMMIT")

    def audit_rows(self, *, pid: int | None = None) -> list[dict[str, Any]]:
        self.flush()
        q = "SELECT * FROM audit WHERE boot=?" + (" AND pid=?" if pid is not None else "")
        params: tuple[Any, ...] = (self.boot, pid) if pid is not None else (self.boot,)
        cur = self.db.execute(q + " ORDER BY id", params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        if self._closed:  # the kernel's shutdown closes it; a test may have already
            return
        self.flush()
        self.db.close()
        self._closed = True


def _running(os_pid: int | None) -> bool:
    """Whether the kernel that wrote a boot row is still alive (not this very process)."""
    if not os_pid or os_pid == os.getpid():
        return False
    try:
        os.kill(os_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json(value: Any) -> str:
    return json.dumps(value, default=repr)
