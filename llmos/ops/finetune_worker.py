"""The fine-tune worker: `python -m llmos.ops.finetune_worker`, started by `ops/finetune.py`.

Training holds both cores for minutes and imports torch (a second and a half and a few
hundred MB), so it runs here, in a process of its own: the kernel stays responsive, `kill`
ends the training at once, and a crash in torch takes down only this process.

The job arrives as one JSON object on stdin; events go back as JSON lines on the original
stdout (anything else written to fd 1 goes to stderr):

    {"event": "loaded", "params": n, "trainable": n, "seconds": s}
    {"event": "step", "epoch": e, "step": k, "steps": n, "loss": x, "tokens_per_s": r}
    {"event": "epoch", "epoch": e, "train_loss": x, "held_out_loss": y|null, "checkpoint": path}
    {"event": "done", "adapter": path, "plot": path, "seconds": s, "tokens": n, ...}
    {"event": "error", "message": "..."}

The base GGUF is loaded by `transformers` (which dequantizes it to float32), the adapter is
trained with `peft`, and written as a llama.cpp LoRA GGUF by `lora_gguf.write_adapter`.
Each epoch ends with a checkpoint (adapter weights, optimizer state, loss history) that
`resume` continues from.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _send(out: TextIO, **event: Any) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


def load_base(path: Path, threads: int) -> Any:
    """The GGUF as a float32 `transformers` model, in eval mode, quietly."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(max(1, threads))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    return model


def with_lora(model: Any, rank: int, alpha: float, dropout: float, seed: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(  # peft types lora_alpha as int; it scales by any number
        r=rank, lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, cfg)


def lora_layers(model: Any) -> dict[str, tuple[Any, Any]]:
    """{module name: (lora_A, lora_B)} as float32 numpy arrays, from a PEFT model."""
    out: dict[str, tuple[Any, Any]] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight.detach().float().cpu().numpy()
            b = module.lora_B["default"].weight.detach().float().cpu().numpy()
            out[name.removeprefix("base_model.model.")] = (a, b)
    return out


def example_loss(model: Any, tokens: list[int], labels: list[int]) -> tuple[Any, int]:
    """Mean cross-entropy over an example's trained tokens, and their count."""
    import torch

    ids = torch.tensor([tokens])
    lab = torch.tensor([labels])
    logits = model(input_ids=ids).logits[0, :-1]
    target = lab[0, 1:]
    n = int((target != -100).sum())
    loss = torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=-100)
    return loss, n


def held_out_loss(model: Any, examples: list[dict[str, Any]]) -> float | None:
    import torch

    if not examples:
        return None
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            loss, n = example_loss(model, ex["tokens"], ex["labels"])
            total += float(loss) * n
            count += n
    return total / max(1, count)


