"""`llmos models quantize`: a model rewritten at another quantization, or with transformer
blocks pruned, by llama.cpp's own `llama_model_quantize`, and registered with its lineage.

The steps, each failing with one line (a `UserError`) and leaving no file behind:

1. resolve the type against the ones the vendored llama.cpp offers (`quantize_types`),
   read the source's GGUF header (a truncated file fails here), check the layers to prune
   against its `{arch}.block_count`, the destination (it must not exist unless `force`)
   and the free disk against an estimate of the output's size;
2. run `llama_model_quantize` in a worker process (`quantize_worker.py`, started first so
   its boot overlaps these checks), writing a hidden temporary file beside the destination
   and reporting each tensor as llama.cpp logs it;
3. rename the result into place and register it with its lineage (parent, operation,
   parameters), which `llmos models info` shows; registering reads the new header, and a
   file that does not read back whole is removed.

A type that the model can't take (an IQ type that needs an importance matrix, a type with
no fallback for the model's tensor shapes) is llama.cpp's verdict, reported in its words.
Requantizing an already-quantized source is allowed (`allow_requantize`) with a warning:
rounding error is added to rounding error.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmos.errors import InvalidModelFile, LlmosError, ModelError, NotEnoughSpace, UserError
from llmos.kernel.gguf import GGML_TYPE_SIZE, GGUFInfo, read_gguf
from llmos.kernel.llama_backend import quantize_types
from llmos.kernel.models import ModelEntry, ModelLibrary
from llmos.ops.worker import Worker

Progress = Callable[[int, int], None]  # (tensors done, tensors in all)

# llama-quantize's short names for the usual K-quant mixes
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
_FLOAT_TYPES = {0, 1, 30}  # ggml F32, F16, BF16: a tensor in these is not quantized yet
_DEQUANT = {"F32", "F16", "BF16"}

# For the size estimate: a file type's main ggml tensor type, and the type llama.cpp falls
# back to for a tensor whose row length is not a multiple of that type's block (SmolLM2's
# 576 is not a multiple of 256, so most of its tensors fall back from a K-quant).
_MAIN_TYPE = {
    "F32": 0, "F16": 1, "BF16": 30, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
    "MXFP4_MOE": 8, "Q2_K": 10, "Q2_K_S": 10, "Q3_K_S": 11, "Q3_K_M": 11, "Q3_K_L": 11,
    "Q4_K_S": 12, "Q4_K_M": 12, "Q5_K_S": 13, "Q5_K_M": 13, "Q6_K": 14, "IQ2_XXS": 16,
    "IQ2_XS": 17, "IQ2_S": 17, "IQ2_M": 22, "IQ3_XXS": 18, "IQ3_XS": 21, "IQ3_S": 21,
    "IQ3_M": 21, "IQ1_S": 19, "IQ1_M": 29, "IQ4_NL": 20, "IQ4_XS": 23, "TQ1_0": 34,
    "TQ2_0": 35,
}  # fmt: skip
_FALLBACK = {16: 20, 17: 20, 18: 20, 19: 20, 21: 20, 22: 20, 23: 20, 29: 20, 10: 2, 11: 2,
             34: 2, 35: 2, 12: 6, 13: 7, 14: 8}  # fmt: skip
_Q8_0 = 8
_MIX_MARGIN = 1.25  # mixes (Q4_K_M, IQ3_S, ...) give some tensors a bigger type than the main one


@dataclass(frozen=True)
class Plan:
    """A checked quantization, ready to run."""

    source: ModelEntry
    header: GGUFInfo
    type_name: str
    ftype: int
    prune_layers: tuple[int, ...]
    name: str
    dest: Path
    requantize: bool  # the source is quantized: llama.cpp must be allowed to requantize it
    estimate: int  # bytes the output should take, at most about

    @property
    def operation(self) -> str:
        changes_type = self.type_name != self.header.quantization
        if self.prune_layers:
            return "quantize+prune" if changes_type else "prune"
        return "quantize"

    @property
    def tensors_out(self) -> int:
        """How many tensors the output has (the progress total)."""
        pruned = {f"blk.{i}." for i in self.prune_layers}
        return sum(1 for t in self.header.tensors if not t.name.startswith(tuple(pruned)))

    def warning(self) -> str | None:
        """What a user should know before a requantization, or None."""
        src = self.header.quantization
        if not self.requantize or self.type_name == src:
            return None
        if self.type_name in _DEQUANT:
            return (
                f"{self.source.name} is quantized ({src}): {self.type_name} of it keeps "
                f"{src}'s quality at a larger size (dequantizing restores no precision)"
            )
        return (
            f"{self.source.name} is already quantized ({src}): requantizing it to "
            f"{self.type_name} adds rounding error to rounding error, so quality suffers; "
            "start from an F16 or F32 file when there is one"
        )


@dataclass
class Quantized:
    entry: ModelEntry
    plan: Plan
    seconds: float
    warnings: list[str] = field(default_factory=list)  # llama.cpp's (tensors that fell back)


def resolve_type(text: str) -> tuple[str, int]:
    """`("Q4_K_M", 15)` for "q4_k_m" (or an alias, "Q4_K"); a `UserError` naming the
    types llama.cpp offers otherwise."""
    types = quantize_types()
    name = ALIASES.get(text.strip().upper(), text.strip().upper())
    if name not in types:
        offered = ", ".join(sorted(types, key=types.__getitem__))
        raise UserError(f"unknown quantization type {text!r}; llama.cpp offers: {offered}")
    return name, types[name]


def parse_layers(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """Block indices from "10,11" (sorted, without repeats)."""
    if text is None:
        return ()
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise UserError(f"--prune-layers wants block numbers like 10,11, not {text!r}")
        text = [int(p) for p in parts]
    return tuple(sorted(set(text)))


def block_count(header: GGUFInfo) -> int:
    value = header.metadata.get(f"{header.architecture}.block_count")
    if not isinstance(value, int):
        raise InvalidModelFile(f"{header.path}: no {header.architecture}.block_count in its header")
    return value


def check_layers(layers: tuple[int, ...], header: GGUFInfo) -> tuple[int, ...]:
    n = block_count(header)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise UserError(
            f"no block {', '.join(map(str, bad))} to prune: the model has {n} (0 to {n - 1})"
        )
    if len(layers) >= n:
        raise UserError(f"pruning all {n} blocks would leave no model")
    return layers


def estimate_size(header: GGUFInfo, type_name: str, prune_layers: Sequence[int] = ()) -> int:
    """About the most bytes `type_name` of this file should take: each kept tensor at the
    type's main tensor type (or its fallback for rows that don't fit its blocks), token
    embeddings and output at Q8_0 or better, 1-D tensors in F32, with a margin for mixes."""
    main = _MAIN_TYPE.get(type_name, _Q8_0)  # a type new to this table: assume Q8_0
    pruned = tuple(f"blk.{i}." for i in prune_layers)
    total = 0.0
    for t in header.tensors:
        if pruned and t.name.startswith(pruned):
            continue
        kind = main
        if len(t.shape) < 2:
            kind = 0  # norms and biases stay F32 at every type
        else:
            if t.shape[0] % GGML_TYPE_SIZE[kind][0]:
                kind = _FALLBACK.get(kind, 1)
            if t.shape[0] % GGML_TYPE_SIZE[kind][0]:
                kind = 1  # F16, as llama.cpp does when the fallback does not fit either
            if t.name.startswith(("token_embd.", "output.")) and _bpw(kind) < _bpw(_Q8_0):
                kind = _Q8_0
        total += t.n_elements * _bpw(kind) / 8
    mix = type_name == "Q2_K" or type_name.endswith(("_S", "_M", "_L", "XS"))
    margin = _MIX_MARGIN if mix else 1.0
    return int(total * margin) + header.data_offset + (1 << 20)


def _bpw(ggml_type: int) -> float:
    block, nbytes = GGML_TYPE_SIZE[ggml_type]
    return nbytes * 8 / block


def plan(
    library: ModelLibrary,
    source: str,
    type_name: str | None,
    *,
    name: str | None = None,
    force: bool = False,
    prune_layers: str | Sequence[int] | None = None,
    dest: Path | None = None,
) -> Plan:
    """Check a quantization before any work: see the module's docstring, step 1."""
    layers = parse_layers(prune_layers)
    entry = library.get(source)
    header = read_gguf(entry.path)  # a truncated or foreign file fails here, in one line
    if type_name is None:
        if not layers:
            raise UserError("give --type (for example Q4_K_M), or --prune-layers, or both")
        type_name = header.quantization  # prune only: keep the source's type
    tname, ftype = resolve_type(type_name)
    check_layers(layers, header)
    requantize = any(len(t.shape) > 1 and t.ggml_type not in _FLOAT_TYPES for t in header.tensors)
    if name is None:
        suffix = tname.lower() + (f"-pruned-{'-'.join(map(str, layers))}" if layers else "")
        base = re.sub(r"[^A-Za-z0-9._-]", "-", entry.name).strip("-").lower()
        name = f"{base[: 63 - len(suffix)].rstrip('-._')}-{suffix}"
    name = library.name_for(Path(f"{name}.gguf"), name)
    dest = (dest or library.data_dir / "models" / f"{name}.gguf").expanduser().absolute()
    if dest == entry.path.absolute():
        raise UserError(f"{dest} is the source itself; choose another --name")
    registered = any(e.name == name and not e.builtin for e in library.list())
    if not force and (dest.exists() or registered):
        what = f"{dest} already exists" if dest.exists() else f"model {name!r} already exists"
        raise UserError(f"{what}; pass --force to replace it, or choose another --name")
    estimate = estimate_size(header, tname, layers)
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if estimate > free:
        raise NotEnoughSpace(
            f"not enough disk space for {name}: {tname} needs about {_mb(estimate)} and "
            f"{dest.parent} has {_mb(free)} free"
        )
    return Plan(entry, header, tname, ftype, layers, name, dest, requantize, estimate)


