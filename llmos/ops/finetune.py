"""`llmos models finetune`: a LoRA adapter trained for a GGUF base model, registered in
the model library beside it.

The steps, each failing with one line (a `UserError`) and leaving nothing registered:

1. resolve the base (a model, not an adapter) and check its architecture can be trained
   (`lora_gguf.TRAINABLE`), the adapter's name (an existing one needs `force`, or `resume`
   to continue its training);
2. read, check and tokenize the data with the base's own tokenizer and chat template
   (`trainset.py`: a bad line names its number, an example over the context is an error
   unless `truncate`), split off a held-out part, and estimate the memory training needs
   against what the machine has free;
3. train in a worker process (`finetune_worker.py`: `transformers` loads the GGUF, `peft`
   trains the adapter), which reports each step (loss, tokens/s) and checkpoints every
   epoch; the calling process's `status` shows where it is in `ps`, and killing the
   process kills the worker;
4. write the adapter as a llama.cpp LoRA GGUF, rename it into place and register it with
   its base, rank, data hash and losses; a loss-curve PNG is left beside it.

An adapter runs per request: `model="BASE+NAME"`, or the adapter's own name.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.core.process import Process
from llmos.core.units import human_bytes
from llmos.errors import ModelError, UserError
from llmos.kernel.gguf import GGUFInfo, read_gguf
from llmos.kernel.models import ModelEntry
from llmos.ops.lora_gguf import TRAINABLE
from llmos.ops.trainset import Dataset, Tokenizer, load_dataset
from llmos.ops.worker import Worker

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel

Event = dict[str, Any]


class NotEnoughMemory(UserError):
    """Training would need more memory than the machine has free."""


@dataclass(frozen=True)
class Hyper:
    """Training settings; the defaults suit a small model on a CPU."""

    rank: int = 8
    alpha: float = 16.0
    epochs: int = 2
    lr: float = 1e-3
    batch: int = 4  # examples per optimizer step
    dropout: float = 0.0
    held_out: float = 0.1
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.rank <= 256:
            raise UserError(f"--rank must be 1..256, not {self.rank}")
        if self.alpha <= 0 or self.lr <= 0 or not 0 <= self.dropout < 1:
            raise UserError("--alpha and --lr must be positive, --dropout in [0, 1)")
        if self.epochs < 1 or self.batch < 1 or not 0 <= self.held_out < 1:
            raise UserError("--epochs and --batch must be at least 1, --held-out in [0, 1)")


@dataclass
class Finetuned:
    entry: ModelEntry
    dataset: Dataset
    result: dict[str, Any]
    plot: Path
    seconds: float


def adapter_paths(data_dir: Path, name: str) -> tuple[Path, Path]:
    """Where adapter `name` lives, and its training folder (checkpoint, data, plot)."""
    root = data_dir / "adapters"
    return root / f"{name}.gguf", root / f"{name}.train"


def estimate_memory(header: GGUFInfo, longest: int, rank: int) -> int:
    """Bytes training needs, roughly: the base as float32, the adapter with its gradients
    and Adam's two moments, activations kept for the backward pass over the longest
    example, its logits, and torch itself."""
    md, arch = header.metadata, header.architecture
    hidden = int(md.get(f"{arch}.embedding_length", 0) or 0)
    ffn = int(md.get(f"{arch}.feed_forward_length", 0) or 0)
    layers = int(md.get(f"{arch}.block_count", 0) or 0)
    vocab = next((max(t.shape) for t in header.tensors if t.name == "token_embd.weight"), 0)
    lora = layers * rank * (4 * hidden * 2 + 3 * (hidden + ffn)) * 4 * 4
    activations = longest * layers * (24 * hidden + 8 * ffn) * 4
    logits = longest * vocab * 4 * 3
    return int(header.n_params * 4 * 1.15 + lora + activations + logits + (700 << 20))


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


async def finetune(
    kernel: Kernel,
    base: str,
    data: Path,
    *,
    name: str,
    hyper: Hyper | None = None,
    n_ctx: int | None = None,
    truncate: bool = False,
    force: bool = False,
    resume: bool = False,
    threads: int | None = None,
    process: Process | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Finetuned:
    """Train and register adapter `name` for `base` on `data`; see the module's docstring.
    `on_event` hears the worker's events (`loaded`, `step`, `epoch`) and `tokenized`."""
    started = time.perf_counter()
    hyper = hyper or Hyper()
    hyper.check()
    library = kernel.library
    base_name, adapter = library.resolve(base)
    if adapter is not None:
        raise UserError(f"{base!r} is an adapter; train on its base model ({base_name})")
    entry = library.get(base_name)
    header = read_gguf(entry.path)
    if header.architecture not in TRAINABLE:
        raise ModelError(
            f"{entry.name} ({header.architecture}) can't be trained: llmos trains LoRA adapters "
            f"for {', '.join(sorted(TRAINABLE))}-architecture models (SmolLM2, Llama, ...)"
        )
    dest, work = adapter_paths(kernel.settings.data_dir, name)
    name = library.name_for(dest, name)
    exists = any(e.name == name for e in library.list())
    if resume and not (work / "checkpoint.pt").is_file():
        raise UserError(f"adapter {name!r} has no checkpoint to resume from")
    if exists and not (force or resume):
        raise UserError(
            f"model or adapter {name!r} exists; --force replaces it, --resume continues its training"
        )

    def emit(event: Event) -> None:
        if process is not None:
            process.status = _status(event, process.status)
        if on_event is not None:
            on_event(event)

    engine = await kernel.engine(entry.name)  # the tokenizer and chat template inference uses
    backend = engine.backend
    eos = next(iter(backend.tokenize(backend.special_tokens()["eos_token"], add_special=False)))
    tok = Tokenizer(
        tokenize=lambda text, special: backend.tokenize(text, add_special=special),
        chat_text=lambda msgs, gen: kernel.chat_text(engine, msgs, add_generation_prompt=gen),
        eos=eos,
    )
    ctx_len = n_ctx or min(engine.seq_ctx_max, 2048)
    ds = await asyncio.to_thread(
        load_dataset, Path(data), tok, n_ctx=ctx_len, held_out=hyper.held_out,
        truncate=truncate, seed=hyper.seed,
        progress=lambda done, total: emit({"event": "tokenize", "done": done, "total": total}),
    )  # fmt: skip
    longest = max(len(e.tokens) for e in ds.train + ds.held_out)
    need = estimate_memory(header, longest, hyper.rank)
    free = available_memory()
    if free is not None and need > free:
        raise NotEnoughMemory(
            f"training {entry.name} needs about {human_bytes(need)} of memory and "
            f"{human_bytes(free)} is free; use shorter examples or a smaller base model"
        )
    emit({"event": "tokenized", "examples": len(ds.train), "held_out": len(ds.held_out),
          "tokens": ds.tokens, "longest": longest, "truncated": ds.truncated,
          "memory_needed": need})  # fmt: skip

    work.mkdir(parents=True, exist_ok=True)
    (work / "data.json").write_text(json.dumps({
        "train": [asdict(e) for e in ds.train], "held_out": [asdict(e) for e in ds.held_out],
    }))  # fmt: skip
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    job = {
        "base": str(entry.path), "data": str(work / "data.json"), "out_dir": str(work),
        "adapter": str(tmp), "architecture": header.architecture, "resume": resume,
        "threads": threads or kernel.settings.n_threads, **asdict(hyper),
        "meta": {"base": entry.name, "data_sha256": ds.sha256},
    }  # fmt: skip
    worker = Worker.start("llmos.ops.finetune_worker", "fine-tune", env={"HF_HUB_OFFLINE": "1"})
    run = asyncio.ensure_future(asyncio.to_thread(worker.run, job, emit))
    try:
        done = await asyncio.shield(run)
    except asyncio.CancelledError:  # a KILL: the worker goes at once, its checkpoint stays
        worker.proc.kill()
        await asyncio.wait([run])
        if not run.cancelled():
            run.exception()
        raise
    finally:
        worker.close()
        if process is not None:
            process.status = None
    try:
        os.replace(tmp, dest)
        last = done.get("last_epoch") or {}
        meta = {
            "rank": hyper.rank, "alpha": hyper.alpha, "data_sha256": ds.sha256,
            "train_examples": len(ds.train), "held_out_examples": len(ds.held_out),
            "train_loss": last.get("train_loss"), "held_out_loss": last.get("held_out_loss"),
            "epochs": hyper.epochs, "lr": hyper.lr, "train_seconds": done.get("train_seconds"),
            "tokens_per_s": done.get("tokens_per_s"), "plot": done.get("plot"),
        }  # fmt: skip
        lineage = {
            "operation": "finetune", "parent": entry.name, "parent_path": str(entry.path),
            "parent_quantization": header.quantization,
            "parameters": {**asdict(hyper), "n_ctx": ctx_len, "truncate": truncate},
            "data": ds.path, "data_sha256": ds.sha256,
            "tool": "transformers + peft (LoRA), exported to a llama.cpp adapter GGUF",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        if exists:
            library.remove(name)
        adapter_entry = library.add_adapter(dest, name, base=entry.name, meta=meta, lineage=lineage)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Finetuned(
        adapter_entry, ds, done, Path(str(done.get("plot"))), time.perf_counter() - started
    )


def _status(event: Event, prev: dict[str, Any] | None) -> dict[str, Any]:
    """What `ps` shows of a training: the phase, and the latest step's figures."""
    kind = event.get("event")
    out = dict(prev or {})
    if kind == "tokenize":
        out.update(phase="tokenize", done=event["done"], total=event["total"])
    elif kind == "loaded":
        out.update(phase="train", done=0)
    elif kind == "step":
        out.update(
            phase="train", epoch=event["epoch"], done=event["step"], total=event["steps"],
            loss=event["loss"], tok_s=event["tokens_per_s"],
        )  # fmt: skip
    elif kind == "epoch":
        out.update(held_out_loss=event.get("held_out_loss"))
    return out


def remove_adapter_files(data_dir: Path, name: str) -> None:
    """An adapter's file and training folder (checkpoint, data, plot)."""
    dest, work = adapter_paths(data_dir, name)
    dest.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)


