"""The `eval.*` syscalls and `/v1/eval/*`: capability `eval`, typed errors, the same
perplexity as `llmos.ops.perplexity`, a long run that is a process (in `ps`, ended by KILL
within a chunk, its model closed), and retrieval over the memory FS from a memory-FS file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmos.errors import SyscallError
from llmos.kernel.kernel import Kernel
from llmos.ops.evalstore import EvalRun, EvalStore
from llmos.ops.evalsys import open_eval_progress
from llmos.ops.perplexity import perplexity, shipped_text
from tests.test_server import serve_scripted

CTX = 128


def _text(words: int = 330) -> str:
    """The head of the shipped text: three chunks of 128 tokens on SmolLM2."""
    return " ".join(shipped_text().read_text().split()[:words])


async def _call(k: Kernel, name: str, args: dict[str, Any], caps: list[str]) -> Any:
    """The syscall from a process holding `caps`: its result, or the error's kind."""

    async def prog(ctx: Any) -> Any:
        try:
            return await ctx.call(name, args)
        except SyscallError as exc:
            return (exc.kind, str(exc))

    p = await k.spawn(prog, caps=caps)
    await k.wait(p.pid)
    assert p.error is None, p.error
    return p.result


# Three files and three questions whose hash-embedder ranking is known (as in
# test_eval_tasks.py): with k=2, recall (1, 1, 0.5) and reciprocal rank (1, 0.5, 0.5).
RAG_DOCS = {"a.md": "alpha beta gamma", "b.md": "delta epsilon zeta", "c.md": "eta theta iota"}


