"""Perplexity of a model over a text, by llama.cpp's `llama-perplexity` method, so the two
give the same number on the same file and context:

- the whole text is tokenized once, with BOS when the model adds one;
- it is cut into non-overlapping chunks of `ctx` tokens (a tail shorter than `ctx` is
  dropped), and each chunk is evaluated from an empty cache with its first token replaced
  by BOS when the model adds one;
- only the second half of each chunk is scored (the logits at positions `ctx/2 .. ctx-2`
  predict tokens `ctx/2+1 .. ctx-1`), so every scored token has at least half a context
  behind it;
- the negative log-likelihood of each scored token is `max + log(sum(exp(logit - max))) -
  logit[target]`, exponentials in float32 summed in float64 as llama.cpp does;
- PPL = exp(mean NLL), and its ± error is llama-perplexity's: the standard error of the
  mean NLL (`sqrt(var / (count - 1))`) times PPL.

llama.cpp drives the model (`kernel.llama_backend.LlamaScorer`); this module holds the
method. The work is synchronous and meant for a worker thread (`in_worker`), with a
progress callback per chunk and a cancel event checked between chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from llmos.errors import LlmosError, UserError
from llmos.ops.evalstore import EvalRun, EvalStore, file_sha256

# Rows of logits handled at once: 64 x 49k floats is 12 MB, which stays in cache better
# than a whole chunk's 50 MB and keeps the temporary buffer small.
_ROWS = 64

T = TypeVar("T")


class EvalCancelled(LlmosError):
    """A perplexity run stopped by its cancel event between two chunks."""


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    error: float  # ± as llama-perplexity prints it (standard error of the mean NLL x PPL)
    ctx: int
    batch: int
    threads: int
    n_tokens: int  # tokens in the whole text (BOS included when the model adds one)
    n_chunks: int
    n_scored: int
    seconds: float  # evaluation and scoring, after the model is loaded
    tokens_per_s: float  # tokens evaluated (n_chunks * ctx) per second
    size_bytes: int  # the model's tensor data, as llama.cpp counts it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def nll_rows(logits: Any, targets: Any) -> Any:
    """Negative log-likelihood (float64) of `targets[i]` under the softmax of `logits[i]`,
    for float32 logits shaped (rows, vocab), with no Python loop over the vocabulary."""
    import numpy as np

    rows = logits.shape[0]
    out = np.empty(rows, dtype=np.float64)
    buf = np.empty((min(rows, _ROWS), logits.shape[1]), dtype=np.float32)
    for lo in range(0, rows, _ROWS):
        block = logits[lo : lo + _ROWS]
        n = block.shape[0]
        tmp = buf[:n]
        top = block.max(axis=1)
        np.subtract(block, top[:, None], out=tmp)
        np.exp(tmp, out=tmp)  # float32, as llama.cpp's expf
        total = tmp.sum(axis=1, dtype=np.float64)
        picked = block[np.arange(n), targets[lo : lo + n]]
        out[lo : lo + n] = top.astype(np.float64) + np.log(total) - picked.astype(np.float64)
    return out


def summarize(nll: float, nll2: float, count: int) -> tuple[float, float]:
    """(PPL, ±) from the sums of NLL and NLL² over `count` tokens, as llama-perplexity
    computes its final estimate."""
    mean = nll / count
    ppl = math.exp(mean)
    var = nll2 / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return ppl, err


def chunk_tokens(tokens: list[int], ctx: int, bos: int | None) -> list[list[int]]:
    """The non-overlapping chunks of `ctx` tokens, each starting with `bos` when given."""
    chunks = [tokens[i : i + ctx] for i in range(0, len(tokens) - ctx + 1, ctx)]
    if bos is not None:
        chunks = [[bos, *c[1:]] for c in chunks]
    return chunks


def check_settings(ctx: int, batch: int) -> None:
    if ctx < 8:
        raise UserError(f"--ctx {ctx}: use at least 8 tokens per chunk")
    if batch < 1 or (batch > ctx and batch % ctx):
        raise UserError(
            f"--batch {batch}: use a size below --ctx {ctx} or a multiple of it "
            "(several chunks per decode), as llama-perplexity requires"
        )


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a text file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    return data.decode("utf-8", errors="replace")


def perplexity(
    model_path: Path,
    text: str,
    *,
    ctx: int = 512,
    batch: int | None = None,
    threads: int = 2,
    n_gpu_layers: int = 0,
    flash_attn: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    source: str = "the text",
) -> PerplexityResult:
    """The perplexity of the model at `model_path` over `text`, scored in chunks of `ctx`
    tokens (`batch` tokens per decode, `ctx` by default). `progress(done, total)` is
    called after each decode; `cancel` is checked before each."""
    import numpy as np

    from llmos.kernel.llama_backend import LlamaScorer

    batch = batch or ctx
    check_settings(ctx, batch)
    if not text.strip():
        raise UserError(f"{source} is empty")
    scorer = LlamaScorer(
        model_path,
        n_chunk=ctx,
        n_batch=batch,
        n_threads=threads,
        n_gpu_layers=n_gpu_layers,
        flash_attn=flash_attn,
    )
    try:
        tokens = scorer.tokenize(text)
        if len(tokens) < ctx:
            raise UserError(
                f"{source} is {len(tokens)} tokens long; one chunk needs {ctx} "
                "(use a longer text or a smaller --ctx)"
            )
        chunks = chunk_tokens(tokens, ctx, scorer.bos if scorer.add_bos else None)
        first, last = ctx // 2, ctx - 1  # the logits at ctx-1 predict nothing in the chunk
        nll = nll2 = 0.0
        count = 0
        started = time.perf_counter()
        if progress is not None:
            progress(0, len(chunks))
        for i in range(0, len(chunks), scorer.n_seq):
            if cancel is not None and cancel.is_set():
                raise EvalCancelled(f"perplexity cancelled after {i} of {len(chunks)} chunks")
            group = chunks[i : i + scorer.n_seq]
            logits = scorer.logits(group, first, last)
            for s, chunk in enumerate(group):
                targets = np.asarray(chunk[first + 1 : last + 1], dtype=np.intp)
                v = nll_rows(logits[s], targets)
                nll += float(v.sum())
                nll2 += float(np.dot(v, v))
                count += len(v)
            if progress is not None:
                progress(i + len(group), len(chunks))
        seconds = time.perf_counter() - started
        ppl, err = summarize(nll, nll2, count)
        return PerplexityResult(
            ppl=ppl,
            error=err,
            ctx=ctx,
            batch=scorer.n_batch,
            threads=threads,
            n_tokens=len(tokens),
            n_chunks=len(chunks),
            n_scored=count,
            seconds=seconds,
            tokens_per_s=len(chunks) * ctx / seconds if seconds > 0 else 0.0,
            size_bytes=scorer.size_bytes,
        )
    finally:
        scorer.close()


async def in_worker(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """`fn(*args, cancel=event, **kw)` (`perplexity` or `evaluate_file`) on a worker thread,
    so an event loop (the kernel's, a server's) keeps running while llama.cpp works.
    Cancelling the awaiting task sets the event, and the worker stops before its next chunk;
    the task ends only once it has (a KILLed process's model is closed when its task ends),
    unless it is cancelled again while it waits."""
    cancel = kw.pop("cancel", None) or threading.Event()
    # shielded, so a cancellation leaves the thread's future to be waited for below
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, cancel=cancel, **kw))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # EvalCancelled, most likely: retrieved, so asyncio does not log it
        raise


def shipped_text() -> Path:
    """The English text shipped with llmos for perplexity (written for llmos)."""
    return Path(__file__).parent / "data" / "eval-text.txt"


def evaluate_file(
    data_dir: Path,
    model: str,
    file: Path | None,
    *,
    ctx: int = 512,
    batch: int | None = None,
    threads: int = 2,
    n_gpu_layers: int = 0,
    flash_attn: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    text: str | None = None,
    source: str | None = None,
) -> tuple[EvalRun, PerplexityResult]:
    """Score `model` (a catalog name or a GGUF path) over `file` (the shipped text when
    None) and store the run in `<data_dir>/eval.db`. Inputs are checked before the model
    loads, so a bad file or setting costs nothing.

    `text` given instead of a file (a syscall's caller sends the text itself) is scored and
    hashed as the UTF-8 bytes of a file holding it would be; `source` names it in the run."""
    from llmos.kernel.models import ModelLibrary

    check_settings(ctx, batch or ctx)
    if text is not None:
        path = Path(source or "(text)")
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    else:
        path = file if file is not None else shipped_text()
        text = read_text(path)  # before the model: a missing file is one line, at once
        sha = file_sha256(path)
        if file is None:
            source = f"(shipped) {path.name}"
    if not text.strip():
        raise UserError(f"{path} is empty")
    entry = ModelLibrary(data_dir).get(model)
    result = perplexity(
        entry.path,
        text,
        ctx=ctx,
        batch=batch,
        threads=threads,
        n_gpu_layers=n_gpu_layers,
        flash_attn=flash_attn,
        progress=progress,
        cancel=cancel,
        source=str(path),
    )
    # where the model came from, when the catalog records it (a parent and an operation,
    # or a hub repo); older catalogs kept none
    lineage = getattr(entry, "lineage", None) or (entry.meta or {}).get("lineage")
    run = EvalRun(
        kind="perplexity",
        model=entry.name,
        model_path=str(entry.path),
        lineage=lineage if isinstance(lineage, dict) else None,
        file=source or str(path),
        file_sha256=sha,
        settings={"ctx": ctx, "batch": result.batch, "threads": threads, "flash_attn": flash_attn},
        scores={
            "ppl": result.ppl,
            "ppl_error": result.error,
            "n_tokens": result.n_tokens,
            "n_chunks": result.n_chunks,
            "n_scored": result.n_scored,
        },
        size_bytes=entry.path.stat().st_size,
        tokens_per_s=result.tokens_per_s,
        seconds=result.seconds,
    )
    with EvalStore.open(data_dir) as store:
        store.add(run)
    return run, result