async def finetune_program(
    ctx: Any, base: str, data: str, name: str, opts: dict[str, Any]
) -> dict[str, Any]:
    """`finetune` as a kernel process's program: its `status` shows the training in `ps`,
    and a KILL ends the worker. `opts` holds `Hyper`'s fields and finetune's keywords, and
    may carry `on_event` (a callable: the CLI's progress) and `box` (a dict that receives
    the typed error, so the caller reports it in one line)."""
    kw = dict(opts)
    box = kw.pop("box", None)
    on_event = kw.pop("on_event", None)
    fields = set(Hyper.__dataclass_fields__)
    hyper = Hyper(**{k: v for k, v in kw.items() if k in fields})
    rest = {k: v for k, v in kw.items() if k not in fields}
    try:
        done = await finetune(
            ctx.kernel, base, Path(data), name=name, hyper=hyper, process=ctx.process,
            on_event=on_event, **rest,
        )  # fmt: skip
    except UserError as exc:
        if box is None:
            raise
        box["error"] = exc
        raise SystemExit(2) from None
    return {
        "adapter": done.entry.name, "base": done.entry.base, "path": str(done.entry.path),
        "plot": str(done.plot), "seconds": round(done.seconds, 2), **(done.entry.meta or {}),
    }  # fmt: skip