def _rag_questions(docs: str) -> str:
    rows = [
        {"question": "alpha beta gamma", "sources": [f"{docs}/a.md"], "references": ["Biscuit"]},
        {"question": "delta epsilon zeta eta", "sources": f"{docs}/c.md"},
        {"question": "alpha beta delta", "sources": [f"{docs}/b.md", f"{docs}/c.md"]},
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def _store(data_dir: Path, *ppls: float) -> list[int]:
    with EvalStore.open(data_dir) as store:
        return [
            store.add(
                EvalRun(
                    kind="perplexity",
                    model=f"m{i}",
                    model_path=f"/m/m{i}.gguf",
                    file="t.txt",
                    file_sha256="ab" * 32,
                    settings={"ctx": 512},
                    scores={"ppl": ppl},
                )
            )
            for i, ppl in enumerate(ppls)
        ]


async def test_eval_needs_its_capability(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    for name in ("eval.perplexity", "eval.run", "eval.rag", "eval.runs", "eval.compare"):
        assert k.syscalls.get(name).capability == "eval"
    denied = await _call(k, "eval.runs", {}, ["llm.*", "proc.*", "fs.*"])
    assert denied[0] == "permission_denied"
    ids = _store(k.settings.data_dir, 21.5, 20.25)
    runs = await _call(k, "eval.runs", {"last": 5}, ["eval"])
    assert [r["id"] for r in runs] == ids and runs[0]["scores"]["ppl"] == 21.5
    both = await _call(k, "eval.compare", {"ids": ids[::-1]}, ["eval"])
    assert [r["model"] for r in both["runs"]] == ["m1", "m0"] and both["comparable"]


async def test_bad_arguments_are_typed(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    cases = [
        ("eval.perplexity", {"model": "x", "ctx": 4}, "ctx"),
        ("eval.perplexity", {"model": "no-such-model"}, "unknown model 'no-such-model'"),
        ("eval.perplexity", {"model": "x", "ctx": 128, "batch": 200}, "--batch 200"),
        ("eval.perplexity", {"model": "x", "text": " \n"}, "is empty"),
        ("eval.compare", {"ids": [99]}, "no eval run 99"),
        ("eval.compare", {"ids": []}, "ids"),
        ("eval.runs", {"last": 0}, "last"),
        ("eval.run", {"tasks": "/etc/passwd"}, "no shipped task set '/etc/passwd'"),
        ("eval.run", {"tasks": "arithmetic", "model": "nope"}, "unknown model 'nope'"),
        ("eval.run", {"tasks": "arithmetic", "max_tokens": 0}, "max_tokens"),
    ]
    for name, args, says in cases:
        kind, message = await _call(k, name, args, ["eval"])
        assert kind == "bad_arguments" and says in message, (name, args, message)
        assert "\n" not in message


async def test_rag_bad_input_is_typed(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    k.memory.write("/home/evals/bad.jsonl", '{"question": "where?"}\n')
    k.memory.write("/home/evals/rag.jsonl", _rag_questions("/home/docs"))
    cases = [
        # a memory-FS path: the host's /etc/passwd is not read
        ({"questions": "/etc/passwd"}, "eval.rag: questions: /etc/passwd: no such file"),
        ({"questions": "/srv/q.jsonl"}, "outside the namespace"),
        ({"questions": "/home/evals"}, "is a directory"),
        ({"questions": "/home/evals/bad.jsonl"}, "/home/evals/bad.jsonl:1: sources must be"),
        ({"questions": "/home/evals/rag.jsonl", "k": 0}, "k"),
        ({"questions": "/home/evals/rag.jsonl", "model": "nope"}, "unknown model 'nope'"),
    ]
    for args, says in cases:
        kind, message = await _call(k, "eval.rag", args, ["eval"])
        assert kind == "bad_arguments" and says in message, (args, message)
        assert "\n" not in message
    # questions that parse, over a scope with nothing in it: said, not scored as zeros
    kind, message = await _call(
        k, "eval.rag", {"questions": "/home/evals/rag.jsonl", "scope": "/mnt"}, ["eval"]
    )
    assert (kind, message) == ("nothing_indexed", "nothing indexed under /mnt")
    with EvalStore.open(k.settings.data_dir) as store:
        assert store.last(5) == []


async def test_rag_through_the_syscall_on_the_real_model(
    settings: Any, real_model_path: Path, hash_embedder: Any
) -> None:
    text = _rag_questions("/home/docs")
    async with Kernel(settings, embedder=hash_embedder) as k:
        for name, content in RAG_DOCS.items():
            k.memory.write(f"/home/docs/{name}", content)
        questions = "/home/evals/rag.jsonl"  # outside the scope: not itself retrieved
        k.memory.write(questions, text)
        args = {"questions": questions, "scope": "/home/docs", "k": 2, "max_tokens": 8}
        got = await _call(k, "eval.rag", args, ["eval"])
        assert isinstance(got, dict), got
        runs = await _call(k, "eval.runs", {}, ["eval"])
    assert [(i["recall"], i["rr"]) for i in got["items"]] == [(1.0, 1.0), (1.0, 0.5), (0.5, 0.5)]
    sc = got["scores"]
    assert sc["recall@2"] == pytest.approx(2.5 / 3) and sc["mrr"] == pytest.approx(2 / 3)
    assert sc["n"] == 3 and sc["answered"] == 1 and sc["errors"] == 0  # the real model answered
    assert isinstance(got["items"][0]["answer"], str) and "answer" not in got["items"][1]
    (run,) = runs
    assert run["id"] == got["run"]["id"] and run["kind"] == "rag"
    assert run["model"] == settings.default_model and run["file"] == "/home/evals/rag.jsonl"
    assert run["file_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert run["settings"]["scope"] == "/home/docs" and run["settings"]["k"] == 2
    assert run["settings"]["embedder"] == hash_embedder.name


async def test_a_shipped_task_set_runs_through_the_syscall(scripted_kernel: Kernel) -> None:
    k = scripted_kernel
    got = await _call(k, "eval.run", {"tasks": "arithmetic", "max_tokens": 8}, ["eval"])
    assert isinstance(got, dict), got
    assert got["run"]["kind"] == "tasks" and got["scores"]["n"] == len(got["items"]) > 0
    runs = await _call(k, "eval.runs", {}, ["eval"])
    assert [r["id"] for r in runs] == [got["run"]["id"]]


async def test_perplexity_through_the_syscall_equals_the_op(
    settings: Any, real_model_path: Path
) -> None:
    text = _text()
    async with Kernel(settings) as k:
        got = await _call(
            k, "eval.perplexity",
            {"model": str(real_model_path), "text": text, "ctx": CTX, "source": "head.txt"},
            ["eval"],
        )  # fmt: skip
        assert isinstance(got, dict), got
        runs = await _call(k, "eval.runs", {}, ["eval"])
    want = perplexity(
        real_model_path, text, ctx=CTX, threads=settings.n_threads, flash_attn=settings.flash_attn
    )
    assert got["scores"]["ppl"] == pytest.approx(want.ppl, rel=1e-9)
    assert got["result"]["n_chunks"] == want.n_chunks and got["file"] == "head.txt"
    assert [r["id"] for r in runs] == [got["id"]]


async def test_a_long_perplexity_is_a_process_that_kill_ends(
    settings: Any, real_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmos.kernel import llama_backend

    closed = threading.Event()
    close = llama_backend.LlamaScorer.close

    def spy(self: Any) -> None:  # the real close, noticed
        close(self)
        closed.set()

    monkeypatch.setattr(llama_backend.LlamaScorer, "close", spy)
    async with Kernel(settings) as k:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        seen: list[tuple[int, int]] = []

        def heard(pid: int, phase: str, done: int, total: int) -> None:
            seen.append((done, total))
            if done >= 1:
                loop.call_soon_threadsafe(started.set)

        k.service(open_eval_progress).watch(heard)

        async def prog(ctx: Any) -> Any:  # the whole shipped text at a small ctx: ~90 chunks
            return await ctx.sys.eval.perplexity(model=str(real_model_path), ctx=64)

        p = await k.spawn(prog, name="ppl", caps=["eval"])
        async with asyncio.timeout(60):
            await started.wait()
        (row,) = [r for r in k.ps() if r["pid"] == p.pid]
        assert row["state"] == "running" and row["name"] == "ppl"
        assert seen[-1][0] < seen[-1][1]  # still chunks to go
        t0 = time.monotonic()
        k.signal(p.pid, "KILL")
        assert await asyncio.wait_for(k.wait(p.pid), 5) == -9
        assert p.task is not None
        await asyncio.wait([p.task], timeout=30)  # the scoring stops before its next chunk
        assert p.task.done() and closed.is_set()
        assert time.monotonic() - t0 < 30
        assert p.pid not in k.service(open_eval_progress).running
        with EvalStore.open(settings.data_dir) as store:
            assert store.last(5) == []  # a killed run stores nothing


def test_rest_runs_compare_and_errors(tmp_path: Path) -> None:
    with serve_scripted(tmp_path) as (url, app):
        ids = _store(app.state.api.kernel.settings.data_dir, 21.5, 20.25)
        with httpx.Client(base_url=url, timeout=30) as c:
            runs = c.get("/v1/eval/runs", params={"last": 1}).json()
            assert [r["id"] for r in runs["data"]] == ids[1:]
            both = c.post("/v1/eval/compare", json={"ids": ids}).json()
            assert [r["scores"]["ppl"] for r in both["runs"]] == [21.5, 20.25]
            missing = c.post("/v1/eval/compare", json={"ids": [99]})
            assert missing.status_code == 400
            assert "no eval run 99" in missing.json()["error"]["message"]
            bad = c.post("/v1/eval/perplexity", json={"ctx": 2})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "ctx"
            unknown = c.post("/v1/eval/perplexity", json={"model": "nope"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "model_not_found"
            tasks = c.post("/v1/eval/run", json={"tasks": "arithmetic", "max_tokens": 4})
            assert tasks.status_code == 200, tasks.text
            assert tasks.json()["run"]["file"] == "(shipped) arithmetic.jsonl"
            procs = c.get("/v1/processes").json()["data"]
            assert any(p["name"] == "api:eval.compare" for p in procs)


def test_rest_perplexity_runs_the_real_model(tmp_path: Path, real_model_path: Path) -> None:
    # A scripted server still scores with llama.cpp: perplexity reads the model file itself.
    with serve_scripted(tmp_path) as (url, _app):
        with httpx.Client(base_url=url, timeout=120) as c:
            res = c.post("/v1/eval/perplexity", json={"text": _text(), "ctx": CTX})
            assert res.status_code == 200, res.text
            run = res.json()
            assert run["scores"]["ppl"] > 1 and run["settings"]["ctx"] == CTX
            short = c.post("/v1/eval/perplexity", json={"text": "Too short.", "ctx": CTX})
            assert short.status_code == 400
            assert "one chunk needs 128" in short.json()["error"]["message"]


def test_rest_rag_scores_stores_and_maps_errors(tmp_path: Path, hash_embedder: Any) -> None:
    with serve_scripted(tmp_path, embedder=hash_embedder) as (url, _app):
        with httpx.Client(base_url=url, timeout=120) as c:
            files = {f"/home/api/docs/{n}": t for n, t in RAG_DOCS.items()}
            files["/home/evals/rag.jsonl"] = _rag_questions("/home/api/docs")
            for path, content in files.items():
                r = c.put("/v1/fs/write", json={"path": path, "content": content})
                assert r.status_code == 200, r.text
            body = {"questions": "/home/evals/rag.jsonl", "scope": "/home/api/docs", "k": 2}
            res = c.post("/v1/eval/rag", json=body)
            assert res.status_code == 200, res.text
            out = res.json()
            assert out["scores"]["mrr"] == pytest.approx(2 / 3)
            assert out["scores"]["answered"] == 1 and out["scores"]["errors"] == 0
            assert out["run"]["file"] == "/home/evals/rag.jsonl"
            runs = c.get("/v1/eval/runs").json()["data"]
            assert [r["id"] for r in runs] == [out["run"]["id"]] and runs[0]["kind"] == "rag"
            missing = c.post("/v1/eval/rag", json={"questions": "/home/evals/none.jsonl"})
            assert missing.status_code == 400 and missing.json()["error"]["code"] == "bad_arguments"
            assert "no such file" in missing.json()["error"]["message"]
            empty = c.post("/v1/eval/rag", json={**body, "scope": "/mnt"})
            assert empty.status_code == 400 and empty.json()["error"]["code"] == "nothing_indexed"
            bad_k = c.post("/v1/eval/rag", json={**body, "k": 0})
            assert bad_k.status_code == 400 and bad_k.json()["error"]["param"] == "k"
            unknown = c.post("/v1/eval/rag", json={**body, "model": "nope"})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "model_not_found"
            procs = c.get("/v1/processes").json()["data"]
            assert any(p["name"] == "api:eval.rag" for p in procs)
