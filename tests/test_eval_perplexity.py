"""`llmos eval perplexity`: llama-perplexity's method on real llama.cpp, checked against an
independent computation through llama-cpp-python's high-level `Llama`; runs stored in real
SQLite and shown by `eval compare`; bad inputs are one line and exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.ops.evalstore import EvalRun, EvalStore
from llmos.ops.perplexity import (
    EvalCancelled,
    in_worker,
    nll_rows,
    perplexity,
    shipped_text,
    summarize,
)
from tests.conftest import one_line_error

runner = CliRunner()
CTX = 128


def _text(words: int = 330) -> str:
    """The head of the shipped text: three chunks of 128 tokens on SmolLM2."""
    return " ".join(shipped_text().read_text().split()[:words])


def _reference(model_path: Path, text: str, ctx: int) -> tuple[float, float, int]:
    """The same method written plainly on `Llama(logits_all=True)`: every position's
    logits, log-softmax in float64 over the whole vocabulary, one chunk at a time."""
    import llama_cpp

    # Flash attention on, as llama-perplexity's and llmos's default `auto` chooses on this
    # CPU build: it moves the value by about 1% on this small model, more than the check.
    llm = llama_cpp.Llama(
        str(model_path),
        n_ctx=ctx,
        n_batch=ctx,
        logits_all=True,
        n_threads=2,
        flash_attn=True,
        verbose=False,
    )
    try:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))
        nll, nll2, count = 0.0, 0.0, 0
        for start in range(0, len(tokens) - ctx + 1, ctx):
            chunk = tokens[start : start + ctx]
            if add_bos:
                chunk[0] = llm.token_bos()
            llm.reset()
            llm.eval(chunk)
            scores = np.asarray(llm.scores[:ctx], dtype=np.float64)
            for pos in range(ctx // 2, ctx - 1):
                row = scores[pos]
                top = row.max()
                logp = row[chunk[pos + 1]] - top - math.log(np.exp(row - top).sum())
                nll += -logp
                nll2 += logp * logp
                count += 1
    finally:
        llm.close()
    ppl, err = summarize(nll, nll2, count)
    return ppl, err, count


def test_perplexity_equals_an_independent_computation(real_model_path: Path) -> None:
    text = _text()
    got = perplexity(real_model_path, text, ctx=CTX, threads=2, flash_attn="on")
    ppl, err, count = _reference(real_model_path, text, CTX)
    assert got.n_chunks >= 2
    assert got.n_scored == count == got.n_chunks * (CTX // 2 - 1)
    assert got.ppl == pytest.approx(ppl, rel=1e-3)
    assert got.error == pytest.approx(err, rel=1e-2)
    assert got.tokens_per_s > 0


def test_batch_settings_give_the_same_value(real_model_path: Path) -> None:
    """Half a chunk per decode, or two chunks per decode, score the same tokens."""
    text = _text()
    one = perplexity(real_model_path, text, ctx=CTX, threads=2)
    halves = perplexity(real_model_path, text, ctx=CTX, batch=CTX // 2, threads=2)
    pairs = perplexity(real_model_path, text, ctx=CTX, batch=2 * CTX, threads=2)
    assert halves.ppl == pytest.approx(one.ppl, rel=1e-3)
    assert pairs.ppl == pytest.approx(one.ppl, rel=1e-3)
    assert pairs.n_scored == one.n_scored


async def test_scoring_runs_off_the_loop_and_stops_when_cancelled(real_model_path: Path) -> None:
    import asyncio
    import threading

    ticks = 0

    async def ticker() -> None:  # the loop keeps turning while llama.cpp works
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    seen: list[tuple[int, int]] = []
    t = asyncio.create_task(ticker())
    try:
        got = await in_worker(
            perplexity, real_model_path, _text(), ctx=CTX, progress=lambda d, n: seen.append((d, n))
        )
    finally:
        t.cancel()
    assert ticks > 5 and seen[0] == (0, got.n_chunks) and seen[-1] == (got.n_chunks,) * 2

    stop = threading.Event()
    stop.set()
    with pytest.raises(EvalCancelled, match="after 0 of"):
        perplexity(real_model_path, _text(), ctx=CTX, cancel=stop)


def test_nll_rows_is_log_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(70, 1000)).astype(np.float32) * 5
    targets = rng.integers(0, 1000, size=70)
    x = logits.astype(np.float64)
    expect = np.log(np.exp(x).sum(axis=1)) - x[np.arange(70), targets]
    np.testing.assert_allclose(nll_rows(logits, targets), expect, rtol=1e-6)


def test_a_run_is_stored_and_compare_shows_it(real_model_path: Path, tmp_path: Path) -> None:
    f = tmp_path / "text.txt"
    f.write_text(_text(230))
    res = runner.invoke(
        app, ["eval", "perplexity", str(real_model_path), str(f), "--ctx", str(CTX), "--json"]
    )
    assert res.exit_code == 0, res.output
    run = json.loads(res.output)
    assert run["kind"] == "perplexity" and run["id"] >= 1
    assert run["scores"]["ppl"] > 1 and run["settings"]["ctx"] == CTX
    assert run["size_bytes"] == real_model_path.stat().st_size

    shown = runner.invoke(app, ["eval", "compare", "--json"])
    assert shown.exit_code == 0, shown.output
    (stored,) = json.loads(shown.output)
    assert stored["id"] == run["id"]
    assert stored["scores"]["ppl"] == pytest.approx(run["scores"]["ppl"])
    assert len(stored["file_sha256"]) == 64

    table = runner.invoke(app, ["eval", "compare", str(run["id"])], env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    assert f"{run['scores']['ppl']:.4f}" in table.output


def test_compare_lists_runs_side_by_side(tmp_path: Path) -> None:
    from llmos.config import load_settings

    with EvalStore.open(load_settings().data_dir) as store:
        for name, ppl, size in (("small-q4", 21.5, 90_000_000), ("small-f16", 20.25, 270_000_000)):
            store.add(
                EvalRun(
                    kind="perplexity",
                    model=name,
                    model_path=f"/m/{name}.gguf",
                    file="text.txt",
                    file_sha256="ab" * 32,
                    settings={"ctx": 512, "batch": 512, "threads": 2},
                    scores={"ppl": ppl, "ppl_error": 0.5},
                    size_bytes=size,
                    tokens_per_s=100.0,
                    lineage={"parent": "small-f16"} if name == "small-q4" else None,
                )
            )
    res = runner.invoke(app, ["eval", "compare", "--last", "2"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "small-q4" in res.output and "small-f16" in res.output
    assert "21.5000" in res.output and "20.2500" in res.output
    assert "from" in res.output  # the lineage column, since one run has a parent
    missing = runner.invoke(app, ["eval", "compare", "99"])
    assert missing.exit_code == 2 and "no eval run 99" in missing.output

    out = tmp_path / "plot.png"
    plot = runner.invoke(app, ["eval", "plot", str(out), "1", "2"])
    assert plot.exit_code == 0, plot.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def perplexity_error(args: list[str]) -> str:
    return one_line_error(runner.invoke(app, args))


def test_bad_inputs_are_one_line(tmp_path: Path, real_model_path: Path) -> None:
    model = str(real_model_path)
    assert "no such file" in perplexity_error(
        ["eval", "perplexity", model, str(tmp_path / "none.txt")]
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "is empty" in perplexity_error(["eval", "perplexity", model, str(empty)])
    short = tmp_path / "short.txt"
    short.write_text("Too short for a chunk.")
    out = perplexity_error(["eval", "perplexity", model, str(short), "--ctx", str(CTX)])
    assert "one chunk needs 128" in out
    assert "unknown model 'no-such-model'" in perplexity_error(
        ["eval", "perplexity", "no-such-model", str(short)]
    )
    assert "--batch 200" in perplexity_error(
        ["eval", "perplexity", model, str(short), "--ctx", str(CTX), "--batch", "200"]
    )
    with EvalStore.open(tmp_path / "d") as store:  # nothing was stored by failed runs
        assert store.last(5) == []


def test_perplexities_compare_only_over_one_text_and_context(tmp_path: Path) -> None:
    """The rule `eval compare` and `eval.compare` share: perplexity runs compare when they
    scored the same text at the same context; other kinds of run don't enter into it."""
    from llmos.ops.evalstore import EvalRun, comparable

    def run(kind: str, sha: str, ctx: int | None) -> EvalRun:
        settings = {"ctx": ctx} if ctx is not None else {"set": "arithmetic"}
        return EvalRun(kind, "m", "m.gguf", "f", sha, settings, {})

    same = [run("perplexity", "aa", 512), run("perplexity", "aa", 512)]
    assert comparable(same) and comparable([]) and comparable(same[:1])
    assert comparable([*same, run("tasks", "bb", None)])
    assert not comparable([*same, run("perplexity", "aa", 256)])
    assert not comparable([*same, run("perplexity", "cc", 512)])
    f = tmp_path / "t.txt"
    f.write_text("some text\n")
    import hashlib

    from llmos.ops.evalstore import file_sha256

    assert file_sha256(f) == hashlib.sha256(b"some text\n").hexdigest()


def test_plot_bad_inputs_are_one_line(tmp_path: Path) -> None:
    """No perplexity run to draw, or a PNG that can't be written: one line, exit 2, no file."""
    from llmos.config import load_settings

    out = tmp_path / "plot.png"
    assert "no perplexity runs to plot" in one_line_error(
        runner.invoke(app, ["eval", "plot", str(out)])
    )
    assert not out.exists()
    with EvalStore.open(load_settings().data_dir) as store:
        store.add(
            EvalRun("perplexity", "m", "/m/m.gguf", "t.txt", "ab" * 32, {"ctx": 512},
                    {"ppl": 20.0, "ppl_error": 0.5}, size_bytes=1)
        )  # fmt: skip
    nowhere = tmp_path / "no-such-dir" / "plot.png"
    assert "cannot write" in one_line_error(runner.invoke(app, ["eval", "plot", str(nowhere)]))
    assert not nowhere.exists()
