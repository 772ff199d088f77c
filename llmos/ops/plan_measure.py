"""Measuring the service table `llmos plan` needs: seconds per request when k requests run
together on a real engine, for a few batch sizes k, cached as JSON in the data dir.

The formulas that use the table are in `llmos/ops/capacity.py`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.core.sampling import SamplingParams
from llmos.errors import LlmosError

if TYPE_CHECKING:
    from llmos.config import Settings
    from llmos.kernel.engine import EngineCore, Event
    from llmos.kernel.remote import RemoteEngine
    from llmos.ops.capacity import StepCosts

# A filler for prompts; each prompt starts with its own number so that no two share a
# prefix the engine could reuse (which would make prefill look free).
_FILLER = (
    "The river runs past the old mill and the garden where the lantern hangs by the "
    "window, and the harbor lights come on one by one as the evening falls. "
)
TIMEOUT_S = 600.0  # longest one batch may take before the measurement gives up
Timing = tuple[float, float | None, float | None]  # service, prompt step, decode step


def _prompt(engine: EngineCore, n_tokens: int, tag: str) -> list[int]:
    """Exactly `n_tokens` prompt tokens that begin with `tag`."""
    head = engine.tokenize(f"Request {tag}. ")
    filler = engine.tokenize(_FILLER, add_special=False)
    out = list(head)
    while len(out) < n_tokens:
        out.extend(filler)
    return out[:n_tokens]


class _Done:
    """A sink that counts finished sequences; `wait()` blocks until `n` have finished and
    raises a clear LlmosError on a timeout or a failed request."""

    def __init__(self, n: int, *, stopped_ok: bool = False) -> None:
        self.ok = ("stop", "length", "killed") if stopped_ok else ("stop", "length")
        self.left = n
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def __call__(self, events: list[Event]) -> None:
        from llmos.kernel.engine import DoneEvent

        for ev in events:
            if isinstance(ev, DoneEvent):
                with self.lock:
                    if ev.reason not in self.ok:
                        self.errors.append(f"{ev.reason}: {ev.error}")
                    self.left -= 1
                    if self.left == 0:
                        self.event.set()

    def wait(self, what: str) -> None:
        if not self.event.wait(TIMEOUT_S):
            raise LlmosError(f"measuring {what} took over {TIMEOUT_S:.0f} s")
        if self.errors:
            raise LlmosError(f"a measurement request failed ({self.errors[0]})")


def _params(output_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=output_tokens, ignore_eos=True)


def _run_batch(engine: EngineCore, prompts: list[list[int]], output_tokens: int) -> list[Timing]:
    """Submit every prompt at once and wait. For each: the seconds from submission to its
    last token (its time holding a slot, as all of them fit the slots), its prompt's step
    (admission to first token) and its mean decode step (first token to last, per token
    after the first); None where the stats lack them."""
    done = _Done(len(prompts))
    t0 = time.perf_counter()
    seqs = [engine.submit(p, _params(output_tokens), sink=done) for p in prompts]
    done.wait(f"{len(prompts)} requests")
    wall = time.perf_counter() - t0
    # a sequence's own stats (the engine's clock); the batch's wall time if one lacks them
    out: list[Timing] = []
    for seq in seqs:
        st = seq.stats
        if st.finished is None or st.first_token is None or st.admitted is None:
            out.append((wall, None, None))
            continue
        decode = (st.finished - st.first_token) / (st.generated - 1) if st.generated > 1 else None
        out.append((st.finished - st.submitted, st.first_token - st.admitted, decode))
    return out


def _mixed_step(engine: EngineCore, d: int, prompt_tokens: int, tag: str) -> float | None:
    """Seconds of the evaluation of one prompt while `d` other sequences decode (what a
    request arriving at a busy engine gets): `d` requests are started, and once all of
    them decode, one more; then the `d` are stopped. None when the measurement did not
    hold (one of the `d` failed, or ended before the extra prompt was evaluated)."""
    background = _Done(d, stopped_ok=True)
    long = max(1, min(1024, engine.seq_ctx_max - prompt_tokens - 1))
    busy = [
        engine.submit(_prompt(engine, prompt_tokens, f"{tag}-{j}"), _params(long), sink=background)
        for j in range(d)
    ]
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while any(s.stats.first_token is None for s in busy):
            if background.errors or background.left < d or time.monotonic() > deadline:
                return None  # one failed or ended: the figure would not be what it says
            time.sleep(0.002)
        alone = _Done(1)
        extra = engine.submit(_prompt(engine, prompt_tokens, f"{tag}-x"), _params(1), sink=alone)
        alone.wait(f"a prompt beside {d} decoding")
        st = extra.stats
        if st.first_token is None or st.admitted is None or background.left < d:
            return None
        return st.first_token - st.admitted
    finally:
        for s in busy:
            engine.kill(s.id)
        background.wait(f"{d} requests decoding")


def _summarise(
    k: int,
    runs: list[list[Timing]],
    table: dict[int, float],
    steps: dict[int, tuple[float, float]],
) -> None:
    """Enter batch size k's runs (each a timing per request) in the table (the median of
    the runs' mean service times) and the step timings (medians over all requests)."""
    table[k] = statistics.median(sum(t for t, _, _ in each) / len(each) for each in runs)
    prefills = [p for each in runs for _, p, _ in each if p is not None]
    decodes = [d for each in runs for _, _, d in each if d is not None]
    if prefills and decodes:
        steps[k] = (statistics.median(prefills), statistics.median(decodes))


