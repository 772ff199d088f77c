"""The app's state: the kernel it serves, admission to the generation queue, the model
catalog as clients see it, embeddings, and one-shot syscalls.

Every router reaches the kernel through one `Api` (`app.state.api`), so limits and
counters have one home.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llmos.config import Settings
from llmos.core.process import Process
from llmos.errors import LlmosError, UserError
from llmos.kernel.kernel import Kernel
from llmos.kernel.models import ModelEntry
from llmos.kernel.oneshot import run_syscall
from llmos.server.errors import ApiError, from_llmos
from llmos.server.metrics import Metrics

API_CAPS = frozenset({"llm.*"})  # what a generation request's process may do
RETAIN_FINISHED = 256  # finished request processes kept in the table for `ps`


@dataclass
class Ticket:
    """A place in the generation queue; released exactly once."""

    api: Api
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.api.in_flight -= 1


@dataclass
class Api:
    """The app's state: the kernel, limits, counters."""

    settings: Settings
    kernel: Kernel
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: int = 0
    finished: deque[int] = field(default_factory=deque)

    # admission --------------------------------------------------------------------
    def admit(self) -> Ticket:
        if self.in_flight >= self.settings.server_queue_limit:
            self.metrics.reject("queue")
            raise ApiError(
                429, f"too many requests in flight (limit {self.settings.server_queue_limit}); retry shortly",
                code="rate_limit_exceeded", headers={"Retry-After": "1"},
            )  # fmt: skip
        self.in_flight += 1
        return Ticket(self)

    def retire(self, proc: Process) -> None:
        """Keep the last few finished request processes in `ps`; drop older ones."""
        self.finished.append(proc.pid)
        while len(self.finished) > RETAIN_FINISHED:
            pid = self.finished.popleft()
            old = self.kernel.procs.get(pid)
            if old is not None and not old.alive:
                del self.kernel.procs[pid]

    # models -----------------------------------------------------------------------
    def models(self) -> list[ModelEntry]:
        """Servable models: the default first, then the loaded ones, then the rest. Many
        clients take the first model listed; it must be one that chats."""
        entries = [
            e for e in self.kernel.library.list() if e.remote or e.path.is_file() or e.builtin
        ]
        loaded = list(self.kernel.models.loaded)
        default = self.settings.default_model

        def rank(e: ModelEntry) -> tuple[int, int]:
            if e.name == default:
                return (0, 0)
            if e.name in loaded:
                return (1, loaded.index(e.name))
            return (2, 0)

        return sorted(entries, key=rank)  # stable: the library's order within the rest

    def model_names(self) -> list[str]:
        return [e.name for e in self.models()]

    def model_card(self, entry: ModelEntry) -> dict[str, Any]:
        """An OpenAI model object, with llmos's fields beside it (as llama-server's router
        mode adds `status`): whether it is the default, loaded, and can chat."""
        lib = self.kernel.library
        if entry.remote:  # served by another engine, with its own chat template
            meta = entry.meta or {}
            return {
                "id": entry.name, "object": "model", "created": int(self.kernel.boot_time),
                "owned_by": "llmos", "status": {"value": "remote"},
                "default": entry.name == self.settings.default_model, "can_chat": True,
                "chat_format": "the remote server's", "remote": meta.get("url"),
            }  # fmt: skip
        base = lib.get(entry.base) if entry.kind == "lora" and entry.base else entry
        fmt = lib.chat_format(base, self.settings.chat_formats)  # an adapter chats as its base
        loaded = base.name in self.kernel.models.loaded
        extra = {"base": base.name, "kind": "lora"} if base is not entry else {}
        return {
            "id": entry.name,
            "object": "model",
            "created": int(self.kernel.boot_time),
            "owned_by": "llmos",
            "status": {"value": "loaded" if loaded else "unloaded"},
            "default": entry.name == self.settings.default_model,
            "can_chat": fmt.can_chat,
            "chat_format": fmt.describe(),
            **extra,
        }

    def model_name(self, name: str | None) -> str:
        name = name or self.settings.default_model
        if "+" in name:  # BASE+ADAPTER, as Ollama's created models: both must be listed
            base, _, adapter = name.partition("+")
            entry = next((e for e in self.models() if e.name == adapter), None)
            if base in self.model_names() and entry is not None and entry.kind == "lora":
                return name
            raise ApiError(
                404, f"unknown model {name!r} (BASE+ADAPTER needs a model and an adapter)",
                param="model", code="model_not_found",
            )  # fmt: skip
        if name in self.settings.routes:  # a route picks the model per request
            return name
        if name not in self.model_names():  # names only: a client never picks a file path
            raise ApiError(404, f"unknown model {name!r}", param="model", code="model_not_found")
        return name

    # embeddings -------------------------------------------------------------------
    def embed(self, texts: list[str]) -> list[list[float]]:
        """Through the kernel's embedder: the one the memory FS indexes with (the
        `embed_model` setting), loaded once per kernel."""
        try:
            vectors = self.kernel.embedder.embed(texts)
        except (UserError, ImportError) as exc:  # no sentence-transformers, or no model
            raise ApiError(
                501, f"embeddings are not available: {exc}", code="not_available"
            ) from None
        return [list(map(float, v)) for v in vectors]

    # syscalls ---------------------------------------------------------------------
    async def syscall(self, name: str, args: dict[str, Any]) -> Any:
        """Run one syscall in its own short process (permissions, approval and audit apply).

        Memory and QA calls get the trusted caller's memory capabilities; any other syscall
        gets just its own capability, and the daemon's approval policy decides the rest
        (a non-interactive `ask` means deny)."""
        try:
            return await run_syscall(
                self.kernel, name, args, label=f"api:{name}", on_exit=self.retire
            )
        except LlmosError as exc:
            raise from_llmos(exc) from None
