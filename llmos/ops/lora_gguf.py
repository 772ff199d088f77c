"""LoRA adapters as llama.cpp reads them: a GGUF of `general.type = adapter`.

A trained PEFT adapter holds, per adapted linear layer, `lora_A` (rank x in) and `lora_B`
(out x rank), applied as `W x + (alpha / rank) * B A x`. llama.cpp's adapter file holds the
same two matrices under its own tensor names (`blk.N.attn_q.weight.lora_a` / `.lora_b`),
with `adapter.lora.alpha` in the header, and checks that `lora_a` is (in, rank) and
`lora_b` is (rank, out) in its column-major order, which is PEFT's row-major layout as is.

One twist: llama.cpp's conversion of Llama-family models permutes the rows of the Q and K
projections (it pairs the rotary halves differently from Hugging Face), and `transformers`
undoes that permutation when it loads a GGUF. The adapter is trained on the unpermuted
layout, so the rows of `lora_B` for Q and K are permuted here the way the base's weights
were: `(P W) + (P B) A = P (W + B A)`.

Only numpy and the `gguf` package are needed to write one; reading its header uses llmos's
own GGUF reader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmos.kernel.gguf import adapter_summary, read_gguf

# Hugging Face module names of a Llama-family decoder layer -> llama.cpp's tensor names
MODULES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip
# Architectures whose GGUF conversion permutes Q/K rows, and so their adapters' lora_B rows
PERMUTED = {"llama"}
TRAINABLE = {"llama"}  # the architectures llmos trains adapters for (tested end to end)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def gguf_name(hf_module: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `blk.3.attn_q.weight`."""
    m = _LAYER.search(hf_module)
    if not m or m.group(2) not in MODULES:
        raise ValueError(f"no llama.cpp tensor for module {hf_module!r}")
    return f"blk.{m.group(1)}.{MODULES[m.group(2)]}.weight"


def permute_rows(w: Any, n_head: int) -> Any:
    """The row order llama.cpp's Llama conversion gives a Q or K projection: within each
    head, the interleaved rotary pairs become two halves."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_adapter(
    path: Path,
    *,
    architecture: str,
    alpha: float,
    layers: Mapping[str, tuple[Any, Any]],
    n_head: int,
    n_head_kv: int,
    meta: Mapping[str, str] | None = None,
) -> int:
    """Write `layers` ({hf module name: (lora_A, lora_B)}, numpy float32) as a llama.cpp
    LoRA GGUF; returns the number of tensors written. `meta` adds `llmos.*` string keys."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for key, value in (meta or {}).items():
        writer.add_string(f"llmos.{key}", str(value))
    n = 0
    for module in sorted(layers, key=_order):
        a, b = (np.ascontiguousarray(x, dtype=np.float32) for x in layers[module])
        name = gguf_name(module)
        if architecture in PERMUTED and name.split(".")[2] in ("attn_q", "attn_k"):
            heads = n_head if name.split(".")[2] == "attn_q" else n_head_kv
            b = np.ascontiguousarray(permute_rows(b, heads))
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
        n += 2
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return n


def _order(module: str) -> tuple[int, str]:
    m = _LAYER.search(module)
    return (int(m.group(1)), m.group(2)) if m else (-1, module)


def read_adapter(path: Path) -> dict[str, Any]:
    """What a LoRA GGUF says about itself; a file that is not an adapter is an
    `InvalidModelFile`."""
    return adapter_summary(read_gguf(path))
