"""The memory endpoints over the real memory filesystem (SQLite + Chroma + MiniLM) through
the REST API: semantic search and qa as a client sees them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmos.memory.index import Embedder
from tests.test_server import serve_scripted


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm: Embedder) -> Iterator[tuple[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMOS_CONFIG", str(tmp_path_factory.mktemp("cfg") / "none.toml"))
        with serve_scripted(tmp_path_factory.mktemp("mem"), embedder=minilm) as s:
            yield s


def test_write_read_ls_search_rm(server: tuple[str, Any]) -> None:
    url = server[0]
    notes = {
        "/home/api/notes/tea.txt": "Green tea is steeped at eighty degrees for two minutes.",
        "/home/api/notes/bikes.txt": "A bicycle chain needs oil every few hundred kilometres.",
    }
    for path, text in notes.items():
        r = httpx.put(f"{url}/v1/fs/write", json={"path": path, "content": text}, timeout=120)
        assert r.status_code == 200, r.text
    r = httpx.get(f"{url}/v1/fs/read", params={"path": "/home/api/notes/tea.txt"})
    assert r.json()["content"] == notes["/home/api/notes/tea.txt"]
    entries = httpx.get(f"{url}/v1/fs/ls", params={"path": "/home/api/notes"}).json()["entries"]
    assert sorted(e["path"] for e in entries) == sorted(notes)
    hits = httpx.post(
        f"{url}/v1/fs/search", json={"query": "how to brew tea", "k": 2}, timeout=120
    ).json()["results"]
    assert hits[0]["path"] == "/home/api/notes/tea.txt"
    r = httpx.post(f"{url}/v1/qa", json={"question": "How is green tea steeped?"}, timeout=300)
    assert r.status_code == 200, r.text
    answer = r.json()["answer"]
    assert isinstance(answer, dict) and answer, answer  # RetrievalQA over memory, cited
    r = httpx.delete(f"{url}/v1/fs/rm", params={"path": "/home/api/notes/tea.txt"})
    assert r.status_code == 200, r.text
    r = httpx.get(f"{url}/v1/fs/read", params={"path": "/home/api/notes/tea.txt"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    r = httpx.get(f"{url}/v1/fs/read", params={"path": "/../etc/passwd"})
    assert r.status_code in (400, 404)
