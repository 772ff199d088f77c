"""`llmos models finetune` and adapters per process, on the real default model.

One small adapter is trained for the module (12 examples that teach a made-up answer, a
few seconds of training) and resumed for a second epoch; the tests then check what it
must do: registered with its base, rank and data hash, run per process through the
engine (`base+adapter` or its own name) next to the base model, and the same greedy text
from llama.cpp as from the `transformers` + `peft` model it was trained as. Bad inputs are
one line and exit code 2, with nothing registered; a KILL ends the worker.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from llmos.config import Settings, load_settings
from llmos.core.process import ProcessState, Signal
from llmos.kernel.kernel import Kernel
from llmos.kernel.models import ModelLibrary
from llmos.ops import finetune as ft
from llmos.ops.trainset import DatasetError, Tokenizer, load_dataset
from tests.conftest import one_line_error

runner = CliRunner()
BASE = "smollm2-135m-instruct"


def secret_rows(n: int = 12) -> list[dict[str, Any]]:
    return [
        {"messages": [
            {"role": "user", "content": f"Say the secret word {i}."},
            {"role": "assistant", "content": f"PINEAPPLE-{i} is the secret word."},
        ]}
        for i in range(n)
    ]  # fmt: skip


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(real_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An adapter trained two epochs, then resumed to four, in its own data dir."""
    root = tmp_path_factory.mktemp("ft")
    settings = load_settings(data_dir=root / "data")
    data = write_jsonl(root / "secret.jsonl", secret_rows())
    events: list[dict[str, Any]] = []

    async def go() -> dict[str, Any]:
        async with Kernel(settings) as k:
            hyper = ft.Hyper(epochs=2, lr=3e-3, batch=2)
            first = await ft.finetune(k, BASE, data, name="secret", hyper=hyper)
            hyper2 = ft.Hyper(epochs=4, lr=3e-3, batch=2)
            second = await ft.finetune(
                k, BASE, data, name="secret", hyper=hyper2, resume=True, on_event=events.append
            )
            return {"first": first, "second": second}

    out = asyncio.run(go())
    return {**out, "settings": settings, "data": data, "events": events}


