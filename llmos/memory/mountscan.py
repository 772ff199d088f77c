"""Which host files a mount takes, and why it leaves the others.

A file is taken by what it holds, not by its name: real folders are full of plain text
with no known extension (README, LICENSE, Makefile, `notes.0`, `.org`, `.log`), and a
list of suffixes silently dropped them all. Text is UTF-8 (or UTF-16 with a byte-order
mark) with no NUL byte in its first 8 KB; PDF goes through pypdf; images, archives and
other known binary formats are left by their suffix or magic bytes without reading them
whole. Tool and dependency folders (`.git`, `node_modules`, virtualenvs, caches) are left
by default: they are large, machine-made and rarely what a person means by "my notes".
So are files that commonly hold credentials (`.env`, `id_rsa`, `*.pem`, `.ssh/`): plain
text, but an agent's memory is no place for them.

Every file left out is reported with its reason, so a mount never answers "0 files" with
no word about why.
"""

from __future__ import annotations

import codecs
import fnmatch
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmos.core.units import human_bytes

SNIFF_BYTES = 8192
SKIPPED_LISTED = 1000  # skipped files named in a mount's result; the counts are always whole
DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024

# Folders of tools and dependencies: left by default (a folder holding `pyvenv.cfg` is a
# virtualenv whatever its name).
DEFAULT_EXCLUDED_DIRS = frozenset(
    ".git .hg .svn .bzr node_modules __pycache__ .venv venv .tox .nox .mypy_cache "
    ".pytest_cache .ruff_cache .ipynb_checkpoints .eggs".split()
)
# Files and folders that commonly hold credentials: text, but not for an agent's memory
# (none of them was mounted before content sniffing either: no text suffix).
SECRET_DIRS = frozenset(".ssh .gnupg .aws".split())
SECRET_FILES = (
    ".env", ".env.*", ".netrc", ".npmrc", ".pypirc", "id_rsa", "id_dsa", "id_ecdsa",
    "id_ed25519", "*.pem", "*.key", "*.p12", "*.pfx",
)  # fmt: skip
# Known binary formats, left without opening them (a big video costs a stat, not a read).
BINARY_SUFFIXES = frozenset(
    ".png .jpg .jpeg .gif .bmp .ico .webp .tif .tiff .psd .heic .mp3 .wav .flac .ogg .m4a "
    ".aac .mp4 .m4v .mov .avi .mkv .webm .zip .gz .tgz .bz2 .xz .zst .7z .rar .tar .jar .whl "
    ".egg .exe .dll .so .dylib .o .a .obj .lib .class .pyc .pyo .pyd .wasm .bin .dat .db "
    ".sqlite .sqlite3 .iso .dmg .img .ttf .otf .woff .woff2 .eot .docx .xlsx .pptx .odt "
    ".ods .odp .gguf .safetensors .pt .pth .onnx .npy .npz .pkl .parquet .feather".split()
)
# Suffixes that were always mounted as text: such a file stays text even when it is not
# valid UTF-8 (decoded with replacement characters, as before content sniffing).
TEXT_SUFFIXES = frozenset(
    ".txt .md .markdown .rst .py .js .ts .c .h .cpp .rs .go .java .sh .toml .yaml .yml .json "
    ".csv .html .css .sql .ini .cfg .tex .org".split()
)
# Magic bytes of common binary formats (none made of letters alone, which a text file
# might start with); most binaries also hold a NUL early, which the sniff catches anyway.
_MAGIC = (
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"PK\x03\x04", "zip archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\x7fELF", "ELF executable"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"\x00\x00\x01\x00", "icon"),
    (b"\x1a\x45\xdf\xa3", "Matroska media"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
)


