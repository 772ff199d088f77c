"""Does a LoRA adapter exported by `llmos models finetune` do in llama.cpp what it did in
training? For 20 prompts, the greedy continuation of llama.cpp with the adapter GGUF
against the `transformers` + `peft` model the adapter was trained as (the base GGUF
dequantized, the last checkpoint's adapter weights), first 32 tokens (issue 14: >= 18/20).

The base side of the comparison is also run (llama.cpp without the adapter against the
`transformers` model without it): llama.cpp computes with the quantized weights and
`transformers` with their float32 dequantization, so some disagreement is the base's own.

    python benchmarks/bench_lora_export.py ADAPTER [--data-dir DIR] [--llama-base F32-COPY]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: F401  (sets HF_HUB_OFFLINE)

PROMPTS = [
    "What is 57*85?", "Compute 22 + 66.", "What is 91 minus 14?", "Calculate 13 * 47.",
    "What is 12 times 12?", "Name three fruits.", "What is the capital of France?",
    "Write a haiku about rain.", "Explain what a CPU does.", "Give me a synonym for happy.",
    "How many legs does a spider have?", "Translate 'good morning' to French.",
    "What is 7 plus 8?", "Who wrote Hamlet?", "Describe the color blue.",
    "What is 100 divided by 4?", "List two planets.", "What does DNA stand for?",
    "Say hello in Spanish.", "What is 31*29?",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter", help="an adapter in the catalog")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument(
        "--llama-base", default=None,
        help="the base llama.cpp runs (default: the adapter's); an F32 copy (models quantize "
        "--type F32) computes as transformers does, so the comparison is the export's alone",
    )  # fmt: skip
    a = ap.parse_args()
    if a.data_dir:
        os.environ["LLMOS_DATA_DIR"] = a.data_dir
    import torch
    from peft import set_peft_model_state_dict

    from llmos.config import load_settings
    from llmos.core.sampling import SamplingParams
    from llmos.kernel.backend import BatchEntry
    from llmos.kernel.llama_backend import LlamaBackend
    from llmos.kernel.models import ModelLibrary
    from llmos.ops.finetune_worker import load_base, with_lora

    lib = ModelLibrary(load_settings().data_dir)
    base_name, entry = lib.resolve(a.adapter)
    assert entry is not None, "not an adapter"
    base = lib.get(base_name).path
    meta = entry.meta or {}
    ckpt = torch.load(entry.path.with_suffix(".train") / "checkpoint.pt", weights_only=False)
    hf = load_base(base, 2)
    hf_lora = with_lora(load_base(base, 2), int(meta["rank"]), float(meta["alpha"]), 0.0, 0)
    set_peft_model_state_dict(hf_lora, ckpt["adapter"])
    hf_lora.eval()

    def greedy_llama(backend: LlamaBackend, ids: list[int]) -> list[int]:
        backend.seq_rm(0, -1, -1)
        sampler = backend.new_sampler(SamplingParams(temperature=0, repeat_penalty=1.0))
        out, pos, toks = [], 0, ids
        for _ in range(a.tokens):
            idx = backend.decode([BatchEntry(0, toks, pos, True)])
            pos += len(toks)
            t = backend.sample(sampler, idx[0])
            out.append(t)
            if backend.is_eog(t):
                break
            toks = [t]
        backend.free_sampler(sampler)
        return out

    def greedy_hf(model: object, ids: list[int], n: int) -> list[int]:
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)  # type: ignore[attr-defined]
        return [int(t) for t in out[0][len(ids) :]]

    run_base = lib.get(a.llama_base).path if a.llama_base else base
    plain = LlamaBackend(run_base, n_slots=1, n_ctx=1024, n_batch=256, n_threads=2)
    adapted = LlamaBackend(run_base, n_slots=1, n_ctx=1024, n_batch=256, n_threads=2)
    adapted.set_adapter(str(entry.path))
    same = {"adapter": 0, "base": 0}
    for p in PROMPTS:
        ids = plain.tokenize(f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n")
        ours = greedy_llama(adapted, ids)
        same["adapter"] += ours == greedy_hf(hf_lora, ids, len(ours))[: len(ours)]
        ours_base = greedy_llama(plain, ids)
        same["base"] += ours_base == greedy_hf(hf, ids, len(ours_base))[: len(ours_base)]
    n = len(PROMPTS)
    print(f"adapter {entry.name} (rank {meta['rank']}) trained on {base_name}, llama.cpp runs {run_base.name}; {n} prompts, first {a.tokens} tokens, greedy")  # fmt: skip
    print(
        f"llama.cpp + adapter GGUF == transformers + peft : {same['adapter']}/{n} (target >= 18/{n})"
    )
    print(
        f"llama.cpp base         == transformers base    : {same['base']}/{n} (the base's own agreement)"
    )


if __name__ == "__main__":
    main()
