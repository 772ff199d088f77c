"""`eval run` (task sets as batched kernel processes, scored) and `eval rag` (retrieval
recall@k and MRR), on the scripted engine, the real model and the hash embedder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.config import load_settings
from llmos.errors import UserError
from llmos.kernel.kernel import Kernel
from llmos.ops.evalstore import EvalStore, file_sha256
from llmos.ops.taskeval import (
    load_tasks,
    rag_eval,
    retrieval_scores,
    run_tasks,
    score_outputs,
    shipped_sets,
)
from tests.conftest import one_line_error, scripted_factory

runner = CliRunner()

ANSWERS = {"What is 2+2?": "4", "Capital of France?": "Paris", "Say hello.": "Hello there"}


def responder(conversation: str) -> str:
    for question, answer in ANSWERS.items():
        if question in conversation:
            return answer
    return "no idea"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- metrics --------------------------------------------------------------------------------
def test_scores_exact_on_small_inputs() -> None:
    corpus, items = score_outputs(
        ["  Le chat dort sur la chaise. ", "the cat sat", "nothing alike"],
        [["le chat dort sur la chaise."], ["the cat sat on the mat"], ["x y", "z w"]],
    )
    assert [i["exact"] for i in items] == [1.0, 0.0, 0.0]
    assert corpus["exact_match"] == pytest.approx(1 / 3)
    # identical text (up to the stripped spaces; BLEU is case-sensitive, so the casefolded
    # reference is not identical): a copy of the reference scores 100 and 1.0
    same, same_items = score_outputs(["the cat sat on the mat"], [["the cat sat on the mat"]])
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    assert same_items[0]["bleu"] == pytest.approx(100.0)
    assert all(same[t] == pytest.approx(1.0) for t in ("rouge1", "rouge2", "rougeL"))
    # a known partial case: 3 of the reference's 6 words, in order
    partial = items[1]
    assert partial["rouge1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P 1, R 3/6
    assert partial["rouge2"] == pytest.approx(2 * 1.0 * 0.4 / 1.4)  # P 2/2, R 2/5
    assert partial["rougeL"] == pytest.approx(2 / 3)  # LCS 3
    assert items[2]["rouge1"] == 0.0 and items[2]["bleu"] == 0.0
    # the corpus ROUGE is the mean of the items'
    assert corpus["rouge1"] == pytest.approx(sum(i["rouge1"] for i in items) / 3)


def test_scores_take_the_best_of_several_references() -> None:
    corpus, items = score_outputs(
        ["a b c d", "e f g h"], [["a b c d"], ["x y z w", "e f g h"]]
    )  # a varying count of references: sacrebleu's streams padded with None
    assert corpus["bleu"] == pytest.approx(100.0)
    assert items[1]["exact"] == 1.0 and items[1]["rougeL"] == pytest.approx(1.0)


def test_retrieval_scores() -> None:
    assert retrieval_scores(["/a", "/b"], ["/a"]) == (1.0, 1.0)
    assert retrieval_scores(["/a", "/b"], ["/b", "/c"]) == (0.5, 0.5)
    assert retrieval_scores(["/a"], ["/z"]) == (0.0, 0.0)


def test_shipped_sets_load_and_say_where_their_text_comes_from() -> None:
    sets = shipped_sets()
    assert {"translation", "summarization", "arithmetic", "tool-use"} <= set(sets)
    for name, path in sets.items():
        header = json.loads(path.read_text().splitlines()[0])["header"]
        assert "written for llmos" in header["source"], name
        assert len(load_tasks(path)) >= 8, name


# -- eval run, scripted -------------------------------------------------------------------
async def test_run_tasks_scores_stores_and_batches(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "What is 2+2?"}], "references": ["4"]},
        {"messages": [{"role": "user", "content": "Capital of France?"}], "reference": "paris"},
        {"prompt": "<|user|>Say hello.\n<|assistant|>", "references": ["Hello there", "Hi"]},
        {"messages": [{"role": "user", "content": "Unknown?"}], "references": ["something"]},
    ]
    tasks = write_jsonl(tmp_path / "t.jsonl", [{"header": {"source": "a test"}}, *rows])
    settings = load_settings(data_dir=tmp_path / "data")
    async with Kernel(settings, backend_factory=scripted_factory(responder=responder)) as k:
        out = await run_tasks(k, None, tasks, max_tokens=32)
        backend: Any = (await k.engine()).backend  # the scripted one: it logs its batches
        # more than one sequence in one decode: the prompts ran batched, not in turn
        assert max(len({slot for slot, _ in b}) for b in backend.batches) > 1
    assert [i["output"] for i in out["items"]] == ["4", "Paris", "Hello there", "no idea"]
    assert [i["line"] for i in out["items"]] == [2, 3, 4, 5]
    sc = out["scores"]
    assert sc["exact_match"] == 0.75 and sc["n"] == 4 and sc["errors"] == 0
    assert out["max_concurrent"] == 4 and out["concurrency"] == settings.n_seq_max
    assert out["tokens"] == len("4Paris" + "Hello there" + "no idea") + 4  # + an EOS each
    assert out["tokens_per_s"] > 0 and out["latency_s"]["max"] <= out["seconds"]
    with EvalStore.open(settings.data_dir) as db:
        (run,) = db.last(5)
    assert run.kind == "tasks" and run.file == str(tasks)
    assert run.file_sha256 == file_sha256(tasks)
    assert run.settings["max_tokens"] == 32 and run.settings["temperature"] == 0.0
    assert run.scores["exact_match"] == 0.75 and run.scores["rougeL"] == sc["rougeL"]
    assert run.id == out["run"]["id"]


async def test_concurrency_bounds_the_processes(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "What is 2+2?"}], "references": ["4"]}] * 5
    tasks = write_jsonl(tmp_path / "t.jsonl", rows)
    settings = load_settings(data_dir=tmp_path / "data")
    async with Kernel(settings, backend_factory=scripted_factory(responder=responder)) as k:
        out = await run_tasks(k, None, tasks, concurrency=1, store=False)
        scripted: Any = (await k.engine()).backend
        batches = scripted.batches
    assert out["max_concurrent"] == 1 and out["scores"]["exact_match"] == 1.0
    assert max(len({slot for slot, _ in b}) for b in batches) == 1
    with EvalStore.open(settings.data_dir) as db:
        assert db.last(5) == []


async def test_a_set_whose_every_task_fails_is_an_error(tmp_path: Path) -> None:
    # prompts longer than a sequence's context: each process fails, and a run of nothing
    # but failures is refused rather than stored with scores of 0
    tasks = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "x" * 50_000, "references": ["y"]}])
    settings = load_settings(data_dir=tmp_path / "data")
    async with Kernel(settings, backend_factory=scripted_factory()) as k:
        with pytest.raises(UserError, match=r"every task failed; the first \(line 1\)"):
            await run_tasks(k, None, tasks)
    with EvalStore.open(settings.data_dir) as db:
        assert db.last(5) == []


def test_cli_eval_run_shipped_set_and_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmos.kernel import kernel as kernel_mod

    real_init = kernel_mod.Kernel.__init__

    def scripted_init(self: Any, settings: Any = None, **kw: Any) -> None:
        kw.setdefault("backend_factory", scripted_factory(responder=lambda c: "391"))
        real_init(self, settings, **kw)

    monkeypatch.setattr(kernel_mod.Kernel, "__init__", scripted_init)
    res = runner.invoke(app, ["eval", "run", "smollm2-135m-instruct", "arithmetic", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["run"]["file"] == "(shipped) arithmetic.jsonl" and out["scores"]["n"] == 16
    assert out["scores"]["exact_match"] == 1 / 16  # only 17*23 is 391
    table = runner.invoke(app, ["eval", "compare"], env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    assert "EM 0.0625" in table.output and "@arithmetic" in table.output


# -- bad inputs: one line, exit code 2 ------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"prompt": "a", "references": ["b"]}\n{"prompt": "c", \n', "t.jsonl:2: not valid JSON"),
        ("", "has no tasks"),
        ("\n\n", "has no tasks"),
        ('{"prompt": "a"}\n', "t.jsonl:1: missing references"),
        ('{"prompt": "a", "references": []}\n', "t.jsonl:1: references must be"),
        ('{"references": ["b"]}\n', "t.jsonl:1: give either a prompt or messages"),
        ("[1, 2]\n", "t.jsonl:1: expected a JSON object"),
    ],
)
def test_eval_run_bad_task_files(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    out = one_line_error(runner.invoke(app, ["eval", "run", "smollm2-135m-instruct", str(path)]))
    assert says in out


def test_eval_run_unknown_model_set_and_file(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "references": ["b"]}])
    assert "unknown model 'nope'" in one_line_error(
        runner.invoke(app, ["eval", "run", "nope", str(tasks)])
    )
    out = one_line_error(runner.invoke(app, ["eval", "run", "smollm2-135m-instruct", "poetry"]))
    assert "'poetry'" in out and "translation" in out
    assert "no such task file" in one_line_error(
        runner.invoke(app, ["eval", "run", "smollm2-135m-instruct", str(tmp_path / "x.jsonl")])
    )
    assert "--max-tokens must be at least 1" in one_line_error(
        runner.invoke(app, ["eval", "run", "nope", str(tasks), "--max-tokens", "0"])
    )


def test_eval_rag_bad_question_files(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "where?"}])
    out = one_line_error(runner.invoke(app, ["eval", "rag", str(path), "--scope", "/mnt"]))
    assert "q.jsonl:1: sources must be" in out
    assert "no such file" in one_line_error(
        runner.invoke(app, ["eval", "rag", str(tmp_path / "none.jsonl"), "--scope", "/"])
    )


# -- eval rag, hash embedder ----------------------------------------------------------------
async def test_rag_eval_recall_and_mrr_exact(tmp_path: Path, hash_embedder: Any) -> None:
    host = tmp_path / "docs"
    host.mkdir()
    (host / "a.md").write_text("alpha beta gamma")
    (host / "b.md").write_text("delta epsilon zeta")
    (host / "c.md").write_text("eta theta iota")
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            # ranks a first: recall 1, reciprocal rank 1
            {"question": "alpha beta gamma", "sources": ["/mnt/docs/a.md"], "references": ["Biscuit"]},
            # ranks b (3 shared words), then c (1): c found second
            {"question": "delta epsilon zeta eta", "sources": "/mnt/docs/c.md"},
            # ranks a (2), b (1), c (0); with k=2 only b of the two expected comes back
            {"question": "alpha beta delta", "sources": ["/mnt/docs/b.md", "/mnt/docs/c.md"]},
        ],
    )  # fmt: skip
    settings = load_settings(data_dir=tmp_path / "data")
    factory = scripted_factory(responder=lambda c: "Biscuit")
    async with Kernel(settings, backend_factory=factory, embedder=hash_embedder) as k:
        k.memory.mount(host, "docs")
        out = await rag_eval(k, questions, "/mnt/docs", k=2)
    items = out["items"]
    assert items[0]["retrieved"][0] == "/mnt/docs/a.md"  # b and c tie after it
    assert items[1]["retrieved"] == ["/mnt/docs/b.md", "/mnt/docs/c.md"]
    assert items[2]["retrieved"] == ["/mnt/docs/a.md", "/mnt/docs/b.md"]
    assert [(i["recall"], i["rr"]) for i in items] == [(1.0, 1.0), (1.0, 0.5), (0.5, 0.5)]
    sc = out["scores"]
    assert sc["recall@2"] == pytest.approx(2.5 / 3) and sc["mrr"] == pytest.approx(2 / 3)
    assert sc["answered"] == 1 and sc["answer_exact_match"] == 1.0 and sc["errors"] == 0
    assert items[0]["answer"] == "Biscuit"
    with EvalStore.open(settings.data_dir) as db:
        (run,) = db.last(5)
    assert run.kind == "rag" and run.settings["scope"] == "/mnt/docs" and run.settings["k"] == 2
    assert run.scores["mrr"] == pytest.approx(2 / 3)


# -- the real model -------------------------------------------------------------------------
async def test_run_tasks_real_model_shipped_arithmetic(
    tmp_path: Path, real_kernel: Any, real_model_path: Path
) -> None:
    lines = shipped_sets()["arithmetic"].read_text().splitlines()
    tasks = tmp_path / "few.jsonl"
    tasks.write_text("\n".join(lines[:4]) + "\n")  # the header and three items
    out = await run_tasks(real_kernel, None, tasks, max_tokens=4)  # the default model
    sc = out["scores"]
    assert sc["n"] == 3 and sc["errors"] == 0
    assert all(i["output"].strip() and 0 < i["tokens"] <= 4 for i in out["items"])
    assert out["max_concurrent"] == 3
    assert 0.0 <= sc["exact_match"] <= 1.0 and 0.0 <= sc["rougeL"] <= 1.0
    assert (
        out["run"]["id"] is not None and out["run"]["model"] == real_kernel.settings.default_model
    )