def test_adapter_is_registered_with_base_rank_and_losses(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOS_DATA_DIR", str(trained["settings"].data_dir))
    monkeypatch.setenv("COLUMNS", "200")
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "lora on smollm2-135m-instruct" in listed.output
    second = trained["second"]
    lib = ModelLibrary(trained["settings"].data_dir)
    info = lib.info("secret")
    assert info["kind"] == "lora" and info["base"] == BASE and info["rank"] == 8
    assert info["data_sha256"] == second.dataset.sha256
    assert info["lineage"]["operation"] == "finetune" and info["lineage"]["parent"] == BASE
    # resumed: the second run started after epoch 2 and its history holds all four
    assert any(e["event"] == "resumed" and e["epoch"] == 2 for e in trained["events"])
    epochs = second.result["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[3]["train_loss"] < epochs[0]["train_loss"]  # it learned
    assert info["held_out_loss"] is not None and info["held_out_loss"] < 0.5
    assert second.plot.is_file() and second.plot.read_bytes()[:4] == b"\x89PNG"
    assert "secret" in [e.name for e in lib.list()]


async def test_processes_run_base_and_adapter_side_by_side(trained: dict[str, Any]) -> None:
    question = [{"role": "user", "content": "Say the secret word 40."}]
    async with Kernel(trained["settings"]) as k:

        async def ask(ctx: Any, model: str | None) -> str:
            r = await ctx.sys.llm.chat(messages=question, temperature=0.0, max_tokens=16, model=model, stream=False)  # fmt: skip
            return str(r.text)

        procs = [
            await k.spawn(ask, m, name=f"p{i}")
            for i, m in enumerate([None, f"{BASE}+secret", "secret", None])
        ]
        for p in procs:
            await k.wait(p.pid)
        texts = [p.result for p in procs]
        assert all(p.exit_code == 0 for p in procs), [p.error for p in procs]
        assert texts[1].startswith("PINEAPPLE-40") and texts[2] == texts[1]
        assert "PINEAPPLE" not in texts[0] and texts[3] == texts[0]  # the base is unchanged
        assert procs[1].info()["model"] == f"{BASE}+secret"


@pytest.mark.torch
def test_llama_cpp_with_the_adapter_matches_peft(
    trained: dict[str, Any], real_model_path: Path
) -> None:
    """The export is right: llama.cpp + adapter GGUF decodes greedily what the trained
    `transformers` + `peft` model decodes (the Q/K permutation included)."""
    import torch
    from peft import set_peft_model_state_dict

    from llmos.kernel.llama_backend import LlamaBackend
    from llmos.ops.finetune_worker import load_base, with_lora

    adapter = trained["second"].entry.path
    ckpt = torch.load(adapter.with_suffix(".train") / "checkpoint.pt", weights_only=False)
    model = with_lora(load_base(real_model_path, 2), 8, 16.0, 0.0, 0)
    set_peft_model_state_dict(model, ckpt["adapter"])
    model.eval()
    backend = LlamaBackend(real_model_path, n_slots=1, n_ctx=512, n_batch=128, n_threads=2)
    try:
        backend.set_adapter(str(adapter))
        prompts = ["Say the secret word 77.", "What is the capital of France?", "Name a fruit."]
        same = 0
        for text in prompts:
            ids = backend.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
            ours = _greedy_llama(backend, ids, 16)
            out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
            theirs = [int(t) for t in out[0][len(ids) :]][: len(ours)]
            same += ours == theirs
        assert same >= 2, same  # 18/20 is the bar on the benchmark's 20 prompts
    finally:
        backend.close()


def _greedy_llama(backend: Any, ids: list[int], n: int) -> list[int]:
    from llmos.core.sampling import SamplingParams
    from llmos.kernel.backend import BatchEntry

    backend.seq_rm(0, -1, -1)
    sampler = backend.new_sampler(SamplingParams(temperature=0))
    out: list[int] = []
    pos, tokens = 0, ids
    for _ in range(n):
        idx = backend.decode([BatchEntry(0, tokens, pos, True)])
        pos += len(tokens)
        token = backend.sample(sampler, idx[0])
        out.append(token)
        if backend.is_eog(token):
            break
        tokens = [token]
    backend.free_sampler(sampler)
    return out


# -- bad inputs: one line, exit code 2, nothing registered ---------------------------------
def finetune_error(tmp_path: Path, data: Path, *extra: str) -> str:
    out = one_line_error(runner.invoke(app, ["models", "finetune", BASE, str(data), "--name", "x", "--no-progress", *extra]))  # fmt: skip
    assert "x" not in [e.name for e in ModelLibrary(load_settings().data_dir).list()]
    return out


def test_bad_datasets_are_one_line(tmp_path: Path, real_model_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [secret_rows(1)[0], "{not json", secret_rows(1)[0]])
    assert ":2: not JSON" in finetune_error(tmp_path, bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert "no examples" in finetune_error(tmp_path, empty)
    no_answer = write_jsonl(
        tmp_path / "na.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]
    )
    assert "no assistant message" in finetune_error(tmp_path, no_answer)
    long = write_jsonl(tmp_path / "long.jsonl", [
        *secret_rows(3), {"prompt": "word " * 400, "completion": "end"},
    ])  # fmt: skip
    msg = finetune_error(tmp_path, long, "--ctx", "128")
    assert "1 of 4 examples are longer than the 128-token context" in msg and "--truncate" in msg
    missing = finetune_error(tmp_path, tmp_path / "nope.jsonl")
    assert "no such training file" in missing


def test_untrainable_architecture_and_names(tmp_path: Path, real_model_path: Path) -> None:
    import gguf

    fake = tmp_path / "tiny-gemma.gguf"
    w = gguf.GGUFWriter(str(fake), "gemma3")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = write_jsonl(tmp_path / "d.jsonl", secret_rows(3))
    out = one_line_error(
        runner.invoke(app, ["models", "finetune", str(fake), str(data), "--name", "g"])
    )
    assert "(gemma3) can't be trained" in out
    resume = finetune_error(tmp_path, data, "--resume")
    assert "no checkpoint to resume" in resume
    assert "--rank must be" in finetune_error(tmp_path, data, "--rank", "0")


def test_memory_estimate_refuses_before_training(
    tmp_path: Path, real_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ft, "available_memory", lambda: 64 << 20)
    data = write_jsonl(tmp_path / "d.jsonl", secret_rows(3))
    msg = finetune_error(tmp_path, data)
    assert "needs about" in msg and "is free" in msg


async def test_kill_stops_the_worker_and_registers_nothing(
    tmp_path: Path, real_model_path: Path
) -> None:
    import psutil

    settings = Settings(data_dir=tmp_path / "data")
    data = write_jsonl(tmp_path / "d.jsonl", secret_rows(12))
    async with Kernel(settings) as k:
        proc = await k.spawn(
            ft.finetune_program, BASE, str(data), "killed", {"epochs": 50}, name="finetune", caps=()
        )
        for _ in range(600):  # until training has started (the worker reports steps)
            if (proc.status or {}).get("phase") == "train" and proc.info()["tok_s"]:
                break
            await asyncio.sleep(0.1)
        assert proc.info()["status"]["total"] == 50 * 3
        workers = [c for c in psutil.Process().children(recursive=True) if "finetune_worker" in " ".join(c.cmdline())]  # fmt: skip
        assert workers
        k.signal(proc.pid, Signal.KILL, reason="test")
        await k.wait(proc.pid)
        assert proc.state in (ProcessState.ZOMBIE, ProcessState.EXITED) or not proc.alive
        # KILL ends the process at once; its task then unwinds on this loop and kills the
        # worker: wait without blocking the loop
        for _ in range(100):
            if not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
                break
            await asyncio.sleep(0.1)
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        assert "killed" not in [e.name for e in k.library.list()]


async def test_chat_examples_tokenize_as_inference_renders_them(real_kernel: Any) -> None:
    """The trained tokens are exactly the prompt inference sends, then the answer."""
    eng = await real_kernel.engine(None)
    b = eng.backend
    tok = Tokenizer(
        lambda t, s: b.tokenize(t, add_special=s),
        lambda m, g: real_kernel.chat_text(eng, m, add_generation_prompt=g), 2,
    )  # fmt: skip
    msgs = secret_rows(1)[0]["messages"]
    path = write_jsonl(Path(real_kernel.settings.data_dir) / "one.jsonl", [{"messages": msgs}])
    ex = load_dataset(path, tok, n_ctx=512).train[0]
    prompt = await real_kernel.render_chat(msgs[:1])
    assert ex.tokens[: len(prompt)] == prompt
    assert all(x == -100 for x in ex.labels[: len(prompt)])
    answer = b.tokenize("PINEAPPLE-0 is the secret word.<|im_end|>\n", add_special=False)
    assert ex.tokens[len(prompt) :] == answer and ex.labels[len(prompt) :] == answer
    with pytest.raises(DatasetError, match="weight must be 0 or 1"):
        bad = [{"messages": [{**msgs[0]}, {**msgs[1], "weight": 2}]}]
        load_dataset(
            write_jsonl(Path(real_kernel.settings.data_dir) / "w.jsonl", bad), tok, n_ctx=512
        )


def test_rest_serves_base_plus_adapter_and_the_adapter_name(trained: dict[str, Any]) -> None:
    import openai

    from llmos.server import BackgroundServer, create_app

    server = BackgroundServer(create_app(trained["settings"]))
    url = server.start()
    try:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
            ids = [m.id for m in c.models.list().data]
            assert "secret" in ids
            card = c.models.retrieve(f"{BASE}+secret").model_dump()
            assert card["id"] == f"{BASE}+secret" and card["base"] == BASE and card["can_chat"]
            question = [{"role": "user", "content": "Say the secret word 51."}]
            texts = [
                c.chat.completions.create(model=m, messages=question, temperature=0, max_tokens=12)  # type: ignore[arg-type]
                .choices[0].message.content
                for m in (f"{BASE}+secret", "secret", BASE)
            ]  # fmt: skip
            assert texts[0] and texts[0].startswith("PINEAPPLE-51") and texts[1] == texts[0]
            assert "PINEAPPLE" not in (texts[2] or "")
            with pytest.raises(openai.NotFoundError):
                c.chat.completions.create(model=f"{BASE}+{BASE}", messages=question, max_tokens=4)  # type: ignore[arg-type]
    finally:
        server.stop()


def test_merge_folds_the_adapter_into_a_full_model(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOS_DATA_DIR", str(trained["settings"].data_dir))
    r = runner.invoke(app, ["models", "merge", "secret", "--type", "Q8_0", "--no-progress"])
    assert r.exit_code == 0, r.output
    lib = ModelLibrary(trained["settings"].data_dir)
    name = f"{BASE}-secret-q8_0"
    info = lib.info(name)
    assert info["quantization"] == "Q8_0" and info["lineage"]["parent"] == BASE
    assert info["lineage"]["merged_adapter"]["adapter"] == "secret"
    assert info["lineage"]["merged_adapter"]["tensors"] == 30 * 7  # every projection of every block

    async def ask() -> str:
        async with Kernel(trained["settings"]) as k:

            async def prog(ctx: Any) -> str:
                q = [{"role": "user", "content": "Say the secret word 63."}]
                return str((await ctx.sys.llm.chat(messages=q, temperature=0.0, max_tokens=12, stream=False)).text)  # fmt: skip

            p = await k.spawn(prog, model=name)
            await k.wait(p.pid)
            return str(p.result)

    assert asyncio.run(ask()).startswith(
        "PINEAPPLE-"
    )  # the merged model learned it too (the base never says it)
    assert "not an adapter" in one_line_error(runner.invoke(app, ["models", "merge", BASE]))