def quantize(
    library: ModelLibrary,
    source: str,
    type_name: str | None,
    *,
    name: str | None = None,
    force: bool = False,
    prune_layers: str | Sequence[int] | None = None,
    dest: Path | None = None,
    nthread: int = 0,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> Quantized:
    """Quantize (and/or prune) `source` into the library; see the module's docstring.

    `nthread` 0 uses every core, as `llama-quantize` does. `warn` hears the requantization
    warning before the work starts. Blocking: an async caller runs it in a thread."""
    started = time.perf_counter()
    worker = Worker.start("llmos.ops.quantize_worker", "quantize")  # boots while the checks run
    tmp: Path | None = None
    try:
        p = plan(
            library, source, type_name, name=name, force=force, prune_layers=prune_layers,
            dest=dest,
        )  # fmt: skip
        tmp = _temporary(p.dest)
        total = p.tensors_out
        pending = [text] if warn is not None and (text := p.warning()) else []
        job = {
            "src": str(p.source.path), "dst": str(tmp), "ftype": p.ftype,
            "allow_requantize": p.requantize, "prune_layers": list(p.prune_layers),
            "nthread": nthread,
        }  # fmt: skip

        def report(done: int, _of: int) -> None:
            # The warning waits for the first tensor: by then llama.cpp has accepted the
            # type, so a type it refuses is one error line, not a warning and an error.
            while pending and warn is not None:
                warn(pending.pop())
            if progress is not None:  # llama.cpp's total counts pruned tensors too
                progress(min(done, total), total)

        try:
            done = worker.run(job, lambda ev: report(int(ev["done"]), int(ev["total"])))
        except ModelError as exc:
            raise _explain(exc, p) from None
        warnings = [str(w) for w in done["warnings"]]
        report(total, total)
        os.replace(tmp, p.dest)
        tmp = None
        try:  # `add` reads the new header: a file that does not read back whole goes
            entry = library.add(p.dest, p.name, lineage=lineage(p))
        except LlmosError:
            p.dest.unlink(missing_ok=True)
            raise
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC while making the temporary file or moving it
            raise NotEnoughSpace(f"the disk filled up while writing {exc.filename}") from None
        raise
    finally:
        worker.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return Quantized(entry, p, time.perf_counter() - started, warnings)


def _temporary(dest: Path) -> Path:
    """A new hidden file beside `dest` (same disk, so the final rename is atomic), created
    with the usual permissions (umask applies, unlike `mkstemp`'s 0600)."""
    while True:
        path = dest.with_name(f".{dest.stem}.{os.getpid()}.{secrets.token_hex(4)}.part")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return path


def lineage(p: Plan) -> dict[str, Any]:
    """What the catalog keeps about where a derived model came from."""
    out: dict[str, Any] = {
        "operation": p.operation,
        "parent": p.source.name,
        "parent_path": str(p.source.path),
        "parent_quantization": p.header.quantization,
        "parameters": {
            "type": p.type_name,
            "prune_layers": list(p.prune_layers),
            "allow_requantize": p.requantize,
        },
        "tool": f"llama_model_quantize, llama-cpp-python {_llama_cpp_version()}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if p.source.lineage:
        out["parent_lineage"] = p.source.lineage
    return out


def _llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _explain(exc: ModelError, p: Plan) -> UserError:
    """llama.cpp's failure as the user's next step (its own reason kept)."""
    message = str(exc)
    reason = message.split(": ", 1)[-1]
    what = f"{p.source.name} ({p.header.architecture}) can't be quantized to {p.type_name}"
    if "imatrix" in message or "importance matrix" in message:
        return ModelError(
            f"{what}: the type needs an importance matrix (imatrix), which llmos does not "
            "compute; choose another type"
        )
    if "fallback" in message:  # a tensor shape the type's blocks don't fit, and no way out
        return ModelError(f"{what}: {reason}; choose another type")
    if "iostream error" in message and shutil.disk_usage(p.dest.parent).free < (64 << 20):
        return NotEnoughSpace(f"the disk filled up while writing {p.name} in {p.dest.parent}")
    return exc
