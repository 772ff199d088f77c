"""The layout docs/DEPLOY.md describes, end to end on loopback: one Chroma server
(`chroma run`), a model box (an `llmos serve` that serves the model), and two `llmos serve`
kernels, each with its own data dir, the model box as a remote model behind a route with
their own local model as the fallback, and the shared index. Everything goes through the
two kernels' REST APIs, as their clients would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from llmos.config import load_settings
from llmos.kernel.models import DEFAULT_MODEL, ModelLibrary
from llmos.kernel.remote import remote_meta
from llmos.memory.index import Embedder
from llmos.server import BackgroundServer, create_app
from tests.conftest import scripted_factory
from tests.test_memory_shared_index import NOTES, Counting, _chroma_server


def _kernel_app(data: Path, chroma: str, box: str, embedder: Any) -> Any:
    settings = load_settings(
        data_dir=data, chroma_url=chroma, routes={"auto": ["box", DEFAULT_MODEL]},
        approvals={"fs.mount": "allow"}, remote_retries=0, remote_probe_s=60,
    )  # fmt: skip
    ModelLibrary(settings.data_dir).add_remote(
        "box", remote_meta(box, DEFAULT_MODEL, key_env=None, parallel=2, n_ctx=4096)
    )
    return create_app(settings, backend_factory=scripted_factory(), embedder=embedder)


def _chat(http: httpx.Client, model: str, text: str) -> tuple[str, dict[str, Any]]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 30}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    proc = http.get(f"/v1/processes/{r.headers['x-llmos-pid']}").json()
    return str(r.json()["choices"][0]["message"]["content"]), proc


def test_two_kernels_a_model_box_and_one_chroma_server(tmp_path: Path, minilm: Embedder) -> None:
    host = tmp_path / "notes"
    host.mkdir()
    for name, text in NOTES.items():
        (host / name).write_text(text)
    emb_a, emb_b = Counting(minilm), Counting(minilm)
    box_app = create_app(
        load_settings(data_dir=tmp_path / "box"), backend_factory=scripted_factory()
    )
    (tmp_path / "chroma").mkdir()
    with _chroma_server(tmp_path / "chroma") as chroma:
        box = BackgroundServer(box_app)
        box_url = box.start()
        try:
            app_a = _kernel_app(tmp_path / "a", chroma, box_url, emb_a)
            app_b = _kernel_app(tmp_path / "b", chroma, box_url, emb_b)
            with BackgroundServer(app_a) as a, BackgroundServer(app_b) as b:
                http_a = httpx.Client(base_url=a, timeout=120)
                http_b = httpx.Client(base_url=b, timeout=120)
                # the model box answers both kernels' clients, by name and through the route
                text, proc = _chat(http_a, "box", "from a")
                assert text == "You said: from a" and proc["served_by"] == "box"
                text, proc = _chat(http_b, "auto", "from b")
                assert text == "You said: from b" and proc["route"] == "route auto: box"

                # one corpus, mounted in both: the second kernel embeds none of it again
                mount = {"args": {"host": str(host), "name": "notes"}}
                assert http_a.post("/v1/syscalls/fs.mount", json=mount).status_code == 200
                embedded = emb_a.texts
                assert embedded >= len(NOTES)
                assert http_b.post("/v1/syscalls/fs.mount", json=mount).status_code == 200
                assert emb_b.texts == 0  # none of the corpus embedded again
                for http in (http_a, http_b):
                    r = http.post("/v1/fs/search", json={"query": "orchid watering", "k": 1})
                    assert r.status_code == 200, r.text
                    assert r.json()["results"][0]["path"] == "/mnt/notes/garden.md"

                # the model box goes away: the route falls back to each kernel's own model
                box.stop()
                text, proc = _chat(http_a, "auto", "still here")
                assert text == "You said: still here" and proc["served_by"] == DEFAULT_MODEL
                assert proc["route"] == "route auto: box; box failed"
                http_a.close()
                http_b.close()
        finally:
            box.stop()
