"""`fsck` after a crash, against the embedding bound, measured in the same run.

The crash state: N files written and acknowledged (content, version and index-journal rows
committed in SQLite) while the index was told about none of them, as when `llmos serve`
is killed with -9 in the middle of a write burst: a tenth of the files were indexed once
and then rewritten (their index entries are stale), the rest were never indexed (missing).
fsck replays the journal: every file's chunks are embedded and stored.

- fsck: seconds, files/s, chunks/s;
- baseline: `Embedder.embed` alone on exactly the chunks fsck embeds, in batches (what no
  repair can beat: the other side of the ratio);
- ratio fsck time / embed time (how close fsck comes to the embedding bound; 1.0x is the floor).

The baseline runs before and after fsck, and the ratio takes their mean, as this machine's
speed drifts over minutes.

Usage: python benchmarks/bench_fsck.py [--files 10000] [--size 400]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import prose


def note(rng: random.Random, size: int, tag: str) -> str:
    return prose(rng, size, first=tag)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--size", type=int, default=400, help="characters per file")
    ap.add_argument("--stale", type=float, default=0.1, help="share indexed, then rewritten")
    a = ap.parse_args()

    from llmos.memory.fs import MemoryFS
    from llmos.memory.index import Embedder, chunk_text

    rng = random.Random(11)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fsck-"))
    embedder = Embedder()
    embedder.embed(["warm up the model"] * 32)

    paths = [f"/home/w/d{i // 500:02d}/n{i:05d}.md" for i in range(a.files)]
    n_stale = int(a.files * a.stale)
    fs = MemoryFS(tmp / "mem", embedder=embedder)
    # Set-up, not measured: one transaction per side (an fsync per write would take minutes).
    with fs.store.tx() as c:
        for p in paths[:n_stale]:
            fs.store.put(c, p, note(rng, a.size, "old"), "root")
    fs.sync_index()  # these were indexed once...
    with fs.store.tx() as c:
        for p in paths:  # ...then rewritten, with all the others written for the first time
            fs.store.put(c, p, note(rng, a.size, "new"), "root")
    fs.close()  # the crash: the journal still names every path, the index is behind

    truth = MemoryFS(tmp / "mem", embedder=embedder)
    chunks = [piece for p in paths for piece in chunk_text(truth.read(p))]

    def encode() -> float:
        t0 = time.perf_counter()
        embedder.embed(chunks)
        return time.perf_counter() - t0

    t_before = encode()
    fs = truth
    _ = fs.index  # open Chroma outside the timing, as a booted kernel has
    embedded0 = fs.index.embedded_chunks
    t0 = time.perf_counter()
    report = fs.fsck()
    t_fsck = time.perf_counter() - t0
    embedded = fs.index.embedded_chunks - embedded0
    t_after = encode()
    assert embedded == len(chunks), (embedded, len(chunks))
    assert fs.index.count() == len(chunks), (fs.index.count(), len(chunks))
    again = fs.fsck()
    assert again["reindexed"] == again["replayed"] == 0, again

    t_embed = (t_before + t_after) / 2
    n = len(chunks)
    print(f"files {a.files} x {a.size} chars ({n_stale} stale, {a.files - n_stale} missing) "
          f"-> {n} chunks; fsck report {report}")  # fmt: skip
    print(f"embed alone      : {t_embed:7.1f} s  {n / t_embed:6.1f} chunks/s  "
          f"(before {t_before:.1f} s, after {t_after:.1f} s)")  # fmt: skip
    print(f"fsck             : {t_fsck:7.1f} s  {n / t_fsck:6.1f} chunks/s  "
          f"{a.files / t_fsck:6.1f} files/s")  # fmt: skip
    print(f"ratio fsck/embed (time): {t_fsck / t_embed:.2f}x")


if __name__ == "__main__":
    main()
