"""Path rules of the memory filesystem: one normal form, and clear errors for the rest."""

from __future__ import annotations

import re

from llmos.errors import BadArguments

MAX_NAME = 255
MAX_PATH = 4096
TOP_LEVEL = ("home", "etc", "mnt", "tmp", "proc")


class BadPath(BadArguments):
    kind = "bad_path"


# C0 controls, DEL and C1 controls: a newline in a name makes `ls` show two files, an
# escape sequence can repaint the terminal of whoever lists the directory.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _control_name(ch: str) -> str:
    code = ord(ch)
    if code == 0:
        return "a NUL byte"
    return f"a control character (U+{code:04X})"


def normalize(path: str, cwd: str = "/") -> str:
    """The canonical absolute form of `path`.

    `.` and empty parts vanish; `..` steps up but never above `/` (an escape is an error,
    not silently clamped, so a confused caller learns of it). Control characters (NUL and
    the rest of C0, DEL, C1), over-long names and unknown top-level directories are rejected.
    """
    if not isinstance(path, str):
        raise BadPath(f"path must be a string, got {type(path).__name__}")
    bad = _CONTROL.search(path)
    if bad is not None:
        raise BadPath(f"path contains {_control_name(bad.group())}")
    if not path:
        raise BadPath("empty path")
    if len(path) > MAX_PATH:
        raise BadPath(f"path longer than {MAX_PATH} characters")
    raw = path if path.startswith("/") else cwd.rstrip("/") + "/" + path
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BadPath(f"path {path!r} escapes the root with '..'")
            parts.pop()
            continue
        if len(part.encode()) > MAX_NAME:
            raise BadPath(f"name {part[:32]!r}... is longer than {MAX_NAME} bytes")
        parts.append(part)
    if parts and parts[0] not in TOP_LEVEL:
        raise BadPath(f"path {path!r} is outside the namespace (/{', /'.join(TOP_LEVEL)})")
    return "/" + "/".join(parts)


def parent(path: str) -> str:
    if path == "/":
        return "/"
    head = path.rsplit("/", 1)[0]
    return head or "/"


def ancestors(path: str) -> list[str]:
    """`/a/b/c` → [`/`, `/a`, `/a/b`] (outermost first)."""
    out: list[str] = []
    p = path
    while p != "/":
        p = parent(p)
        out.append(p)
    return out[::-1]


def is_under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def scope_key(path: str) -> str:
    """The first two components (`/mnt/docs`), the index's coarse filter for search."""
    parts = path.strip("/").split("/")
    return "/" + "/".join(parts[:2]) if parts != [""] else "/"
