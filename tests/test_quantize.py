"""`llmos models quantize` and `--prune-layers` on the real default model, with llama.cpp's
own quantizer in a worker process: headers, lineage, loading the result, and bad inputs
(one line, exit code 2, no file left behind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.config import load_settings
from llmos.core.sampling import SamplingParams
from llmos.errors import UserError
from llmos.kernel.engine import EngineCore
from llmos.kernel.gguf import read_gguf
from llmos.kernel.llama_backend import LlamaBackend
from llmos.kernel.models import ModelLibrary
from llmos.kernel.scheduler import Policy
from llmos.ops import quantize as q
from tests.conftest import one_line_error

runner = CliRunner()
DEFAULT = "smollm2-135m-instruct"


def data_dir() -> Path:
    return load_settings().data_dir


def leftovers() -> list[str]:
    """Every file in the models folder (outputs and hidden temporary files alike)."""
    folder = data_dir() / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def quantize_error(args: list[str]) -> str:
    return one_line_error(runner.invoke(app, ["models", "quantize", *args]))


async def first_words(path: Path) -> str:
    """Greedy text from a model file: it loads and generates."""
    backend = LlamaBackend(path, n_slots=1, n_ctx=512, n_batch=128, n_threads=2)
    core = EngineCore(backend, policy=Policy())
    core.start()
    try:
        prompt = backend.tokenize(
            "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n"
        )
        gen = core.generate(prompt, SamplingParams(temperature=0, max_tokens=12))
        return str(await gen.result())
    finally:
        core.close()


async def test_quantize_to_q8_0_registers_loads_and_generates(real_model_path: Path) -> None:
    r = runner.invoke(app, ["models", "quantize", DEFAULT, "--type", "q8_0"])
    assert r.exit_code == 0, r.output
    assert "warning: " in r.output and "already quantized (Q4_1)" in r.output  # requantized
    out = data_dir() / "models" / f"{DEFAULT}-q8_0.gguf"
    assert leftovers() == [out.name]  # no temporary file left beside it
    header = read_gguf(out)
    assert header.metadata["general.file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert header.quantization == "Q8_0"
    assert len(header.tensors) == len(read_gguf(real_model_path).tensors)
    assert q.estimate_size(read_gguf(real_model_path), "Q8_0") >= header.file_size

    info = json.loads(runner.invoke(app, ["models", "info", out.stem, "--json"]).output)
    lineage = info["lineage"]
    assert lineage["parent"] == DEFAULT and lineage["operation"] == "quantize"
    assert lineage["parent_quantization"] == "Q4_1"
    assert lineage["parameters"] == {"type": "Q8_0", "prune_layers": [], "allow_requantize": True}
    text = runner.invoke(app, ["models", "info", out.stem]).output
    assert f"quantize of {DEFAULT} (Q4_1): type=Q8_0" in text

    assert (await first_words(out)).strip()


async def test_prune_two_blocks_keeps_a_working_model(real_model_path: Path) -> None:
    r = runner.invoke(app, ["models", "quantize", DEFAULT, "--prune-layers", "11,10"])
    assert r.exit_code == 0, r.output
    assert "28 of 30 blocks" in r.output
    assert "warning" not in r.output  # same type as the source: tensors are copied as they are
    out = data_dir() / "models" / f"{DEFAULT}-q4_1-pruned-10-11.gguf"
    src, header = read_gguf(real_model_path), read_gguf(out)
    assert src.metadata["llama.block_count"] == 30
    assert header.metadata["llama.block_count"] == 28
    per_block = sum(t.name.startswith("blk.0.") for t in src.tensors)
    assert len(header.tensors) == len(src.tensors) - 2 * per_block
    assert not any(t.name.startswith("blk.28.") for t in header.tensors)  # renumbered
    info = json.loads(runner.invoke(app, ["models", "info", out.stem, "--json"]).output)
    assert info["lineage"]["operation"] == "prune"
    assert info["lineage"]["parameters"]["prune_layers"] == [10, 11]
    assert (await first_words(out)).strip()


def test_a_derived_model_keeps_its_parents_lineage(real_model_path: Path) -> None:
    assert runner.invoke(app, ["models", "quantize", DEFAULT, "-t", "Q4_0"]).exit_code == 0
    r = runner.invoke(app, ["models", "quantize", f"{DEFAULT}-q4_0", "--prune-layers", "3"])
    assert r.exit_code == 0, r.output
    info = json.loads(
        runner.invoke(app, ["models", "info", f"{DEFAULT}-q4_0-q4_0-pruned-3", "--json"]).output
    )
    assert info["lineage"]["parent"] == f"{DEFAULT}-q4_0"
    assert info["lineage"]["parent_lineage"]["parent"] == DEFAULT


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--type", "Q9_9"], "unknown quantization type 'Q9_9'; llama.cpp offers: F32, F16"),
        (["--type", "IQ2_XXS"], "needs an importance matrix"),  # llama.cpp's own verdict
        (["--type", "Q1_0"], "can't be quantized to Q1_0: no tensor type fallback"),
        (["--prune-layers", "10,30"], "no block 30 to prune: the model has 30"),
        (["--prune-layers", "ten"], "--prune-layers wants block numbers"),
        ([], "give --type"),
        (["--type", "Q8_0", "--name", "../escape"], "invalid model name"),
    ],
)
def test_bad_inputs_are_one_line_and_leave_nothing(
    real_model_path: Path, args: list[str], expected: str
) -> None:
    assert expected in quantize_error([DEFAULT, *args])
    assert leftovers() == []


def test_a_truncated_source_is_refused(tmp_path: Path, real_model_path: Path) -> None:
    half = tmp_path / "half.gguf"
    with real_model_path.open("rb") as f:
        half.write_bytes(f.read(20 << 20))
    assert "truncated" in quantize_error([str(half), "--type", "Q8_0"])
    assert leftovers() == []


def test_an_existing_destination_needs_force(real_model_path: Path) -> None:
    folder = data_dir() / "models"
    folder.mkdir(parents=True)
    taken = folder / f"{DEFAULT}-q4_0.gguf"
    taken.write_bytes(b"someone else's file")
    assert "already exists; pass --force" in quantize_error([DEFAULT, "--type", "Q4_0"])
    assert taken.read_bytes() == b"someone else's file" and leftovers() == [taken.name]
    r = runner.invoke(app, ["models", "quantize", DEFAULT, "--type", "Q4_0", "--force"])
    assert r.exit_code == 0, r.output
    assert read_gguf(taken).quantization == "Q4_0" and leftovers() == [taken.name]


def test_too_little_disk_is_refused_before_writing(
    real_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage

    def nearly_full(path: Any) -> Any:
        return real(path)._replace(free=50_000_000)  # less than the 145 MB Q8_0 needs

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    out = quantize_error([DEFAULT, "--type", "Q8_0"])
    assert "not enough disk space" in out and "needs about 14" in out
    assert leftovers() == []


def test_an_interrupted_quantize_removes_its_temporary_file(
    tmp_path: Path, real_model_path: Path
) -> None:
    library = ModelLibrary(tmp_path)

    def stop(done: int, total: int) -> None:
        if done >= 20:
            raise KeyboardInterrupt  # what Ctrl-C raises in the CLI mid-run

    with pytest.raises(KeyboardInterrupt):
        q.quantize(library, DEFAULT, "Q8_0", progress=stop)
    assert list((tmp_path / "models").iterdir()) == []
    assert all(e.builtin for e in library.list())  # nothing registered


def test_progress_counts_every_output_tensor(tmp_path: Path, real_model_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    done = q.quantize(
        ModelLibrary(tmp_path), DEFAULT, None, prune_layers="0", progress=lambda *a: seen.append(a)
    )
    total = len(read_gguf(done.entry.path).tensors)
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # never goes back


def test_types_come_from_llama_cpp_with_aliases() -> None:
    assert q.resolve_type("q4_k") == ("Q4_K_M", 15)
    assert q.resolve_type("F32") == ("F32", 0)
    assert q.resolve_type("bf16") == ("BF16", 32)
    with pytest.raises(UserError, match="unknown quantization type"):
        q.resolve_type("Q4_K_XL")


def test_parse_layers() -> None:
    assert q.parse_layers("11, 10,10") == (10, 11)
    assert q.parse_layers(None) == ()
    for bad in ("", "1,-2", "1;2", "x"):
        with pytest.raises(UserError):
            q.parse_layers(bad)
