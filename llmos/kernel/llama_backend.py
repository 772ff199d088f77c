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
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmos.core.sampling import SamplingParams
from llmos.errors import GenerationError, ModelError
from llmos.kernel.backend import BatchEntry, DecodeNoSpace
from llmos.kernel.gguf import read_gguf

_init_lock = threading.Lock()
_initialized = False

_KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
_FLASH: dict[str | bool, int] = {"auto": -1, "on": 1, True: 1, "off": 0, False: 0}


def _llama() -> Any:
    global _initialized
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    import llama_cpp

    with _init_lock:
        if not _initialized:
            llama_cpp.llama_backend_init()
            _initialized = True
    return llama_cpp


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
    """GBNF text for a JSON schema (llama.cpp's own converter)."""
    _llama()
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise GenerationError(f"JSON schema cannot be turned into a grammar: {exc}") from exc


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
        self._closed = False
        self.size_bytes = int(L.llama_model_size(model))
        self.n_params = int(L.llama_model_n_params(model))

    # -- vocabulary -------------------------------------------------------------------
    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        L = self._L
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

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
                raise GenerationError("invalid grammar (llama.cpp could not parse it)")
            L.llama_sampler_chain_add(chain, g)
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
            self._L.llama_sampler_free(sampler)

    # -- evaluation -------------------------------------------------------------------
    def decode(self, entries: list[BatchEntry]) -> list[int]:
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
            if e.logits:
                logits[k - 1] = 1
                out.append(k - 1)
            else:
                out.append(-1)
        if k > self._batch_cap:
            raise GenerationError(f"batch of {k} tokens exceeds n_batch {self._batch_cap}")
        b.n_tokens = k
        rc = self._L.llama_decode(self._ctx, b)
        if rc == 1:
            raise DecodeNoSpace("no KV slot for the batch")
        if rc != 0:
            raise GenerationError(f"llama_decode failed with code {rc}")
        return out

    def sample(self, sampler: Any, index: int) -> int:
        return int(self._L.llama_sampler_sample(sampler, self._ctx, index))

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
        if self._closed:
            return
        self._closed = True
        L = self._L
        L.llama_batch_free(self._batch)
        L.llama_free(self._ctx)
        L.llama_model_free(self._model)
