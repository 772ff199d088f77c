"""The app index (the market), and turning what `llmos app install` is given into a local
app folder the store can stage (docs/APPS.md).

An index is a JSON file of entries, each pinning what it points at by sha256:

    {"apps": [{"name": "hello", "version": "0.1.0", "description": "...",
               "source": "hello-0.1.0.tar.gz", "sha256": "<64 hex>",
               "capabilities": {"calc": "adds up the numbers you give it"}}]}

Three indexes are read, in this order: the built-in one (the folders in
`llmos/apps/shipped/`, computed when read), apps that installed packages publish under the
`llmos.apps` entry-point group, and the one the `app_index` setting names (a path or URL).

What can be installed (`materialize`): an app folder; an archive of one (`.tar.gz`, `.tgz`,
`.zip`) or a wheel (`.whl`); a `git+https://` (or `git+ssh://`, `git+file://`) URL, cloned
with `git clone --depth 1`; or a name from an index. A fetched file's sha256 is checked
before anything in it is unpacked, and archive members that would land outside the folder
they unpack into (absolute, `..`, links) refuse the whole archive: nothing is installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Annotated, Any
from urllib.parse import urljoin, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmos.apps import SHIPPED
from llmos.apps.manifest import MANIFEST, NAME_PATTERN, Name, load_manifest
from llmos.apps.store import NOT_COPIED, AppError
from llmos.errors import UserError

log = logging.getLogger("llmos.apps")

ENTRY_POINTS = "llmos.apps"  # group whose entry points name packages holding an app folder
BUILTIN = "built-in"
PACKAGE = "installed package"
INDEX_PREFIX = "index:"  # what install.json records for an app installed by name

FETCH_TIMEOUT_S = 60.0
GIT_TIMEOUT_S = 300.0
MAX_INDEX_BYTES = 8 << 20
MAX_ARCHIVE_BYTES = 256 << 20
# Unpacked size and member count past which an archive is refused (a zip bomb stops here).
MAX_UNPACKED_BYTES = 512 << 20
MAX_MEMBERS = 10_000

ARCHIVES = {".tar.gz": "tar", ".tgz": "tar", ".zip": "zip", ".whl": "zip"}
GIT_SCHEMES = ("git+https://", "git+http://", "git+ssh://", "git+file://")
_DIGEST_FILE_LIMIT = 1 << 20


class IndexEntry(BaseModel):
    """One entry of an index file. Unknown fields are ignored: an index is written for many
    llmos versions, and a newer field must not make older ones refuse the whole index."""

    model_config = ConfigDict(extra="ignore")

    name: Name
    version: Annotated[str, Field(min_length=1, max_length=40)]
    description: Annotated[str, Field(max_length=200)]
    source: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    capabilities: dict[str, str]


@dataclass(frozen=True)
class Listing:
    """An app an index offers: `source` resolved (an absolute path or a URL); `sha256` None
    for an installed package's app (its files are already on this machine); `origin` is where
    the listing came from: `built-in`, `installed package`, or the index's path or URL."""

    name: str
    version: str
    description: str
    source: str
    sha256: str | None
    capabilities: dict[str, str] = field(default_factory=dict)
    origin: str = ""

    def matches(self, words: Iterable[str]) -> bool:
        text = f"{self.name} {self.description}".lower()
        return all(w.lower() in text for w in words)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- digests -------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_DIGEST_FILE_LIMIT):
            h.update(chunk)
    return h.hexdigest()


def _ignored(name: str) -> bool:
    return any(fnmatchcase(name, pat) for pat in NOT_COPIED)