def plot(path: Path, steps: list[tuple[float, float]], epochs: list[dict[str, Any]]) -> None:
    """The loss curve: training loss per step (and its running mean), held-out per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax.plot(xs, ys, color="#9ab", lw=0.8, label="train (per step)")
        k = max(1, len(ys) // 20)
        mean = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]  # fmt: skip
        ax.plot(xs, mean, color="#246", lw=1.6, label=f"train (mean of {k})")
    held = [(e["epoch"], e["held_out_loss"]) for e in epochs if e.get("held_out_loss") is not None]
    if held:
        hx, hy = zip(*held, strict=True)
        ax.plot(hx, hy, "o-", color="#c52", label="held out (per epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(job: dict[str, Any], events: TextIO) -> dict[str, Any]:
    import random

    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from llmos.ops.lora_gguf import write_adapter

    t0 = time.perf_counter()
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json.loads(Path(job["data"]).read_text())
    train_set, held = data["train"], data["held_out"]
    model = load_base(Path(job["base"]), int(job["threads"]))
    model = with_lora(model, int(job["rank"]), float(job["alpha"]), float(job["dropout"]), int(job["seed"]))  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(job["lr"]), weight_decay=0.0)
    epochs = int(job["epochs"])
    batch = max(1, int(job["batch"]))
    steps_per_epoch = math.ceil(len(train_set) / batch)
    total_steps = steps_per_epoch * epochs
    warmup = max(1, total_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to a tenth
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ckpt = out_dir / "checkpoint.pt"
    history: dict[str, Any] = {"steps": [], "epochs": []}
    start_epoch = 0
    if job.get("resume") and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = state["history"]
        start_epoch = int(state["epoch"])
        _send(events, event="resumed", epoch=start_epoch)
    n_all = sum(p.numel() for p in model.parameters())
    _send(events, event="loaded", params=n_all, trainable=sum(p.numel() for p in params),
          seconds=round(time.perf_counter() - t0, 2))  # fmt: skip
    tokens_seen = 0
    train_time = 0.0
    for epoch in range(start_epoch, epochs):
        model.train()
        order = list(range(len(train_set)))
        random.Random(int(job["seed"]) + epoch).shuffle(order)
        epoch_loss, epoch_n = 0.0, 0
        for s in range(steps_per_epoch):
            ts = time.perf_counter()
            group = [train_set[i] for i in order[s * batch : (s + 1) * batch]]
            n_tok = sum(sum(1 for x in ex["labels"][1:] if x != -100) for ex in group)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for ex in group:
                loss, n = example_loss(model, ex["tokens"], ex["labels"])
                (loss * (n / max(1, n_tok))).backward()  # the step's mean over its answer tokens
                step_loss += float(loss) * n
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            dt = time.perf_counter() - ts
            train_time += dt
            seen = sum(len(ex["tokens"]) for ex in group)
            tokens_seen += seen
            mean = step_loss / max(1, n_tok)
            epoch_loss += step_loss
            epoch_n += n_tok
            x = epoch + (s + 1) / steps_per_epoch
            history["steps"].append((round(x, 4), round(mean, 5)))
            _send(events, event="step", epoch=epoch + 1, step=epoch * steps_per_epoch + s + 1,
                  steps=total_steps, loss=round(mean, 5), tokens_per_s=round(seen / dt, 1))  # fmt: skip
        model.eval()
        held_loss = held_out_loss(model, held)
        row = {
            "epoch": epoch + 1,
            "train_loss": epoch_loss / max(1, epoch_n),
            "held_out_loss": held_loss,
        }
        history["epochs"].append(row)
        torch.save(
            {"adapter": get_peft_model_state_dict(model), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "history": history, "epoch": epoch + 1},
            ckpt.with_suffix(".tmp"),
        )  # fmt: skip
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
        _send(events, event="epoch", checkpoint=str(ckpt), **row)
    adapter = Path(job["adapter"])
    cfg = model.base_model.model.config
    write_adapter(
        adapter, architecture=str(job["architecture"]), alpha=float(job["alpha"]),
        layers=lora_layers(model), n_head=int(cfg.num_attention_heads),
        n_head_kv=int(cfg.num_key_value_heads), meta=dict(job.get("meta") or {}),
    )  # fmt: skip
    png = out_dir / "loss.png"
    plot(png, [tuple(x) for x in history["steps"]], history["epochs"])
    first = history["epochs"][0] if history["epochs"] else {}
    last = history["epochs"][-1] if history["epochs"] else {}
    return {
        "adapter": str(adapter), "plot": str(png), "seconds": round(time.perf_counter() - t0, 2),
        "train_seconds": round(train_time, 2), "tokens": tokens_seen,
        "tokens_per_s": round(tokens_seen / train_time, 1) if train_time else None,
        "epochs": history["epochs"], "first_epoch": first, "last_epoch": last,
    }  # fmt: skip


def main() -> int:
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    try:
        result = train(job, events)
    except Exception as exc:  # the parent turns it into one line; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        _send(events, event="error", message=f"{type(exc).__name__}: {exc}")
        return 1
    _send(events, event="done", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
