"""A stand-in for the Hugging Face hub on loopback, for `llmos models pull` tests.

It serves the routes the installed huggingface_hub calls to list and fetch a model file,
with the headers it reads (see huggingface_hub/file_download.py, `get_hf_file_metadata` and
`http_get`, and hf_api.py `model_info`):

- `GET /api/models/{owner}/{name}[/revision/{rev}]`: the repo's commit (`sha`) and its
  `siblings` with `size`, `blobId` and, for LFS files, `lfs: {sha256, size, pointerSize}`;
- `HEAD|GET /{owner}/{name}/resolve/{rev}/{file}`: `X-Repo-Commit`, `ETag`, and for LFS files
  `X-Linked-Etag`/`X-Linked-Size`; GET honours `Range: bytes=N-` with a 206;
- errors as the hub words them, in `X-Error-Code`: `RepoNotFound`, `RevisionNotFound`,
  `EntryNotFound`, `GatedRepo` (a 401 without the repo's token).

A repo can hang up mid-file (`cuts`: the n-th GET of a file sends `cuts[n]` bytes of its
answer and closes the connection), and can list a hash its bytes don't have
(`listed_sha256`). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_token"


def tiny_gguf(file_type: int = 15, n_floats: int = 64 * 1024, arch: str = "llama") -> bytes:
    """A small valid GGUF v3: a few metadata keys and one F32 tensor of `n_floats` values
    (256 KB by default)."""

    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [
        string("general.architecture") + struct.pack("<I", 8) + string(arch),
        string("general.name") + struct.pack("<I", 8) + string("tiny"),
        string("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", file_type),
        string(f"{arch}.context_length") + struct.pack("<I", 4) + struct.pack("<I", 256),
    ]
    # tensor info: name, n_dims, dims, ggml type (0 = F32), offset in the data section
    tensor = string("token_embd.weight") + struct.pack("<IQIQ", 1, n_floats, 0, 0)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs)) + b"".join(kvs) + tensor
    head += b"\0" * (-len(head) % 32)  # the data section starts at the default alignment
    size = 4 * n_floats  # (any bytes are floats; a pattern is quicker than packing)
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    return head + data


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    lfs: bool = True  # list files as LFS objects (sha256), else as git blobs (sha1 id)
    gated: bool = False  # files answer 401 GatedRepo without `Authorization: Bearer TOKEN`
    cuts: list[int] = field(default_factory=list)  # GET n hangs up after cuts[n] bytes
    listed_sha256: dict[str, str] = field(default_factory=dict)  # a hash that lies

    def sha256(self, name: str) -> str:
        return self.listed_sha256.get(name) or hashlib.sha256(self.files[name]).hexdigest()

    def sibling(self, name: str) -> dict[str, Any]:
        content = self.files[name]
        out: dict[str, Any] = {"rfilename": name, "size": len(content)}
        if self.lfs:
            out["blobId"] = git_blob_id(b"pointer for " + name.encode())
            out["lfs"] = {"sha256": self.sha256(name), "size": len(content), "pointerSize": 134}
        else:
            out["blobId"] = git_blob_id(content)
        return out


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Hub:
    """`with Hub({"owner/name": Repo(...)}) as hub:` serves them at `hub.url`."""

    def __init__(self, repos: dict[str, Repo]) -> None:
        self.repos = repos
        self.seen: list[Seen] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # (quiet tests)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # (a short poll: shutdown() waits for the loop to notice, 0.5 s by default)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def ranges(self) -> list[str | None]:
        """The Range header of each GET of a file, in order."""
        return [
            s.headers.get("range") for s in self.seen if s.method == "GET" and "/resolve/" in s.path
        ]

    # -- serving ---------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.seen.append(Seen(h.command, path, {k.lower(): v for k, v in h.headers.items()}))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            self._info(h, "/".join(parts[2:4]), parts[5] if parts[4:5] == ["revision"] else None)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body=body)
        else:
            self._error(h, 404, "", "not a hub route")

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        payload = json.dumps({"error": message}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)

    def _info(self, h: BaseHTTPRequestHandler, repo_id: str, revision: str | None) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if revision not in (None, "main", COMMIT):
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        info = {
            "id": repo_id,
            "sha": COMMIT,
            "private": False,
            "gated": "manual" if repo.gated else False,  # (a gated repo's listing is public)
            "siblings": [repo.sibling(n) for n in repo.files],
        }
        payload = json.dumps(info).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _file(
        self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, name: str, *, body: bool
    ) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if repo.gated and h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(
                h, 401, "GatedRepo", f"Access to model {repo_id} is restricted. Please log in."
            )
        if rev not in ("main", COMMIT):
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if name not in repo.files:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist")
        content = repo.files[name]
        start, status = 0, 200
        rng = h.headers.get("Range")
        if body and rng and rng.startswith("bytes=") and rng.endswith("-"):
            start, status = int(rng[len("bytes=") : -1]), 206
        chunk = content[start:]
        h.send_response(status)
        h.send_header("X-Repo-Commit", COMMIT)
        if repo.lfs:
            h.send_header("ETag", f'"{git_blob_id(b"pointer for " + name.encode())}"')
            h.send_header("X-Linked-Etag", f'"{repo.sha256(name)}"')
            h.send_header("X-Linked-Size", str(len(content)))
        else:
            h.send_header("ETag", f'"{git_blob_id(content)}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        h.end_headers()
        if not body:
            return
        if repo.cuts:
            h.wfile.write(chunk[: repo.cuts.pop(0)])  # then hang up, mid-body
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(chunk)
