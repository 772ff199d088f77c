"""The app index (llmos/apps/index.py): search, install by name with the sha256 checked
before anything is unpacked, archives, wheels, `llmos.apps` entry points, git URLs, and bad
inputs that are one line, exit code 2, and leave nothing installed."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import json
import shutil
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.apps import SHIPPED
from llmos.apps.index import BUILTIN, ENTRY_POINTS, builtin_index, tree_digest
from llmos.apps.manifest import load_manifest
from llmos.apps.store import AppStore
from llmos.cli import app
from llmos.config import load_settings
from tests.conftest import one_line_error

runner = CliRunner()


def _greeter(tmp_path: Path, version: str = "0.1.0", where: str = "greeter") -> Path:
    """A copy of the shipped hello app, renamed so the built-in `hello` doesn't shadow it."""
    d = tmp_path / where
    shutil.copytree(SHIPPED / "hello", d, ignore=shutil.ignore_patterns("__pycache__"))
    toml = (d / "llmos-app.toml").read_text()
    toml = toml.replace('name = "hello"', 'name = "greeter"')
    (d / "llmos-app.toml").write_text(toml.replace('version = "0.1.0"', f'version = "{version}"'))
    return d


def _tar(folder: Path, dest: Path, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return dest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(folder: Path, source: str, sha256: str) -> dict[str, Any]:
    m = load_manifest(folder)
    return {
        "name": m.name, "version": m.version, "description": m.description,
        "source": source, "sha256": sha256, "capabilities": m.capabilities,
    }  # fmt: skip


def _use_index(monkeypatch: pytest.MonkeyPatch, path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"apps": entries}))
    monkeypatch.setenv("LLMOS_APP_INDEX", str(path))
    return path


