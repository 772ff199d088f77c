"""Traversal, names and permissions, directly and through the fs.* syscalls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmos.config import load_settings
from llmos.errors import PermissionDenied, SyscallError
from llmos.kernel.kernel import Kernel
from llmos.kernel.scripted import ScriptedBackend
from llmos.memory import syscalls as memsys
from llmos.memory.fs import MemoryFS, ReadOnly
from llmos.memory.paths import BadPath, normalize


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("/tmp/a/../b", "/tmp/b"),
        ("/tmp//./x/", "/tmp/x"),
        ("/home/bob/../alice/n", "/home/alice/n"),
        ("/", "/"),
    ],
)
def test_normalize(raw: str, want: str) -> None:
    assert normalize(raw) == want


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("/../etc/passwd", "escapes"),
        ("/tmp/../../x", "escapes"),
        ("/tmp/a\x00b", "NUL"),
        ("/tmp/" + "n" * 256, "longer than 255"),
        ("/tmp/" + "a/" * 2100, "longer than 4096"),
        ("/usr/bin", "outside the namespace"),
        ("", "empty"),
    ],
)
def test_bad_paths_rejected(tmp_path: Path, raw: str, why: str) -> None:
    fs = MemoryFS(tmp_path)
    with pytest.raises(BadPath, match=why):
        fs.write(raw, "x")


def test_private_homes_and_read_only_mounts(tmp_path: Path) -> None:
    fs = MemoryFS(tmp_path / "m")
    fs.write("/home/alice/secret.md", "alice's plan", user="alice")
    assert fs.stat("/home/alice").mode == 0o700
    for op in (
        lambda: fs.read("/home/alice/secret.md", "bob"),
        lambda: fs.write("/home/alice/secret.md", "poisoned", "bob"),
        lambda: fs.append("/home/alice/new.md", "poisoned", "bob"),
        lambda: fs.ls("/home/alice", "bob"),
        lambda: fs.rm("/home/alice/secret.md", "bob"),
        lambda: fs.cp("/home/alice/secret.md", "/tmp/stolen", "bob"),
    ):
        with pytest.raises(PermissionDenied):
            op()
    assert fs.find("/", "*.md", "bob") == []
    assert fs.grep("plan", "/", "bob") == []
    assert fs.read("/home/alice/secret.md") == "alice's plan"  # untouched
    with pytest.raises(PermissionDenied):
        fs.write("/etc/prompts/rag.txt", "x", "bob")
    host = tmp_path / "host"
    host.mkdir()
    (host / "doc.md").write_text("hello")
    fs.mount(host, "docs", index=False)
    for op in (
        lambda: fs.write("/mnt/docs/doc.md", "changed"),
        lambda: fs.write("/mnt/docs/new.md", "x"),
        lambda: fs.rm("/mnt/docs/doc.md"),
        lambda: fs.mv("/mnt/docs/doc.md", "/tmp/doc.md"),
        lambda: fs.write("/proc/1", "x"),
    ):
        with pytest.raises(ReadOnly):
            op()
    assert fs.read("/mnt/docs/doc.md", "bob") == "hello"


def _kernel(tmp_path: Path) -> Kernel:
    settings = load_settings(data_dir=tmp_path / "data")
    return Kernel(
        settings,
        backend_factory=lambda entry, progress: ScriptedBackend(responder=lambda p: "ok"),
        syscall_modules=[memsys],
    )


async def test_syscalls_respect_grants_and_owners(tmp_path: Path) -> None:
    results: dict[str, Any] = {}

    async def alice(ctx: Any) -> int:
        results["w"] = await ctx.sys.fs.write(path="/home/alice/m.md", content="mine")
        results["r"] = await ctx.sys.fs.read(path="/home/alice/m.md")
        results["ls"] = await ctx.sys.fs.ls(path="/home/alice")
        return 0

    async def bob(ctx: Any) -> int:
        for call in (
            ctx.sys.fs.read(path="/home/alice/m.md"),
            ctx.sys.fs.write(path="/home/alice/m.md", content="poison"),
            ctx.sys.fs.write(path="/tmp/../../etc/x", content="x"),
        ):
            try:
                await call
            except SyscallError as exc:
                results.setdefault("bob", []).append(exc.kind)
        return 0

    async with _kernel(tmp_path) as k:
        caps = ["fs.read:/home/self/**", "fs.write:/home/self/**", "fs.read:/tmp/**"]
        p1 = await k.spawn(alice, name="alice", caps=caps)
        assert await k.wait(p1.pid) == 0
        p2 = await k.spawn(bob, name="bob", caps=caps)
        assert await k.wait(p2.pid) == 0
        assert results["w"]["version"] == 1
        assert results["r"] == "mine"
        assert [e["path"] for e in results["ls"]] == ["/home/alice/m.md"]
        assert results["bob"] == ["permission_denied", "permission_denied", "bad_path"]
        assert k.memory.read("/home/alice/m.md") == "mine"
