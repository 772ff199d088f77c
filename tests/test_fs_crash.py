"""kill -9 a writer mid-stream: every acknowledged write survives, and fsck mends the index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from llmos.memory.fs import MemoryFS
from llmos.memory.index import Embedder
from llmos.memory.store import sha256

WRITER = textwrap.dedent(
    """
    import sys
    from llmos.memory.fs import MemoryFS
    fs = MemoryFS(sys.argv[1])
    i = 0
    while True:
        path = f"/home/w/f{i % 37}.md"
        body = f"entry {i} " + "x" * (i % 300)
        fs.append(path, body + "\\n") if i % 3 else fs.write(path, body + "\\n")
        print(i, path, flush=True)  # the acknowledgement: after the commit returned
        if i % 10 == 9:
            fs.sync_index()  # so the kill may land between content and index
            print("synced", flush=True)
        i += 1
    """
)


def test_sigkill_writer_loses_nothing_acknowledged(tmp_path: Path, minilm: Embedder) -> None:
    # (the writer process indexes with MiniLM too: `minilm` marks this test `torch`)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.stdout is not None
    acked: list[tuple[int, str]] = []
    syncs = 0
    for line in proc.stdout:
        if line.startswith("synced"):
            syncs += 1
        else:
            i, path = line.split()
            acked.append((int(i), path))
        if syncs >= 3 and len(acked) >= 45:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # Replay the model of what the writer acknowledged.
    # Replay the model of what the writer acknowledged: each path's versions in order.
    want: dict[str, list[str]] = {}
    for i, path in acked:
        body = f"entry {i} " + "x" * (i % 300) + "\n"
        versions = want.setdefault(path, [])
        versions.append((versions[-1] + body) if (i % 3 and versions) else body)

    fs = MemoryFS(tmp_path, embedder=minilm)
    for path, versions in want.items():
        # the writer ran on past its last acknowledgement: later versions may exist too
        got = [fs.read_version(path, v) for v in range(1, len(versions) + 1)]
        assert got == versions, path
    report = fs.fsck()
    assert fs.pending() == 0
    assert report["files"] >= len(want)
    truth = {s.path: sha256(fs.read(s.path)) for s in fs.ls("/home/w")}
    assert fs.index.indexed() == truth
    assert fs.fsck() == {**report, "replayed": 0, "reindexed": 0, "orphans": 0}