def _installed() -> list[str]:
    root = load_settings().data_dir / "apps"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An index listing a .tar.gz of the greeter app, by a path relative to the index."""
    (tmp_path / "market").mkdir()
    archive = _tar(_greeter(tmp_path), tmp_path / "market" / "greeter-0.1.0.tar.gz")
    entry = _entry(tmp_path / "greeter", "greeter-0.1.0.tar.gz", _sha(archive))
    return _use_index(monkeypatch, tmp_path / "market" / "index.json", [entry])


def test_search_then_install_by_name_then_run(
    tmp_path: Path, indexed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = runner.invoke(app, ["app", "search"])
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines()[1:]}
    assert "built-in" in lines["hello"] and str(indexed) in lines["greeter"], r.output
    r = runner.invoke(app, ["app", "search", "GREETS", "calc"])
    assert r.exit_code == 0 and "greeter" in r.output and "hello" in r.output, r.output
    r = runner.invoke(app, ["app", "search", "no-such-word"])
    assert r.exit_code == 0 and r.output.strip() == "no app matches", r.output

    r = runner.invoke(app, ["app", "install", "greeter", "--yes", "--deny", "time.now"])
    assert r.exit_code == 0 and "installed greeter 0.1.0" in r.output, r.output
    assert _installed() == ["greeter"]
    a = AppStore(load_settings().data_dir).get("greeter")
    assert a.source == "index:greeter" and (a.granted, a.denied) == (["calc"], ["time.now"])
    r = runner.invoke(app, ["app", "run", "greeter", "1", "2", "3"])
    assert r.exit_code == 0 and "hello from greeter" in r.output and "1+2+3 = 6" in r.output

    # a new version in the index: `update` finds it by name again, decisions kept
    archive = _tar(_greeter(tmp_path, "0.2.0", "v2/greeter"), tmp_path / "market" / "g2.tar.gz")
    entry = _entry(tmp_path / "v2/greeter", "g2.tar.gz", _sha(archive))
    _use_index(monkeypatch, indexed, [entry])
    r = runner.invoke(app, ["app", "update", "greeter"])
    assert (
        r.exit_code == 0
        and "(0.1.0 ->) greeter 0.2.0" in r.output
        and "denied:  time.now" in r.output
    )
    assert AppStore(load_settings().data_dir).get("greeter").manifest.version == "0.2.0"


def test_a_tampered_archive_is_refused_before_unpacking(tmp_path: Path, indexed: Path) -> None:
    archive = indexed.parent / "greeter-0.1.0.tar.gz"
    expected = _sha(archive)
    _tar(_greeter(tmp_path, "6.6.6", "evil/greeter"), archive)
    out = one_line_error(runner.invoke(app, ["app", "install", "greeter", "--yes"]))
    assert "sha256 mismatch" in out and expected in out and _sha(archive) in out, out
    assert _installed() == []
    r = runner.invoke(app, ["app", "list"])
    assert r.exit_code == 0 and "no apps installed" in r.output, r.output


def _traversal_tar(tmp_path: Path) -> Path:
    return _tar(_greeter(tmp_path), tmp_path / "bad.tar.gz", {"../escaped.txt": b"gotcha"})


def _traversal_zip(tmp_path: Path) -> Path:
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        for f in sorted(_greeter(tmp_path).iterdir()):
            zf.write(f, f"greeter/{f.name}")
        zf.writestr("/tmp/escaped.txt", b"gotcha")
    return tmp_path / "bad.zip"


def _symlink_tar(tmp_path: Path) -> Path:
    dest = tmp_path / "bad.tar.gz"
    with tarfile.open(dest, "w:gz") as tf:  # a link that would write through to outside
        tf.add(_greeter(tmp_path), arcname="greeter")
        link = tarfile.TarInfo("greeter/escaped.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "../../escaped.txt"
        tf.addfile(link)
    return dest


@pytest.mark.parametrize(
    "make", [_traversal_tar, _traversal_zip, _symlink_tar], ids=["tar", "zip", "link"]
)
def test_an_archive_reaching_outside_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any
) -> None:
    archive = make(tmp_path)
    # straight from its path, and through an index that pins its (correct) sha256
    out = one_line_error(runner.invoke(app, ["app", "install", str(archive), "--yes"]))
    assert "escaped.txt" in out and ("outside" in out or "a link" in out), out
    _use_index(monkeypatch, tmp_path / "i.json", [_entry(_greeter(tmp_path, where="g"), archive.name, _sha(archive))])  # fmt: skip
    out = one_line_error(runner.invoke(app, ["app", "install", "greeter", "--yes"]))
    assert "escaped.txt" in out, out
    assert _installed() == [] and not list(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("unknown", "no-such-app: no such app in the index"),
        ("not-json", "not valid JSON"),
        ("missing", "apps[0].sha256: Field required"),
        ("corrupt", "not a readable tar archive"),
        ("other-app", "holds app 'greeter', but the index lists 'other'"),
        ("not-there", "is not there"),
        ("caps", "asks for calc, time.now but the index lists calc"),
        ("url", "pins its sha256"),
    ],
)
def test_bad_index_inputs_are_one_line_and_leave_nothing(
    tmp_path: Path, indexed: Path, monkeypatch: pytest.MonkeyPatch, case: str, names: str
) -> None:
    entry = json.loads(indexed.read_text())["apps"][0]
    name = "greeter"
    if case == "unknown":
        name = "no-such-app"
    elif case == "not-json":
        indexed.write_text('{"apps": [')
        names = f"index {indexed}: {names}"
    elif case == "missing":
        del entry["sha256"]
        indexed.write_text(json.dumps([entry]))
    elif case == "corrupt":
        (indexed.parent / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
        entry |= {"source": "junk.tar.gz", "sha256": _sha(indexed.parent / "junk.tar.gz")}
        indexed.write_text(json.dumps([entry]))
    elif case == "other-app":
        name = entry["name"] = "other"
        indexed.write_text(json.dumps([entry]))
    elif case == "caps":
        entry["capabilities"] = {"calc": "does sums"}
        indexed.write_text(json.dumps([entry]))
    elif case == "not-there":
        entry["source"] = "gone.tar.gz"
        indexed.write_text(json.dumps([entry]))
    elif case == "url":
        name = "https://example.invalid/greeter.tar.gz"
    out = one_line_error(runner.invoke(app, ["app", "install", name, "--yes"]))
    assert names in out, out
    assert _installed() == []
    if case in ("not-json", "missing"):  # search reads the index too: the same one line
        assert names in one_line_error(runner.invoke(app, ["app", "search"]))


def test_install_a_wheel(tmp_path: Path) -> None:
    """A wheel is a zip; the app is the package folder in it holding llmos-app.toml."""
    src = _greeter(tmp_path, where="greeter_app")
    wheel = tmp_path / "greeter_app-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("greeter_app/__init__.py", "")
        for f in sorted(src.iterdir()):
            zf.write(f, f"greeter_app/{f.name}")
        zf.writestr("greeter_app-0.1.0.dist-info/METADATA", "Name: greeter-app\n")
        zf.writestr("greeter_app-0.1.0.dist-info/entry_points.txt", "")
    shutil.rmtree(src)
    r = runner.invoke(app, ["app", "install", str(wheel), "--yes"])
    assert r.exit_code == 0 and "installed greeter 0.1.0" in r.output, r.output
    assert AppStore(load_settings().data_dir).get("greeter").source == str(wheel)
    r = runner.invoke(app, ["app", "run", "greeter", "2", "2"])
    assert r.exit_code == 0 and "2+2 = 4" in r.output, r.output


def test_apps_of_installed_packages_are_found_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    pkg = _greeter(site, where="greeter_pkg")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    real = md.entry_points

    def entry_points(**kw: Any) -> Any:
        if kw.get("group") == ENTRY_POINTS:
            return [
                md.EntryPoint("greeter", "greeter_pkg", ENTRY_POINTS),
                md.EntryPoint("broken", "no_such_module_anywhere", ENTRY_POINTS),
            ]
        return real(**kw)

    monkeypatch.setattr(md, "entry_points", entry_points)
    r = runner.invoke(app, ["app", "search", "greeter"])
    assert r.exit_code == 0 and "installed package" in r.output, r.output
    assert "broken" not in r.output  # a broken one costs only itself
    r = runner.invoke(app, ["app", "install", "greeter", "--yes"])
    assert r.exit_code == 0 and "installed greeter 0.1.0" in r.output, r.output
    assert (load_settings().data_dir / "apps/greeter/app/main.py").is_file()


def test_the_builtin_index_lists_the_shipped_folders() -> None:
    listed = {x.name: x for x in builtin_index()}
    hello = listed["hello"]
    assert hello.origin == BUILTIN and hello.source == str(SHIPPED / "hello")
    assert hello.sha256 == tree_digest(SHIPPED / "hello")
    assert set(hello.capabilities) == {"calc", "time.now"}
    for x in listed.values():  # computed from the folders there, not a list kept by hand
        assert Path(x.source).parent == SHIPPED


def test_a_folder_digest_is_over_sorted_paths_and_bytes(tmp_path: Path) -> None:
    d = tmp_path / "app"
    (d / "sub").mkdir(parents=True)
    (d / "b.py").write_bytes(b"bee")
    (d / "sub" / "a.txt").write_bytes(b"")
    (d / "__pycache__").mkdir()  # what an install doesn't copy isn't hashed either
    (d / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"x")
    h = hashlib.sha256()
    for rel, data in [("b.py", b"bee"), ("sub/a.txt", b"")]:
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    assert tree_digest(d) == h.hexdigest()
    r = runner.invoke(app, ["app", "digest", str(d)])
    assert r.exit_code == 0 and r.output.strip() == h.hexdigest(), r.output


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over loopback HTTP."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_index_and_its_archives_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_dir: tuple[Path, str]
) -> None:
    root, base = http_dir
    archive = _tar(_greeter(tmp_path), root / "greeter.tar.gz")
    entry = _entry(tmp_path / "greeter", "greeter.tar.gz", _sha(archive))  # relative to the URL
    (root / "index.json").write_text(json.dumps({"apps": [entry]}))
    monkeypatch.setenv("LLMOS_APP_INDEX", f"{base}/index.json")
    r = runner.invoke(app, ["app", "search", "greeter"])
    assert r.exit_code == 0 and f"{base}/index.json" in r.output, r.output
    r = runner.invoke(app, ["app", "install", "greeter", "--yes"])
    assert r.exit_code == 0 and "installed greeter" in r.output, r.output
    monkeypatch.setenv("LLMOS_APP_INDEX", f"{base}/missing.json")
    out = one_line_error(runner.invoke(app, ["app", "search"]))
    assert "HTTP 404" in out, out


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd, check=True, capture_output=True,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_install_from_a_git_url(tmp_path: Path) -> None:
    work = _greeter(tmp_path, where="work")
    _git("init", "-q", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "greeter", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(tmp_path / "greeter.git"), cwd=tmp_path)
    url = f"git+{(tmp_path / 'greeter.git').as_uri()}"
    r = runner.invoke(app, ["app", "install", url, "--yes"])
    assert r.exit_code == 0 and "installed greeter 0.1.0" in r.output, r.output
    a = AppStore(load_settings().data_dir).get("greeter")
    assert a.source == url and not (a.files / ".git").exists()
    out = one_line_error(runner.invoke(app, ["app", "install", url + "-gone", "--yes"]))
    assert "git clone" in out and "failed" in out, out
    assert _installed() == ["greeter"]
