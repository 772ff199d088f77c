"""ModelManager: several models at once, RAM budget with LRU unloading, keep-alive."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from llmos.config import load_settings
from llmos.core.sampling import SamplingParams
from llmos.errors import ChatTemplateError, ModelError, ModelNotFound
from llmos.kernel.models import ModelLibrary, ModelManager
from llmos.kernel.scripted import ScriptedBackend


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def manager(
    tmp_path: Path, sizes: dict[str, int], **settings: Any
) -> tuple[ModelManager, Clock, list[str]]:
    loaded: list[str] = []
    s = load_settings(data_dir=tmp_path, **settings)
    lib = ModelLibrary(tmp_path)
    for name in sizes:
        (tmp_path / f"{name}.gguf").write_bytes(b"")

    def factory(entry: Any, progress: Any) -> ScriptedBackend:
        progress(0.5)
        progress(1.0)
        loaded.append(entry.name)
        b = ScriptedBackend(name=entry.name)
        b.size_bytes = sizes[entry.name]  # type: ignore[attr-defined]
        return b

    lib.get = lambda name: type(
        "E", (), {"name": name, "path": tmp_path / f"{name}.gguf", "remote": False}
    )()  # type: ignore[method-assign]
    clock = Clock()
    return ModelManager(s, lib, backend_factory=factory, clock=clock), clock, loaded


def test_lru_unloads_past_the_ram_budget(tmp_path: Path) -> None:
    mb = 1024 * 1024
    mm, clock, loaded = manager(
        tmp_path, {"a": 60 * mb, "b": 60 * mb, "c": 60 * mb}, ram_budget_mb=150
    )
    seen: list[float] = []
    mm.get("a", progress=seen.append)
    clock.t = 1
    mm.get("b")
    clock.t = 2
    mm.get("a")  # a is now more recently used than b
    clock.t = 3
    mm.get("c")
    assert sorted(mm.loaded) == ["a", "c"]  # b was least recently used
    assert seen == [0.5, 1.0]
    assert loaded == ["a", "b", "c"]
    mm.close()


def test_idle_models_unload_after_keep_alive(tmp_path: Path) -> None:
    mm, clock, _ = manager(tmp_path, {"a": 1, "b": 1}, keep_alive_s=10)
    mm.get("a")
    clock.t = 8
    mm.get("b")
    clock.t = 12
    assert mm.reap_idle() == ["a"]
    assert list(mm.loaded) == ["b"]
    mm.close()


def test_a_busy_model_is_not_unloaded(tmp_path: Path) -> None:
    mm, clock, _ = manager(tmp_path, {"a": 1}, keep_alive_s=1)
    eng = mm.get("a")
    seq = eng.submit("busy", SamplingParams(max_tokens=1000), sink=lambda ev: None)
    eng.pause(seq.id)  # a stopped process still holds its sequence
    for _ in range(200):
        if seq.id in eng.seqs and seq.paused:
            break
        time.sleep(0.01)
    clock.t = 100
    assert mm.reap_idle() == []
    mm.close()


def test_unknown_model_and_failed_load_are_typed(tmp_path: Path) -> None:
    lib = ModelLibrary(tmp_path)
    with pytest.raises(ModelNotFound, match="unknown model"):
        lib.get("nope")

    def broken(entry: Any, progress: Any) -> Any:
        raise RuntimeError("out of memory")

    mm = ModelManager(load_settings(data_dir=tmp_path), lib, backend_factory=broken)
    with pytest.raises(ModelError, match="could not load"):
        mm.get("smollm2-135m-instruct")


async def test_two_real_models_loaded_at_once(tmp_path: Path, real_model_path: Path) -> None:
    """SmolLM2 (default) and gemma3-270m (assembled from its wheel) side by side."""
    from llmos.kernel.kernel import Kernel

    s = load_settings(data_dir=tmp_path, n_seq_max=2, n_ctx=2048)
    async with Kernel(s) as k:
        smol, gemma = await asyncio.gather(k.engine(), k.engine("gemma3-270m"))
        assert sorted(k.models.loaded) == ["gemma3-270m", "smollm2-135m-instruct"]
        assert gemma.backend.info.architecture == "gemma3"  # type: ignore[attr-defined]
        p = SamplingParams(temperature=0, max_tokens=12)
        a, b = await asyncio.gather(
            smol.generate("The capital of France is", p).result(),
            gemma.generate("The capital of France is", p).result(),
        )
        assert a and b and a != b  # two different models answered concurrently
        # gemma3-270m is a base model with no chat template in its GGUF: its family's
        # well-known format serves, as if asked for by name, and `info` says so.
        hi = [{"role": "user", "content": "hi"}]
        toks = await k.render_chat(hi, "gemma3-270m")
        assert toks == await k.render_chat(hi, "gemma3-270m", chat_format="gemma")
        assert gemma.backend.tokenize("<start_of_turn>", add_special=False)[0] in toks
        assert toks != await k.render_chat(hi, "gemma3-270m", chat_format="chatml")
        info = k.library.info("gemma3-270m")
        assert info["architecture"] == "gemma3" and 200_000_000 < info["parameters"] < 300_000_000
        assert info["chat_template"] is False and info["can_chat"] is True
        assert info["chat_format"] == "gemma (the model family's format)"
        cfg = k.library.info("gemma3-270m", {"gemma3-270m": "chatml"})
        assert cfg["chat_format"] == "chatml (from chat_formats)"


def test_chat_format_precedence_and_families() -> None:
    from llmos.kernel.chat import choose_format, render_chat

    base = {"has_template": False, "architecture": "gemma3"}
    assert choose_format(**base).spec == "gemma"  # type: ignore[arg-type]
    assert choose_format(has_template=False, architecture="qwen2").spec == "chatml"
    assert choose_format(has_template=True, architecture="gemma3").source == "gguf"
    assert choose_format(configured="plain", **base).source == "config"  # type: ignore[arg-type]
    assert choose_format(requested="chatml", configured="plain", **base).spec == "chatml"  # type: ignore[arg-type]
    unknown = choose_format(has_template=False, architecture="llama")
    assert not unknown.can_chat and unknown.describe().startswith("none")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat([{"role": "user", "content": "hi"}], None, model="base-llama")