def tree_digest(folder: Path) -> str:
    """The sha256 of an app folder, as an index pins a folder source: over its files (what
    an install copies: not `__pycache__`, `*.pyc` or `.git`), sorted by relative POSIX path,
    each fed as the path in UTF-8, a NUL byte, its size as 8 bytes big-endian, its bytes."""
    files: list[tuple[str, Path]] = []
    for top, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not _ignored(d)]
        for n in names:
            if not _ignored(n):
                p = Path(top) / n
                files.append((p.relative_to(folder).as_posix(), p))
    h = hashlib.sha256()
    for rel, p in sorted(files):
        data = p.read_bytes()
        h.update(rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def digest(path: Path) -> str:
    """What an index's `sha256` must be for `path`: a file's bytes, or a folder's tree."""
    return tree_digest(path) if path.is_dir() else file_digest(path)


# -- indexes -------------------------------------------------------------------------------
def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _one_line(s: object) -> str:
    return " ".join(str(s).split())


def builtin_index() -> list[Listing]:
    """The apps shipped in llmos/apps/shipped/, whatever folders are there now."""
    out = []
    for d in sorted(SHIPPED.iterdir()) if SHIPPED.is_dir() else []:
        if not (d / MANIFEST).is_file():
            continue
        try:
            m = load_manifest(d)
        except UserError as exc:  # one broken shipped app must not hide the others
            log.warning("shipped app %s skipped: %s", d.name, exc)
            continue
        out.append(
            Listing(m.name, m.version, m.description, str(d), tree_digest(d),
                    dict(m.capabilities), BUILTIN)
        )  # fmt: skip
    return out


def _package_folder(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise AppError(f"no module {module}")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    raise AppError(f"module {module} has no folder")


def package_index() -> list[Listing]:
    """Apps that installed packages publish: each `llmos.apps` entry point names a module or
    package whose folder holds an `llmos-app.toml`. One that fails costs only itself."""
    out = []
    # Looked up at call time, through the module, so tests can patch md.entry_points.
    for ep in md.entry_points(group=ENTRY_POINTS):
        try:
            folder = _package_folder(ep.module)
            m = load_manifest(folder)
        except Exception as exc:  # a broken plug-in costs its own listing, with a warning
            log.warning("%s entry point %s skipped: %s", ENTRY_POINTS, ep.name, _one_line(exc))
            continue
        out.append(
            Listing(m.name, m.version, m.description, str(folder), None,
                    dict(m.capabilities), PACKAGE)
        )  # fmt: skip
    return out


def _read_index_bytes(where: str) -> bytes:
    if _is_url(where):
        with tempfile.TemporaryDirectory(prefix="llmos-index-") as tmp:
            f = Path(tmp) / "index.json"
            _download(where, f, MAX_INDEX_BYTES)
            return f.read_bytes()
    path = Path(where).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AppError(f"index {where}: cannot read it: {exc.strerror or exc}") from None


def parse_index(raw: bytes, where: str) -> list[Listing]:
    """The listings of an index file's contents; `where` (its path or URL) names it in
    errors and is what relative sources are relative to."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise AppError(f"index {where}: not valid JSON: {_one_line(exc)}") from None
    entries = data.get("apps") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise AppError(f'index {where}: expected {{"apps": [...]}} or a list of apps')
    out: list[Listing] = []
    for i, raw_entry in enumerate(entries):
        try:
            e = IndexEntry.model_validate(raw_entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "entry"
            raise AppError(f"index {where}: apps[{i}].{loc}: {err['msg']}") from None
        if any(x.name == e.name for x in out):
            raise AppError(f"index {where}: apps[{i}]: {e.name} is listed twice")
        out.append(
            Listing(e.name, e.version, e.description, _resolve_source(e.source, where),
                    e.sha256.lower(), dict(e.capabilities), where)
        )  # fmt: skip
    return out


def _resolve_source(source: str, where: str) -> str:
    if _is_url(source):
        return source
    if _is_url(where):
        return urljoin(where, source)
    p = Path(source).expanduser()
    return str(p if p.is_absolute() else (Path(where).expanduser().absolute().parent / p))


def load_index(where: str) -> list[Listing]:
    """The listings of the index file at `where`, a path or an http(s) URL."""
    return parse_index(_read_index_bytes(where), where)


def listings(app_index: str = "") -> list[Listing]:
    """Every app the indexes offer, built-in first, then installed packages, then
    `app_index`'s (a name in several: the first is the one `install NAME` takes)."""
    return [*builtin_index(), *package_index(), *(load_index(app_index) if app_index else [])]


def search(words: Iterable[str], app_index: str = "") -> list[Listing]:
    ws = list(words)
    return [x for x in listings(app_index) if x.matches(ws)]


def find(name: str, app_index: str = "") -> Listing:
    """The first listing named `name`; the configured index is read only when needed."""
    for x in [*builtin_index(), *package_index()]:
        if x.name == name:
            return x
    for x in load_index(app_index) if app_index else []:
        if x.name == name:
            return x
    raise AppError(f"{name}: no such app in the index (llmos app search) and no such file")


# -- fetching and unpacking ----------------------------------------------------------------
def _download(url: str, dest: Path, limit: int) -> None:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=True) as resp:
            if not resp.is_success:
                raise AppError(f"{url}: HTTP {resp.status_code}")
            n = 0
            with dest.open("wb") as fh:
                for chunk in resp.iter_bytes():
                    n += len(chunk)
                    if n > limit:
                        raise AppError(f"{url}: larger than {limit} bytes; not fetched")
                    fh.write(chunk)
    except httpx.TimeoutException:
        raise AppError(f"{url}: no answer within {FETCH_TIMEOUT_S:g} s") from None
    except httpx.HTTPError as exc:
        raise AppError(f"{url}: cannot fetch it: {_one_line(exc)}") from None


def _archive_suffix(name: str, label: str) -> str:
    for suffix in ARCHIVES:
        if name.lower().endswith(suffix):
            return suffix
    raise AppError(f"{label}: not an app folder or archive (.tar.gz, .tgz, .zip, or a .whl wheel)")


def _member_path(name: str, label: str) -> PurePosixPath | None:
    """Where an archive member lands inside the folder it unpacks into; None for the
    folder itself. Anything that would land outside it refuses the whole archive."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", norm):
        raise AppError(f"{label}: member {name!r} points outside the archive; nothing installed")
    parts = [x for x in p.parts if x != "."]
    return PurePosixPath(*parts) if parts else None


def _check_sizes(count: int, total: int, label: str) -> None:
    if count > MAX_MEMBERS or total > MAX_UNPACKED_BYTES:
        raise AppError(
            f"{label}: {count} members, {total} bytes unpacked: more than an app may hold "
            f"({MAX_MEMBERS} members, {MAX_UNPACKED_BYTES} bytes)"
        )


# A checked member to write: its path under the destination, and how to open its bytes
# (None for a folder).
_Planned = tuple[PurePosixPath, Callable[[], IO[bytes]] | None]


def _write_planned(dest: Path, plan: list[_Planned]) -> None:
    """Write members that were all checked first (paths, kinds, sizes)."""
    for rel, open_member in plan:
        target = dest.joinpath(*rel.parts)
        if open_member is None:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, target.open("wb") as out:
            shutil.copyfileobj(src, out)


def _unpack_tar(archive: Path, dest: Path, label: str) -> None:
    with tarfile.open(archive, "r:gz") as tf:
        members = tf.getmembers()

        def opener(m: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
            def open_member() -> IO[bytes]:
                src = tf.extractfile(m)
                if src is None:
                    raise AppError(f"{label}: member {m.name!r} cannot be read")
                return src

            return open_member

        plan: list[_Planned] = []
        for m in members:  # every member is checked before any is written
            rel = _member_path(m.name, label)
            if not (m.isfile() or m.isdir()):
                raise AppError(f"{label}: member {m.name!r} is a link or special file; refused")
            if rel is not None:
                plan.append((rel, None if m.isdir() else opener(m)))
        _check_sizes(len(members), sum(m.size for m in members), label)
        _write_planned(dest, plan)


def _unpack_zip(archive: Path, dest: Path, label: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan: list[_Planned] = []
        for info in infos:
            rel = _member_path(info.filename, label)
            # Unix file type bits, when the zip recorded them (many tools leave them 0).
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise AppError(f"{label}: member {info.filename!r} is a link or special file")
            if rel is not None:
                plan.append((rel, None if info.is_dir() else partial(zf.open, info)))
        _check_sizes(len(infos), sum(i.file_size for i in infos), label)
        _write_planned(dest, plan)


def unpack(archive: Path, dest: Path, label: str) -> Path:
    """Unpack an app archive or wheel into `dest` (checking every member first) and return
    the app folder in it; `label` names the archive in errors."""
    kind = ARCHIVES[_archive_suffix(archive.name, label)]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        (_unpack_tar if kind == "tar" else _unpack_zip)(archive, dest, label)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise AppError(f"{label}: not a readable {kind} archive: {_one_line(exc)}") from None
    return find_app_folder(dest, label)


def find_app_folder(root: Path, label: str) -> Path:
    """The app folder in an unpacked archive, wheel or clone: `root` if it holds the
    manifest, else the one folder holding one at the shallowest depth (a wheel's package)."""
    if (root / MANIFEST).is_file():
        return root
    found = [
        p.parent
        for p in root.rglob(MANIFEST)
        if p.is_file() and ".git" not in p.relative_to(root).parts
    ]
    if not found:
        raise AppError(f"{label}: no {MANIFEST} in it (an app is a folder with one)")
    depth = min(len(p.relative_to(root).parts) for p in found)
    top = sorted(p for p in found if len(p.relative_to(root).parts) == depth)
    if len(top) > 1:
        names = ", ".join(p.relative_to(root).as_posix() for p in top)
        raise AppError(f"{label}: holds several apps ({names}); an archive holds one")
    return top[0]


def _git_clone(spec: str, tmp: Path) -> Path:
    if not spec.startswith(GIT_SCHEMES):
        raise AppError(f"{spec}: a git URL starts with {', '.join(GIT_SCHEMES)}")
    url = spec.removeprefix("git+")
    git = shutil.which("git")
    if git is None:
        raise AppError(f"{spec}: git is not installed (it clones git+ URLs)")
    dest = tmp / "repo"
    # No prompt for credentials: a repository that needs them fails instead of hanging.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(
            [git, "clone", "--depth", "1", "--quiet", "--", url, str(dest)],
            capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env=env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise AppError(f"git clone {url}: no result within {GIT_TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        # git's first `fatal:` line says what went wrong; the lines after it give advice
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        why = _one_line((fatal or lines)[0]) if lines else f"exit code {proc.returncode}"
        raise AppError(f"git clone {url} failed: {why}")
    return find_app_folder(dest, spec)


def _verify(expected: str | None, actual: str, listing: Listing) -> None:
    if expected is not None and actual != expected:
        raise AppError(
            f"{listing.name}: sha256 mismatch for {listing.source}: expected {expected}, "
            f"got {actual}; nothing installed"
        )


def fetch_listing(listing: Listing, tmp: Path) -> Path:
    """Fetch what `listing` points at into `tmp`, check its sha256 before unpacking it,
    and return the app folder, checked to be the app the index says it is."""
    label = listing.source
    if _is_url(label):
        suffix = _archive_suffix(urlparse(label).path, label)
        archive = tmp / f"fetched{suffix}"
        _download(label, archive, MAX_ARCHIVE_BYTES)
        _verify(listing.sha256, file_digest(archive), listing)
        folder = unpack(archive, tmp / "unpacked", label)
    else:
        src = Path(label)
        if src.is_dir():  # hash the copy, so what was checked is what gets installed
            folder = tmp / "copy"
            shutil.copytree(src, folder, ignore=shutil.ignore_patterns(*NOT_COPIED))
            _verify(listing.sha256, tree_digest(folder), listing)
        elif src.is_file():
            archive = tmp / f"fetched{_archive_suffix(src.name, label)}"
            shutil.copyfile(src, archive)
            _verify(listing.sha256, file_digest(archive), listing)
            folder = unpack(archive, tmp / "unpacked", label)
        else:
            raise AppError(f"{listing.name}: its source {label} is not there")
    try:
        m = load_manifest(folder)
    except UserError as exc:
        raise AppError(str(exc).replace(str(folder), label)) from None
    if m.name != listing.name:
        raise AppError(f"{label}: holds app {m.name!r}, but the index lists {listing.name!r}")
    if set(m.capabilities) != set(listing.capabilities):
        raise AppError(
            f"{label}: its manifest asks for {', '.join(m.capabilities) or 'nothing'} but the "
            f"index lists {', '.join(listing.capabilities) or 'nothing'}"
        )
    return folder


@dataclass(frozen=True)
class Local:
    """An app folder on this machine to stage; `record` is where it came from (None: the
    folder itself, installed from where it is)."""

    path: Path
    record: str | None


@contextmanager
def materialize(spec: str, app_index: str = "") -> Iterator[Local]:
    """The app folder `spec` names: a folder (or its manifest), an archive or wheel, a
    `git+` URL, or a name in an index (`index:NAME`, or NAME when no such path exists).
    Whatever was fetched or unpacked is removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="llmos-app-") as tmp:
        try:
            local = _materialize(spec, app_index, Path(tmp))
        except OSError as exc:
            raise AppError(f"{spec}: {_one_line(exc)}") from None
        yield local


def _materialize(spec: str, app_index: str, tmp: Path) -> Local:
    if spec.startswith("git+"):
        return Local(_git_clone(spec, tmp), spec)
    if _is_url(spec):
        raise AppError(
            f"{spec}: an archive URL installs through an index entry that pins its sha256 "
            "(the app_index setting), or use a git+https:// URL"
        )
    if spec.startswith(INDEX_PREFIX):
        name = spec.removeprefix(INDEX_PREFIX)
        return Local(fetch_listing(find(name, app_index), tmp), spec)
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir() or p.name == MANIFEST:
            return Local(p, None)
        label = str(p.resolve())
        archive = tmp / f"archive{_archive_suffix(p.name, label)}"
        shutil.copyfile(p, archive)
        return Local(unpack(archive, tmp / "unpacked", label), label)
    if re.fullmatch(NAME_PATTERN, spec):
        return Local(fetch_listing(find(spec, app_index), tmp), INDEX_PREFIX + spec)
    raise AppError(f"{spec}: no such file or folder")
