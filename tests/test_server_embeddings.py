"""`/v1/embeddings` serves the kernel's embedder, the one its memory FS indexes with: one
embedder per kernel, following the `embed_model` setting, not a second MiniLM of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.test_server import serve_scripted


def test_embeddings_come_from_the_kernels_embedder(tmp_path: Path, hash_embedder: Any) -> None:
    texts = ["green tea at eighty degrees", "oil for a bicycle chain"]
    with serve_scripted(tmp_path, embedder=hash_embedder) as (url, app):
        kernel = app.state.api.kernel
        r = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60)
        assert r.status_code == 200, r.text
        got = [d["embedding"] for d in r.json()["data"]]
        want = hash_embedder.embed(texts).tolist()
        assert len(got) == 2 and all(
            abs(a - b) < 1e-6
            for g, w in zip(got, want, strict=True)
            for a, b in zip(g, w, strict=True)
        )
        # the memory FS indexes with that same object: a search embeds through it too
        assert kernel.embedder is hash_embedder
        assert kernel.memory.index.embedder is hash_embedder
