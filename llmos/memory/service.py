"""The memory services a kernel declares: its embedder and its memory filesystem.

Each is opened by `kernel.service(open_...)` on first use and closed at the kernel's
shutdown (`llmos/kernel/services.py`): one MiniLM per kernel, shared by the memory FS's
index and the REST API's `/v1/embeddings`.
"""

from __future__ import annotations

from llmos.core.context import KernelServices
from llmos.memory.fs import MemoryFS
from llmos.memory.index import Embedder
from llmos.memory.procfs import ProcView


def open_embedder(kernel: KernelServices) -> Embedder:
    """The kernel's embedder (`embed_model`); it loads its weights on the first embed."""
    return Embedder(kernel.settings.embed_model)


def open_memory(kernel: KernelServices) -> MemoryFS:
    """The kernel's memory filesystem, with `/proc` showing the kernel's processes."""
    fs = MemoryFS(
        kernel.settings.data_dir / "memory",
        embedder=kernel.service(open_embedder),
        chroma_url=kernel.settings.chroma_url,
    )
    fs.proc = ProcView(lambda: dict(kernel.procs))
    return fs
