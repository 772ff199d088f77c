"""The GGUF header reader: real metadata from the default model, clear errors on bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from llmos.errors import InvalidModelFile, ModelNotFound
from llmos.kernel.gguf import read_gguf


def test_default_model_metadata(real_model_path: Path) -> None:
    info = read_gguf(real_model_path)
    s = info.summary()
    assert s["architecture"] == "llama"
    assert s["quantization"] == "Q4_1"
    assert 130_000_000 < s["parameters"] < 140_000_000
    assert s["context_length"] == 8192
    assert s["chat_template"] is True
    assert s["size_bytes"] == real_model_path.stat().st_size
    assert "im_start" in (info.chat_template or "")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")


def test_not_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(InvalidModelFile, match="not a GGUF"):
        read_gguf(p)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="not a file"):
        read_gguf(tmp_path)


@pytest.mark.parametrize("keep", [10, 4096, 1 << 20, 50 << 20])
def test_truncated_gguf(tmp_path: Path, real_model_path: Path, keep: int) -> None:
    p = tmp_path / "cut.gguf"
    with real_model_path.open("rb") as src:
        p.write_bytes(src.read(keep))
    with pytest.raises(InvalidModelFile, match="truncated"):
        read_gguf(p)


def test_corrupt_counts(tmp_path: Path) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**60, 1))
    with pytest.raises(InvalidModelFile, match="corrupt"):
        read_gguf(p)


def test_unsupported_version(tmp_path: Path) -> None:
    p = tmp_path / "v9.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(InvalidModelFile, match="version 9"):
        read_gguf(p)


def test_corrupt_array_count_fails_fast(tmp_path: Path) -> None:
    """A key claiming an array of 2**60 numbers: one clear error, not a loop over nothing
    (the gguf package's reader spins on this file; see the module docstring)."""
    p = tmp_path / "huge-array.gguf"
    kv = struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 0, 2**60)
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv)
    with pytest.raises(InvalidModelFile, match="corrupt"):
        read_gguf(p)


def test_truncated_inside_the_token_table(tmp_path: Path, real_model_path: Path) -> None:
    # The token strings are stepped over in 1 MB reads, not read one by one: a file that
    # ends among them is still "truncated", never a struct error or a silent success.
    p = tmp_path / "cut.gguf"
    with real_model_path.open("rb") as f:
        p.write_bytes(f.read(600_000))
    with pytest.raises(InvalidModelFile, match="truncated"):
        read_gguf(p)