@dataclass(frozen=True)
class Skip:
    """A host file (or folder, its path ending in `/`) the mount left, relative to the
    mounted folder: `reason` is one of binary, not utf-8, too large, excluded, unreadable,
    bad name; `detail` says more (which format, which glob, how large)."""

    path: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class NotText(Exception):
    """A candidate file that turned out not to be text (raised by `read_text`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _matches(rel: str, name: str, globs: Sequence[str]) -> str | None:
    """The first glob matching the relative path or the bare name (`*` crosses `/`, and a
    leading `**/` also matches at the top)."""
    for g in globs:
        pat = g.rstrip("/")
        alt = pat[3:] if pat.startswith("**/") else pat
        if any(fnmatch.fnmatchcase(s, p) for s in (rel, name) for p in (pat, alt)):
            return g
    return None


def scan(
    host: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[list[tuple[Path, str]], list[Skip]]:
    """(host file, relative path) of every file a mount should read, in path order, and
    what it leaves without reading. `include`: when given, only files matching one of these
    globs; `exclude`: files and folders to leave; `max_bytes` (0: no cap) per file.
    Symlinked folders are not followed (a loop, or a way out of the mounted folder)."""
    keep: list[tuple[Path, str]] = []
    skipped: list[Skip] = []

    def unreadable(err: OSError) -> None:
        where = Path(err.filename or host)
        rel = where.relative_to(host).as_posix() if where != host else "."
        skipped.append(Skip(rel + "/", "unreadable", err.strerror or type(err).__name__))

    for dirpath, dirnames, filenames in os.walk(host, onerror=unreadable):
        here = Path(dirpath)
        base = here.relative_to(host).as_posix()
        prefix = "" if base == "." else base + "/"
        kept_dirs = []
        for d in sorted(dirnames):
            rel = prefix + d
            why = ""
            if d in DEFAULT_EXCLUDED_DIRS:
                why = "by default"
            elif d in SECRET_DIRS:
                why = "may hold secrets"
            elif (here / d / "pyvenv.cfg").is_file():
                why = "a virtualenv"
            elif (glob := _matches(rel, d, exclude)) is not None:
                why = f"--exclude {glob}"
            if why:
                skipped.append(Skip(rel + "/", "excluded", why))
            else:
                kept_dirs.append(d)
        dirnames[:] = kept_dirs  # os.walk descends only into what is left here
        for f in sorted(filenames):
            rel = prefix + f
            path = here / f
            if (glob := _matches(rel, f, exclude)) is not None:
                skipped.append(Skip(rel, "excluded", f"--exclude {glob}"))
                continue
            if _matches(f, f, SECRET_FILES) is not None:
                skipped.append(Skip(rel, "excluded", "may hold secrets"))
                continue
            if include and _matches(rel, f, include) is None:
                skipped.append(Skip(rel, "excluded", "not matched by --include"))
                continue
            if path.suffix.lower() in BINARY_SUFFIXES:
                skipped.append(Skip(rel, "binary", f"{path.suffix.lower()} file"))
                continue
            try:
                info = path.stat()
            except OSError as exc:  # a dangling symlink, a file gone since the listing
                skipped.append(Skip(rel, "unreadable", exc.strerror or type(exc).__name__))
                continue
            if not stat.S_ISREG(info.st_mode):
                continue  # a socket, a fifo: nothing to read
            if max_bytes and info.st_size > max_bytes:
                detail = (
                    f"{human_bytes(info.st_size)} > mount_max_file_bytes {human_bytes(max_bytes)}"
                )
                skipped.append(Skip(rel, "too large", detail))
                continue
            keep.append((path, rel))
    keep.sort(key=lambda item: item[1])
    return keep, skipped


def sniff(head: bytes, suffix: str, *, whole: bool) -> str:
    """How to read a file whose first bytes are `head`: "pdf", or a text codec name.
    Raises NotText for a binary file. `whole`: `head` is the whole file (else a cut
    multi-byte character at its end is not an error)."""
    if head.startswith(b"%PDF-") or suffix == ".pdf":
        return "pdf"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # its ASCII is half NUL bytes: the byte-order mark decides first
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise NotText("binary", what)
    if b"\x00" in head:
        raise NotText("binary", "NUL bytes")
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as exc:
        if suffix in TEXT_SUFFIXES:
            return "utf-8"  # named as text: kept, bad bytes replaced (as always)
        raise NotText("not utf-8", f"invalid byte at offset {exc.start}") from None
    return "utf-8"


def read_text(path: Path) -> str:
    """The text of a host file, or NotText (binary, not UTF-8, an unreadable PDF)."""
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
            codec = sniff(head, suffix, whole=len(head) < SNIFF_BYTES)
            data = head if codec == "pdf" else head + fh.read()
    except OSError as exc:
        raise NotText("unreadable", exc.strerror or type(exc).__name__) from None
    if codec != "pdf":
        return data.decode(codec, errors="replace")
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(str(path))
        return "\n\n".join((page.extract_text() or "") for page in reader.pages)
    except (PyPdfError, ValueError, KeyError, OSError) as exc:  # a broken or encrypted PDF
        raise NotText("unreadable", f"PDF: {exc}") from None


def skip_counts(skipped: Sequence[Skip]) -> dict[str, int]:
    """Skipped files by reason, most first (ties by name)."""
    counts = Counter(s.reason for s in skipped)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def mount_summary(stats: dict[str, Any]) -> str:
    """One line for a mount's result: `3 files (3 added, 0 updated, 0 unchanged, 0 removed);
    3 indexed; skipped 5: binary 3, too large 1, excluded 1` (the CLI and the shell)."""
    counts = ", ".join(
        f"{stats[k]} {k}" for k in ("added", "updated", "unchanged", "removed") if k in stats
    )
    line = f"{stats.get('files', 0)} files ({counts})"
    if "indexed" in stats:
        line += f"; {stats['indexed']} indexed"
    if stats.get("skipped"):
        by = stats.get("skipped_by") or {}
        line += f"; skipped {stats['skipped']}" + (
            ": " + ", ".join(f"{k} {v}" for k, v in by.items()) if by else ""
        )
    return line


def skipped_lines(stats: dict[str, Any], limit: int | None = None) -> list[str]:
    """`  path  reason (detail)` for each skipped file a mount's result names (--verbose),
    the first `limit` of them if given, then how many more were skipped."""
    rows = list(stats.get("skipped_files") or [])[:limit]
    out = []
    for r in rows:
        detail = f" ({r['detail']})" if r.get("detail") else ""
        out.append(f"  {r['path']}  {r['reason']}{detail}")
    more = int(stats.get("skipped", 0)) - len(rows)
    if more > 0:
        out.append(f"  ... and {more} more")
    return out
