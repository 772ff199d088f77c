"""`llmos models finetune --merge TYPE`, `llmos models merge ADAPTER --type TYPE`: a full
GGUF with a LoRA adapter folded into its base's weights, quantized, registered.

The merge works on the files as llama.cpp lays them out, in numpy: every tensor of the
base is dequantized to float32 (the `gguf` package's dequantizers), and each adapted one
gets `W + (alpha / rank) * B A` from the adapter GGUF (whose Q/K rows are already in
llama.cpp's order). The float32 model, with the base's metadata, goes to a temporary file
that `quantize` (llama.cpp's own quantizer, in its worker) turns into the requested type
and registers with its lineage: the merge, its adapter and base, then the quantization.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.errors import UserError
from llmos.kernel.gguf import adapter_summary, read_gguf
from llmos.kernel.models import ModelLibrary
from llmos.ops.quantize import Quantized, quantize

Progress = Callable[[int, int], None]


def merged_f32(base: Path, adapter: Path, dest: Path, progress: Progress | None = None) -> int:
    """Write `base` with `adapter` folded in, every tensor float32; returns the number of
    tensors the adapter changed."""
    import gguf
    import numpy as np

    summary = adapter_summary(read_gguf(adapter))
    areader = gguf.GGUFReader(str(adapter))
    lora: dict[str, dict[str, Any]] = {}
    for t in areader.tensors:
        target, _, part = t.name.rpartition(".")
        lora.setdefault(target, {})[part] = np.asarray(t.data, dtype=np.float32)
    rank = int(summary["rank"]) or 1
    scale = float(summary["alpha"]) / rank
    reader = gguf.GGUFReader(str(base))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dest), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    changed = 0
    for i, t in enumerate(reader.tensors):
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        pair = lora.get(t.name)
        if pair is not None:  # (out, in) += scale * (out, r) @ (r, in)
            w = w + scale * (pair["lora_b"] @ pair["lora_a"])
            changed += 1
        writer.add_tensor(t.name, np.ascontiguousarray(w, dtype=np.float32))
        if progress is not None:
            progress(i + 1, len(reader.tensors))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if changed != len(lora):
        raise UserError(f"the adapter names {len(lora) - changed} tensors the base does not have")
    return changed


def merge(
    library: ModelLibrary,
    adapter: str,
    type_name: str,
    *,
    name: str | None = None,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> Quantized:
    """Fold `adapter` (a catalog adapter, or BASE+ADAPTER) into its base, quantize to
    `type_name`, and register the result. Blocking: an async caller runs it in a thread."""
    base_name, entry = library.resolve(adapter)
    if entry is None:
        raise UserError(f"{adapter!r} is not an adapter (merge takes ADAPTER or BASE+ADAPTER)")
    base = library.get(base_name)
    out_name = name or f"{base.name}-{entry.name}-{type_name.lower()}"
    dest = library.data_dir / "models" / f"{out_name}.gguf"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{out_name}.{os.getpid()}.f32.part.gguf")
    started = time.perf_counter()
    try:
        changed = merged_f32(
            base.path, entry.path, tmp,
            progress=(lambda d, n: progress("merge", d, n)) if progress else None,
        )  # fmt: skip
        done = quantize(
            library, str(tmp), type_name, name=out_name, force=force, dest=dest,
            progress=(lambda d, n: progress("quantize", d, n)) if progress else None,
        )  # fmt: skip
    finally:
        tmp.unlink(missing_ok=True)
    lineage = dict(done.entry.lineage or {})
    lineage["parent"] = base.name
    lineage["parent_path"] = str(base.path)
    lineage["merged_adapter"] = {
        "adapter": entry.name, "path": str(entry.path), "tensors": changed,
        "rank": (entry.meta or {}).get("rank"), "alpha": (entry.meta or {}).get("alpha"),
    }  # fmt: skip
    lineage["operation"] = f"merge + {lineage.get('operation', 'quantize')}"
    final = library.add(dest, out_name, lineage=lineage)
    done.entry = final
    done.seconds = time.perf_counter() - started
    return done
