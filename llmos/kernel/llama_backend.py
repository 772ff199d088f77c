"""The llama.cpp backend: the only module that imports llama_cpp.

It uses llama-cpp-python's low-level API: one `llama_context` per model with `n_slots`
sequences over a unified KV cache (sequences share the cell pool, so a shared prefix is
copied by reference), one reusable `llama_batch`, one sampler chain per sequence (the
sampling runs in C), and `llama_state_seq_*` to move a sequence's KV state to host RAM.

Guards: llama.cpp aborts the whole process on some C++ exceptions, so this module never
calls `llama_sampler_accept` after `llama_sampler_sample` (sample already accepts) and
validates grammars before building a sampler from them.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import logging
import re
import sys
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.errors import GenerationError, InvalidGrammar, ModelError
from llmos.kernel.backend import BatchEntry, DecodeNoSpace
from llmos.kernel.gguf import read_gguf

_init_lock = threading.Lock()
_initialized = False

_KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
_FLASH: dict[str | bool, int] = {"auto": -1, "on": 1, True: 1, "off": 0, False: 0}
_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]  # llama_token_data


def _llama() -> Any:
    global _initialized
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    import llama_cpp

    L = llama_cpp
    if not hasattr(L, "llama_backend_init"):  # the shell `binding_only` left: the binding
        L = importlib.import_module("llama_cpp.llama_cpp")
    with _init_lock:
        if not _initialized:
            L.llama_backend_init()
            _initialized = True
    return L


def binding_only() -> None:
    """Load only llama.cpp's C binding (`llama_cpp.llama_cpp`) in this process, not the
    package's high-level half (`Llama`, chat formats: numpy, jinja2), which took 0.09 of
    the 0.1 s that importing llama_cpp costs here. For a process that needs nothing else
    (the quantize worker: its start is part of every quantize's time). Call it before
    anything imports llama_cpp: the package is then an empty shell whose submodules still
    import, and `from llama_cpp import Llama` fails in this process."""
    if "llama_cpp" in sys.modules:
        return
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import in _llama() says so
    shell = types.ModuleType("llama_cpp")
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules["llama_cpp"] = shell


def system_info() -> dict[str, Any]:
    """Build facts for `llmos doctor`: CPU features, GPU offload, versions."""
    L = _llama()
    return {
        "llama_cpp_python": getattr(L, "__version__", "unknown"),
        "system_info": L.llama_print_system_info().decode(errors="replace").strip(),
        "gpu_offload": bool(L.llama_supports_gpu_offload()),
        "mmap": bool(L.llama_supports_mmap()),
        "mlock": bool(L.llama_supports_mlock()),
    }


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF text for a JSON schema: llama.cpp's own converter, with its optional
    whitespace made fixed, as Python's `json.dumps` writes JSON: `", "` between items,
    `": "` after a key, nothing else. The model's JSON is then one spelling of a value,
    and the text between the values (key names, quotes, separators) is forced by the
    grammar: the engine fast-forwards it instead of decoding it token by token."""
    _llama()
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        text = str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise GenerationError(f"JSON schema cannot be turned into a grammar: {exc}") from exc
    return _fixed_spaces(text)


def _fixed_spaces(gbnf: str) -> str:
    """The converter writes `space` (an optional " ") after every structural character
    and value; keep one after a separator and none elsewhere."""
    out = gbnf.replace('":" space', '": "').replace('"," space', '", "')
    out, n = re.subn(r"(?m)^space ::= .*$", 'space ::= ""', out)
    if n != 1:  # the converter changed shape: refuse rather than guess
        raise GenerationError("JSON schema grammar: the converter's space rule was not found")
    return out


def quantize_types() -> dict[str, int]:
    """llama.cpp's output file types by name, as `llama-quantize` spells them ("Q4_K_M",
    "F16", "F32"), read from the binding's `LLAMA_FTYPE_*` constants so a type the vendored
    llama.cpp gains is offered without a table here to update."""
    L = _llama()
    out: dict[str, int] = {}
    for attr in dir(L):
        if not attr.startswith("LLAMA_FTYPE_") or attr == "LLAMA_FTYPE_GUESSED":
            continue
        name = attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
        out[name] = int(getattr(L, attr))
    return out


_TENSOR_LINE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")


def quantize_file(
    src: str | Path,
    dst: str | Path,
    ftype: int,
    *,
    allow_requantize: bool = False,
    prune_layers: Sequence[int] = (),
    nthread: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write `src` as file type `ftype` to `dst` with `llama_model_quantize`; return
    llama.cpp's warnings (tensors that fell back to another type). `progress(done, total)`
    is called as each tensor starts (`total` counts the source's tensors, pruned ones too).

    It replaces the process's llama.cpp log callback while it runs (the per-tensor lines
    are the only progress llama.cpp gives), so call it from a worker process, not beside
    loaded models. A failure is a `ModelError` with llama.cpp's own reason."""
    L = _llama()
    params = L.llama_model_quantize_default_params()  # the struct grows between versions
    params.ftype = ftype
    params.nthread = nthread
    params.allow_requantize = allow_requantize
    # llama.cpp reads the layer list up to a -1, as `llama-quantize --prune-layers` ends it
    layers = (ctypes.c_int32 * (len(prune_layers) + 1))(*prune_layers, -1)
    if prune_layers:
        params.prune_layers = ctypes.cast(layers, ctypes.POINTER(ctypes.c_int32))
    errors: list[str] = []
    warnings: list[str] = []
    level = [0]

    def on_log(lvl: int, text: bytes | None, _user: Any) -> None:
        # ggml_log_level: 2 info, 3 warn, 4 error, 5 continues the previous line's level
        if not text:
            return
        if lvl != 5:
            level[0] = lvl
        m = _TENSOR_LINE.match(text)
        if m and progress is not None:
            progress(int(m.group(1)) - 1, int(m.group(2)))
        elif level[0] == 4 and b"failed to quantize:" in text:
            errors.append(text.split(b"failed to quantize:", 1)[1].decode(errors="replace"))
        elif level[0] == 3 and b"WARNING:" in text:
            warnings.append(text.split(b"WARNING:", 1)[1].decode(errors="replace").strip())

    callback = L.llama_log_callback(on_log)  # kept referenced until the call returns
    L.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        # llama-cpp-python's own callback; without the package's high-level half (the
        # worker), none: a NULL pointer sends llama.cpp's log to stderr again
        restore = getattr(getattr(L, "_logger", None), "llama_log_callback", None)
        L.llama_log_set(restore or L.llama_log_callback(), ctypes.c_void_p(0))
    if rc != 0:
        reason = " ".join(" ".join(errors).split()) or f"llama_model_quantize returned {rc}"
        raise ModelError(f"llama.cpp could not quantize {Path(src).name}: {reason}")
    return warnings


def _prefilter(params: SamplingParams) -> int:
    """How many candidates may go to the penalties sampler (0: the whole vocabulary).

    llama.cpp's penalties look up every candidate in a hash map: ~140 us per token over a
    49k vocabulary, 3-4% of an 8-sequence step here. When every penalty only lowers logits,
    and at most `repeat_last_n` tokens are penalized, the k best after the penalties are
    among the k + repeat_last_n best before them: a top-k cut of that size first changes no
    outcome, and the penalties then see ~100 candidates."""
    lowers = (
        params.repeat_penalty >= 1.0
        and params.frequency_penalty >= 0.0
        and params.presence_penalty >= 0.0
    )
    k = 1 if params.greedy else params.top_k
    if not lowers or k <= 0 or not 0 < params.repeat_last_n <= 1024:
        return 0
    return k + params.repeat_last_n


def _free(L: Any, batch: Any, ctx: Any, model: Any) -> None:
    """Release a batch, its context and the model, in the order llama.cpp needs."""
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


def _tokenize(L: Any, vocab: Any, text: str, add_special: bool, parse_special: bool) -> list[int]:
    """Token ids of `text`; a buffer too small is answered with the size needed."""
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_special, parse_special)
    return list(buf[:n])


class LlamaBackend:
    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        n_slots: int = 8,
        n_ctx: int = 8192,
        n_batch: int = 512,
        n_threads: int = 2,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        flash_attn: str | bool = "auto",
        kv_type: str = "f16",
        kv_unified: bool = False,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        path = Path(path)
        info = read_gguf(path)  # a bad file is a clear error before llama.cpp sees it
        L = _llama()
        self._L = L
        self.name = name or path.stem
        self.path = path
        self.n_slots = n_slots
        self.info = info

        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.main_gpu = main_gpu
        self._progress_cb = None
        if progress is not None:

            def _cb(fraction: float, _user: Any) -> bool:
                progress(float(fraction))
                return True

            self._progress_cb = L.llama_progress_callback(_cb)
            mparams.progress_callback = self._progress_cb
        model = L.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelError(f"llama.cpp could not load {path}")
        self._model = model
        self.n_ctx_train = int(L.llama_model_n_ctx_train(model))

        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_slots
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.kv_unified = kv_unified
        cparams.no_perf = True
        cparams.flash_attn_type = _FLASH.get(flash_attn, -1)
        cparams.type_k = _KV_TYPES[kv_type]
        cparams.type_v = _KV_TYPES[kv_type]
        ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            L.llama_model_free(model)
            raise ModelError(f"llama.cpp could not create a context for {path} (n_ctx={n_ctx})")
        self._ctx = ctx
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.n_ctx_seq = int(L.llama_n_ctx_seq(ctx))
        self.kv_unified = kv_unified
        self._vocab = L.llama_model_get_vocab(model)
        self._mem = L.llama_get_memory(ctx)
        self._n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self._batch_cap = n_batch
        self._batch = L.llama_batch_init(n_batch, 0, n_slots)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._eog_all: list[int] | None = None
        self._samplers: set[int] = set()
        self._grammars: dict[int, Any] = {}  # sampler chain -> its grammar sampler
        self._probe: tuple[list[int], list[str | None], Any, Any] | None = None
        self._apart: dict[int, Any] = {}  # greedy chain -> its grammar, checked last
        self._cand: tuple[Any, Any] | None = None
        self._single: tuple[Any, Any] = (None, None)
        self._ids: Any = None
        self._adapters: dict[str, Any] = {}  # path -> llama_adapter_lora (freed with the model)
        # Whether a token's logits are bit for bit the same evaluated in a batch of several
        # (a speculation verify) as alone. Not on llama.cpp's CPU kernels: the matrix
        # products (and flash attention's) accumulate in another order for another batch
        # shape, and a near-tie can flip a greedy token (benchmarks/probe_costs.py: 3 of 4
        # long answers differed with drafting forced, flash attention on or off). So the
        # engine's "auto" leaves speculation off here; a call or the config may ask for it.
        self.exact_batches = False
        # greedy sampling under a grammar checks the grammar last (_sample_grammar_last);
        # False puts it first in the chain, as plain llama.cpp does (the tests compare)
        self.grammar_last = True
        self._closed = False
        self.size_bytes = int(L.llama_model_size(model))
        self.n_params = int(L.llama_model_n_params(model))

    # -- vocabulary -------------------------------------------------------------------
    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return _tokenize(self._L, self._vocab, text, add_special, parse_special)

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._L.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(128)
        n = self._L.llama_token_to_piece(self._vocab, token, buf, 128, 0, True)
        return buf.raw[: max(0, n)].decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        hit = self._eog.get(token)
        if hit is None:
            hit = bool(self._L.llama_vocab_is_eog(self._vocab, token))
            self._eog[token] = hit
        return hit

    def _eog_tokens(self) -> list[int]:
        if self._eog_all is None:
            self._eog_all = [
                t for t in range(self._n_vocab) if self._L.llama_vocab_is_eog(self._vocab, t)
            ]
        return self._eog_all

    def chat_template(self) -> str | None:
        tmpl = self._L.llama_model_chat_template(self._model, None)
        return tmpl.decode("utf-8", "replace") if tmpl else None

    def architecture(self) -> str | None:
        buf = ctypes.create_string_buffer(128)
        n = self._L.llama_model_meta_val_str(self._model, b"general.architecture", buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def special_tokens(self) -> dict[str, str]:
        L = self._L
        return {
            "bos_token": self._special_text(L.llama_vocab_bos(self._vocab)),
            "eos_token": self._special_text(L.llama_vocab_eos(self._vocab)),
        }

    # -- sampling ---------------------------------------------------------------------
    def new_sampler(self, params: SamplingParams) -> Any:
        L = self._L
        grammar = params.grammar
        if params.json_schema is not None:
            grammar = json_schema_grammar(params.json_schema)
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if grammar is not None:
            g = L.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            if not g:
                L.llama_sampler_free(chain)
                raise InvalidGrammar("invalid grammar (llama.cpp could not parse it)")
            self._grammars[id(chain)] = g
            if params.greedy and self.grammar_last:  # apart from the chain: see below
                self._apart[id(chain)] = g
            else:
                L.llama_sampler_chain_add(chain, g)  # the chain owns it
        bias = dict(params.logit_bias or {})
        if params.ignore_eos:
            bias.update({t: float("-inf") for t in self._eog_tokens()})
        if bias:
            arr = (L.llama_logit_bias * len(bias))()
            for i, (tok, b) in enumerate(bias.items()):
                if not 0 <= tok < self._n_vocab:
                    L.llama_sampler_free(chain)
                    raise GenerationError(f"logit_bias token {tok} is outside the vocabulary")
                arr[i].token = tok
                arr[i].bias = b
            L.llama_sampler_chain_add(
                chain, L.llama_sampler_init_logit_bias(self._n_vocab, len(bias), arr)
            )
        if (
            params.repeat_penalty != 1.0
            or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0
        ):
            keep = _prefilter(params)
            if keep:  # exact: see _prefilter
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(keep))
            L.llama_sampler_chain_add(
                chain,
                L.llama_sampler_init_penalties(
                    self._n_vocab,
                    params.repeat_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.greedy:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(params.min_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else L.LLAMA_DEFAULT_SEED
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self._samplers.add(id(chain))
        return chain

    def free_sampler(self, sampler: Any) -> None:
        if sampler is not None and id(sampler) in self._samplers:
            self._samplers.discard(id(sampler))
            self._grammars.pop(id(sampler), None)
            g = self._apart.pop(id(sampler), None)
            if g is not None:
                self._L.llama_sampler_free(g)
            self._L.llama_sampler_free(sampler)

    def forced_text(self, sampler: Any, limit: int) -> str:
        """Read from the grammar's own state (llama.cpp's grammar sampler, cloned): while
        exactly one character is allowed next and the grammar may not end, that character
        is forced. Each probe applies the grammar to the tokens that are one character
        (every printable ASCII one, tab, newline), the lone UTF-8 lead bytes and the
        end-of-generation tokens; a clone accepts each forced character in turn."""
        g = self._grammars.get(id(sampler))
        if g is None or limit <= 0:
            return ""
        ids, chars, arr, view = self._probe_set()
        L = self._L
        clone = L.llama_sampler_clone(g)
        out: list[str] = []
        try:
            while len(out) < limit:
                view["logit"] = 0.0
                arr.size = len(ids)
                arr.selected = -1
                arr.sorted = False
                L.llama_sampler_apply(clone, ctypes.byref(arr))
                ok = (view["logit"] != float("-inf")).nonzero()[0]
                if len(ok) != 1 or chars[ok[0]] is None:
                    break
                L.llama_sampler_accept(clone, ids[ok[0]])  # valid: just checked
                out.append(chars[ok[0]])
        finally:
            L.llama_sampler_free(clone)
        return "".join(out)

    def _probe_set(self) -> tuple[list[int], list[str | None], Any, Any]:
        if self._probe is None:
            import numpy as np

            L = self._L
            one: dict[int, int] = {}  # byte -> the token whose text is that byte alone
            for t in range(self._n_vocab):
                piece = self.token_bytes(t)
                if len(piece) == 1 and piece[0] not in one and not self.is_eog(t):
                    one[piece[0]] = t
            ids: list[int] = []
            chars: list[str | None] = []
            for byte, t in sorted(one.items()):
                if 0x20 <= byte < 0x7F or byte in (0x09, 0x0A):
                    ids.append(t)
                    chars.append(chr(byte))
                elif byte >= 0xC2:  # a non-ASCII character may follow: nothing is forced
                    ids.append(t)
                    chars.append(None)
            for t in self._eog_tokens():
                ids.append(t)
                chars.append(None)
            data = (L.llama_token_data * len(ids))()
            for i, t in enumerate(ids):
                data[i].id = t
            arr = L.llama_token_data_array(data=data, size=len(ids), selected=-1, sorted=False)
            view = np.frombuffer(data, dtype=_TOKEN_DATA)
            self._probe = (ids, chars, arr, view)
        return self._probe

    # -- evaluation -------------------------------------------------------------------
    def decode(self, entries: list[BatchEntry]) -> list[int]:
        total = sum(len(e.tokens) for e in entries)
        if total > self._batch_cap:  # before writing: the batch's arrays end at its capacity
            raise GenerationError(f"batch of {total} tokens exceeds n_batch {self._batch_cap}")
        b = self._batch
        token, pos, n_seq, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        k = 0
        out: list[int] = []
        for e in entries:
            slot, p = e.slot, e.pos
            for t in e.tokens:
                token[k] = t
                pos[k] = p
                n_seq[k] = 1
                seq_id[k][0] = slot
                logits[k] = 0
                p += 1
                k += 1
            if e.draft:
                for i in range(k - 1 - e.draft, k):
                    logits[i] = 1
                out.append(k - 1 - e.draft)
            elif e.logits:
                logits[k - 1] = 1
                out.append(k - 1)
            else:
                out.append(-1)
        b.n_tokens = k
        rc = self._L.llama_decode(self._ctx, b)
        if rc == 1:
            raise DecodeNoSpace("no KV slot for the batch")
        if rc != 0:
            raise GenerationError(f"llama_decode failed with code {rc}")
        return out

    def sample(self, sampler: Any, index: int) -> int:
        g = self._apart.get(id(sampler))
        if g is not None:
            return self._sample_grammar_last(sampler, g, index)
        return int(self._L.llama_sampler_sample(sampler, self._ctx, index))

    def _sample_grammar_last(self, chain: Any, g: Any, index: int) -> int:
        """Greedy under a grammar, with the grammar checked last: the chain without it
        picks a token, and only when the grammar rejects that token does the grammar
        mask the whole vocabulary (~5 ms over 49k tokens here, as much as half a decode
        step) before the chain picks again. Exact for greedy: the grammar only removes
        candidates, and the rest of the chain treats each token on its own (a logit
        bias, the penalties, and a top-k cut that _prefilter shows changes nothing), so
        a token the chain picks from all of them that the grammar allows is also the
        pick from the allowed ones. llama-server's sampler does the same."""
        L = self._L
        arr, view = self._candidates(index)
        L.llama_sampler_apply(chain, ctypes.byref(arr))
        token = int(view["id"][arr.selected])
        one, one_view = self._single
        one_view["id"] = token
        one_view["logit"] = 0.0
        one.size = 1
        one.selected = -1
        L.llama_sampler_apply(g, ctypes.byref(one))
        if one_view["logit"][0] == float("-inf"):  # rejected: mask everything, pick again
            arr, view = self._candidates(index)
            L.llama_sampler_apply(g, ctypes.byref(arr))
            L.llama_sampler_apply(chain, ctypes.byref(arr))
            token = int(view["id"][arr.selected])
            if view["logit"][arr.selected] == float("-inf"):  # accepting it would abort
                raise GenerationError("the grammar allows no token here")
        L.llama_sampler_accept(g, token)  # allowed by the grammar: it picked from those
        L.llama_sampler_accept(chain, token)
        return token

    def _candidates(self, index: int) -> tuple[Any, Any]:
        """The whole vocabulary with the logits at batch index `index`, as a token data
        array (one buffer, refilled)."""
        import numpy as np

        L = self._L
        if self._cand is None:
            data = (L.llama_token_data * self._n_vocab)()
            arr = L.llama_token_data_array(data=data, size=0, selected=-1, sorted=False)
            view = np.frombuffer(data, dtype=_TOKEN_DATA)
            single = (L.llama_token_data * 1)()
            self._single = (
                L.llama_token_data_array(data=single, size=1, selected=-1, sorted=False),
                np.frombuffer(single, dtype=_TOKEN_DATA),
            )
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
            self._cand = (arr, view)
        arr, view = self._cand
        ptr = L.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise GenerationError(f"no logits at batch index {index}")
        view["id"] = self._ids
        view["logit"] = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        view["p"] = 0.0
        arr.size = self._n_vocab
        arr.selected = -1
        arr.sorted = False
        return arr, view

    # -- adapters ---------------------------------------------------------------------
    def set_adapter(self, path: str | None) -> None:
        L = self._L
        if path is None:
            L.llama_set_adapters_lora(self._ctx, None, 0, None)
            return
        handle = self._adapters.get(path)
        if handle is None:
            handle = L.llama_adapter_lora_init(self._model, str(path).encode())
            if not handle:
                raise ModelError(
                    f"llama.cpp could not load the adapter {path} for {self.name} (a LoRA GGUF "
                    "made for this model's architecture and shapes is needed)"
                )
            self._adapters[path] = handle
        arr = (L.llama_adapter_lora_p_ctypes * 1)(handle)
        scale = (ctypes.c_float * 1)(1.0)
        if L.llama_set_adapters_lora(self._ctx, arr, 1, scale) != 0:
            raise ModelError(f"llama.cpp could not apply the adapter {path}")

    # -- sequence state ---------------------------------------------------------------
    def seq_rm(self, slot: int, p0: int = -1, p1: int = -1) -> None:
        self._L.llama_memory_seq_rm(self._mem, slot, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        if self.kv_unified:  # cells are shared by reference
            self._L.llama_memory_seq_cp(self._mem, src, dst, p0, p1)
            return
        # Per-slot KV streams: llama.cpp copies only whole streams (a partial copy aborts
        # the process), so copy all and cut the tail.
        self._L.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        if p1 >= 0:
            self._L.llama_memory_seq_rm(self._mem, dst, p1, -1)

    def seq_save(self, slot: int) -> bytes:
        L = self._L
        size = int(L.llama_state_seq_get_size(self._ctx, slot))
        buf = (ctypes.c_uint8 * size)()
        n = int(L.llama_state_seq_get_data(self._ctx, buf, size, slot))
        if n == 0 and size:
            raise GenerationError(f"could not save the state of sequence {slot}")
        return ctypes.string_at(buf, n)

    def seq_load(self, slot: int, data: bytes) -> None:
        L = self._L
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        n = int(L.llama_state_seq_set_data(self._ctx, buf, len(data), slot))
        if n == 0:
            raise GenerationError(f"could not restore a saved state into sequence {slot}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _free(self._L, self._batch, self._ctx, self._model)


class LlamaScorer:
    """Teacher-forced scoring of fixed-length token chunks, for perplexity (`ops/perplexity.py`
    holds the method; this class only drives llama.cpp).

    The context is laid out as llama.cpp's `llama-perplexity` lays out its own, so the two
    compute the same logits: `n_seq` sequences of `n_chunk` cells each in separate KV streams
    (`n_ctx = n_seq * n_chunk`), `n_batch` tokens per `llama_decode` (`n_batch < n_chunk`:
    several decodes per chunk; a multiple of `n_chunk`: that many chunks per decode) and
    micro-batches of at most 512. Logits are requested only for the positions scored, which
    spares the output projection over the vocabulary for the rest (the costliest row-wise
    step of a small model)."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_chunk: int,
        n_batch: int,
        n_threads: int,
        n_gpu_layers: int = 0,
        flash_attn: str | bool = "auto",
    ) -> None:
        path = Path(path)
        read_gguf(path)  # a bad file is a clear error before llama.cpp sees it
        L = _llama()
        self._L = L
        self.n_chunk = n_chunk
        self.n_seq = max(1, n_batch // n_chunk)
        self.n_batch = min(n_batch, self.n_seq * n_chunk)
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        model = L.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelError(f"llama.cpp could not load {path}")
        self._model = model
        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_seq * n_chunk
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = min(512, self.n_batch)  # llama-perplexity's default micro-batch
        cparams.n_seq_max = self.n_seq
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.kv_unified = False
        cparams.no_perf = True
        cparams.flash_attn_type = _FLASH.get(flash_attn, -1)
        ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            L.llama_model_free(model)
            raise ModelError(f"llama.cpp could not create a context for {path} (n_ctx={n_chunk})")
        self._ctx = ctx
        self._mem = L.llama_get_memory(ctx)
        self._vocab = L.llama_model_get_vocab(model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(model))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self.bos = int(L.llama_vocab_bos(self._vocab))
        self.size_bytes = int(L.llama_model_size(model))
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._closed = False

    def tokenize(self, text: str) -> list[int]:
        """Tokens of the whole text as llama-perplexity takes them: special tokens added as
        the model asks (BOS), special-token text left as text."""
        return _tokenize(self._L, self._vocab, text, True, False)

    def logits(self, chunks: list[list[int]], first: int, last: int) -> Any:
        """Evaluate up to `n_seq` chunks of `n_chunk` tokens from an empty cache; return the
        float32 logits at positions `first..last-1` of each, shaped (chunks, last - first,
        n_vocab). With one decode per call the array is a view of llama.cpp's own output
        buffer (no copy), valid until the next call."""
        import numpy as np

        L, b, n = self._L, self._batch, self.n_chunk
        if not 0 < len(chunks) <= self.n_seq or any(len(c) != n for c in chunks):
            raise GenerationError(f"expected 1..{self.n_seq} chunks of {n} tokens")
        L.llama_memory_clear(self._mem, True)
        rows = last - first
        token, pos, n_seq, seq_id, want = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        parts: list[Any] = []
        for start in range(0, n, self.n_batch):  # one pass when n_batch >= n_chunk
            size = min(n - start, self.n_batch)
            k = 0
            for s, chunk in enumerate(chunks):
                for p in range(start, start + size):
                    token[k] = chunk[p]
                    pos[k] = p
                    n_seq[k] = 1
                    seq_id[k][0] = s
                    want[k] = first <= p < last
                    k += 1
            b.n_tokens = k
            rc = L.llama_decode(self._ctx, b)
            if rc != 0:
                raise GenerationError(f"llama_decode failed with code {rc}")
            outs = len(chunks) * max(0, min(last, start + size) - max(first, start))
            if outs:
                view = np.ctypeslib.as_array(L.llama_get_logits(self._ctx), (outs, self.n_vocab))
                parts.append(view if start + size >= n and not parts else view.copy())
        if len(parts) == 1:
            return parts[0].reshape(len(chunks), rows, self.n_vocab)
        # several decodes per chunk: each decode's rows run over all chunks, so regroup
        per = [p.reshape(len(chunks), -1, self.n_vocab) for p in parts]
        return np.concatenate(per, axis=1)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _free(self._L, self._batch, self._ctx, self._model)
