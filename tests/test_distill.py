"""`llmos models distill` on the real default model: the model under a JSON schema teaches
itself without it (the teacher-by-constraint case issue 14 names), and the student's
agreement with the teacher on held-out prompts rises."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from llmos.cli import app
from llmos.config import load_settings
from llmos.kernel.models import ModelLibrary
from tests.conftest import one_line_error

runner = CliRunner()
BASE = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"enum": ["fruit", "not fruit"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}
ITEMS = ["apple", "stone", "banana", "chair", "cherry", "lamp", "grape", "spoon", "melon", "brick"]


def test_distill_from_a_constrained_teacher(tmp_path: Path, real_model_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Is {w} a fruit? Reply in JSON."}]}) + "\n"
        for w in ITEMS
    ))  # fmt: skip
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    r = runner.invoke(app, [
        "models", "distill", str(prompts), "--teacher", BASE, "--student", BASE, "--name", "judge",
        "--json-schema", str(schema), "--max-tokens", "24", "--epochs", "3", "--lr", "3e-3",
        "--no-progress", "--json",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["train_prompts"] == 8 and out["held_out_prompts"] == 2
    before, after = out["before"], out["after"]
    assert before["exact_match"] == 0.0  # unconstrained, the model answers in prose
    assert after["rougeL"] > before["rougeL"] and after["exact_match"] >= 0.5, out
    meta = ModelLibrary(load_settings().data_dir).info("judge")
    assert meta["agreement_after"] == after and meta["distilled_from"] == BASE


def test_distill_bad_prompts_are_one_line(tmp_path: Path) -> None:
    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps({"prompt": "hi"}) + "\n")
    args = ["models", "distill", "--teacher", BASE, "--student", BASE, "--name", "x"]
    assert "distilling needs at least 5" in one_line_error(runner.invoke(app, [*args, str(few)]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"answer": 1}\n')
    assert ":2: need 'messages'" in one_line_error(runner.invoke(app, [*args, str(bad)]))