@dataclass
class Measured:
    """What `measure_engine` found: {k: seconds per request when k run together} (the
    service table), {k: (seconds of the step that evaluates k prompts, seconds of a step
    that decodes k tokens)}, and {d: seconds of the step that evaluates one prompt while d
    others decode}, for `capacity.StepCosts.fit`."""

    table: dict[int, float]
    steps: dict[int, tuple[float, float]]
    mixed: dict[int, float]  # d: seconds of a step with one prompt and d decodes


def measure_engine(
    engine_factory: Callable[[], EngineCore],
    prompt_tokens: int,
    output_tokens: int,
    sizes: list[int],
    *,
    repeats: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Measured:
    """The service table {k: mean seconds per request when k requests of `prompt_tokens`
    prompt tokens and `output_tokens` output tokens (greedy, no early end) are submitted
    together}, for each k in `sizes`. Each k is no more than the engine's slots, so none waits for a slot and
    the figure is pure service time at concurrency k. One warm-up request runs first
    (the first decode pays for allocations a steady engine does not). The engine is made
    by `engine_factory`, started if it is not, and closed at the end; `progress(k)` is
    called before each size is measured. With `repeats` > 1 each size is run that many
    times and the median kept: a machine busy with other work stalls a run now and then,
    and one stall would otherwise become the figure. The same runs give the step timings
    (`Measured.steps`, medians likewise); then, for each measured k below the slots, a
    prompt is timed beside k decoding requests (`Measured.mixed`)."""
    if prompt_tokens < 1 or output_tokens < 1 or repeats < 1:
        raise ValueError("prompt and output sizes and repeats must be at least 1")
    engine = engine_factory()
    try:
        engine.start()
        slots = len(engine.slots)
        if any(k < 1 or k > slots for k in sizes):
            raise ValueError(f"batch sizes must be between 1 and the engine's {slots} slots")
        _run_batch(engine, [_prompt(engine, prompt_tokens, "warm-up")], min(output_tokens, 4))
        table: dict[int, float] = {}
        steps: dict[int, tuple[float, float]] = {}
        for k in sorted(set(sizes)):
            if progress is not None:
                progress(k)
            runs = [
                _run_batch(
                    engine,
                    [_prompt(engine, prompt_tokens, f"{k}-{r}-{j}") for j in range(k)],
                    output_tokens,
                )
                for r in range(repeats)
            ]
            _summarise(k, runs, table, steps)
        mixed: dict[int, float] = {}
        for d in sorted({k for k in sizes if k < slots}):
            n = max(repeats, 5)  # one prompt a try: cheap, and one stall would skew the line
            tries = [_mixed_step(engine, d, prompt_tokens, f"mix-{d}-{r}") for r in range(n)]
            kept = [x for x in tries if x is not None]
            if kept:
                mixed[d] = statistics.median(kept)
        return Measured(table, steps, mixed)
    finally:
        engine.close()


async def measure_remote(
    engine: RemoteEngine,
    prompt_tokens: int,
    output_tokens: int,
    sizes: list[int],
    *,
    repeats: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Measured:
    """`measure_engine` for a model another engine serves: k requests sent together over
    its API for each k (at most the entry's `parallel`), timed from submission to the
    last streamed token; the step timings from the first token and the streaming rate.
    With no tokenizer here the prompt is text of about `prompt_tokens` tokens (four
    characters a token); the server's usage, where it reports one, says what it counted."""
    if any(k < 1 or k > engine.parallel for k in sizes):
        raise ValueError(
            f"batch sizes must be between 1 and {engine.name}'s {engine.parallel} at once"
        )
    params = SamplingParams(temperature=0, max_tokens=output_tokens, ignore_eos=True)

    def text(tag: str) -> str:
        out = f"Request {tag}. "
        while len(out) < 4 * prompt_tokens:
            out += _FILLER
        return out[: 4 * prompt_tokens]

    async def one(tag: str) -> Timing:
        gen = engine.generate(text(tag), params)
        async for _ in gen:
            pass
        st = gen.stats
        end = st.finished if st.finished is not None else time.monotonic()
        if st.first_token is None or st.admitted is None:
            return end - st.submitted, None, None
        n = st.generated
        decode = (end - st.first_token) / (n - 1) if n > 1 else None
        return end - st.submitted, st.first_token - st.admitted, decode

    await one("warm-up")
    table: dict[int, float] = {}
    steps: dict[int, tuple[float, float]] = {}
    for k in sorted(set(sizes)):
        if progress is not None:
            progress(k)
        runs = [
            list(await asyncio.gather(*(one(f"{k}-{r}-{j}") for j in range(k))))
            for r in range(repeats)
        ]
        _summarise(k, runs, table, steps)
    return Measured(table, steps, {})


def default_sizes(slots: int) -> list[int]:
    """Batch sizes worth measuring up to `slots`: 1, 2, 4, ... and `slots` itself."""
    out, k = [], 1
    while k < slots:
        out.append(k)
        k *= 2
    return [*out, slots]


# -- the cache ----------------------------------------------------------------------------
def cache_path(data_dir: Path, model: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in model)
    return data_dir / "plan" / f"{safe}.json"


def _cached(data_dir: Path, model: str, prompt_tokens: int, output_tokens: int) -> Any:
    """The cache file's data for `model` if it was measured at these sizes, else None."""
    try:
        data: Any = json.loads(cache_path(data_dir, model).read_text())
        if data["prompt_tokens"] != prompt_tokens or data["output_tokens"] != output_tokens:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: measure again
    return data


def load_table(
    data_dir: Path, model: str, prompt_tokens: int, output_tokens: int
) -> dict[int, float] | None:
    """The cached table for `model`, if it was measured at these prompt and output sizes."""
    data = _cached(data_dir, model, prompt_tokens, output_tokens)
    try:
        table = {int(k): float(v) for k, v in data["table"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return table or None


def load_costs(
    data_dir: Path, model: str, prompt_tokens: int, output_tokens: int, prefill_chunk: int = 256
) -> StepCosts | None:
    """The step costs fitted to the cached step timings for `model` (a table cached before
    they were kept has none)."""
    from llmos.ops.capacity import StepCosts

    data = _cached(data_dir, model, prompt_tokens, output_tokens)
    try:
        steps = {int(k): (float(v[0]), float(v[1])) for k, v in data["steps"].items()}
        mixed = {int(k): float(v) for k, v in (data.get("mixed") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    return StepCosts.fit(steps, prompt_tokens, mixed, prefill_chunk) if steps else None


def save_table(
    data_dir: Path,
    model: str,
    prompt_tokens: int,
    output_tokens: int,
    table: dict[int, float],
    steps: dict[int, tuple[float, float]] | None = None,
    mixed: dict[int, float] | None = None,
) -> Path:
    path = cache_path(data_dir, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "model": model,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "table": {str(k): v for k, v in sorted(table.items())},
        "steps": {str(k): list(v) for k, v in sorted((steps or {}).items())},
        "mixed": {str(k): v for k, v in sorted((mixed or {}).items())},
        "measured_at": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def settings_engine_factory(
    settings: Settings, model: str, slots: int | None = None
) -> Callable[[], EngineCore]:
    """An engine for `model` built from `settings` as the kernel builds one (threads,
    batching, KV type), owned by the caller: closing it frees the model. With `slots`,
    it has that many slots, each with the context a configured slot has (to measure
    batches larger than the configured `n_seq_max`)."""

    def make() -> EngineCore:
        from llmos.kernel.models import ModelLibrary, ModelManager

        # keep_alive 0: no reaper thread; the manager is dropped and the engine is ours
        update: dict[str, Any] = {"keep_alive_s": 0}
        if slots is not None and slots != settings.n_seq_max:
            per_slot = settings.n_ctx // settings.n_seq_max
            update |= {"n_seq_max": slots, "n_ctx": per_slot * slots}
        quiet = settings.model_copy(update=update)
        return ModelManager(quiet, ModelLibrary(settings.data_dir)).get(model)

    return make
