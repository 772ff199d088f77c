"""`llmos models pull`: a GGUF file from a Hugging Face model repo into the model library.

The steps, each failing with one line (`HubError`, `NotEnoughSpace`) before anything is
registered:

1. list the repo's files with their hashes (`HfApi.model_info(files_metadata=True)`), and pin
   the rest of the pull to the commit that listing came from, so the list, the hash and the
   bytes all belong to one version even if the repo changes meanwhile;
2. choose the `.gguf` (`--file`; else the one matching `--quant`; else one asked for at a
   terminal);
3. resolve the file (`get_hf_file_metadata`: its size, and where it lives, often a CDN) and
   check the free disk against what is still to be fetched;
4. download it with `http_get` into `<file>.<hash>.incomplete` beside its destination,
   starting where an earlier run stopped (a Range request); within one run huggingface_hub
   itself resumes a dropped connection the same way, up to five times;
5. hash the file against the hub's value (the LFS sha256; the git blob id for a small file
   kept in git), read its GGUF header, move it into place and register it with its source.

Why not `hf_hub_download`: since huggingface_hub 1.x it writes to a temporary file unique to
the process and deletes it on any failure, so a pull cut short (Ctrl-C, a network down for
longer than its retries) would start again from zero; and it keeps its own cache layout
(blobs behind symlinks) where the library wants one plain file per model. The functions used
here are the ones it is built from, so the endpoint, tokens (`HF_TOKEN`), redirects to a CDN,
retries and error types are all huggingface_hub's.

The network: the CLI sets `HF_HUB_OFFLINE=1` for every other command, so nothing is fetched
at run time by accident; `pull` is the one command that reaches a hub, so the CLI leaves the
variable alone for it, and a user who sets it gets an "offline" error here. huggingface_hub
copies `HF_HUB_OFFLINE` and `HF_ENDPOINT` into its `constants` once, at import; a process that
imported it earlier (a daemon, a test session) may hold stale copies, so both are read from
the environment at call time and passed (or set) explicitly.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llmos.core.units import human_bytes
from llmos.errors import HubError, LlmosError, NotEnoughSpace

if TYPE_CHECKING:
    from llmos.kernel.models import ModelEntry, ModelLibrary

Progress = Callable[[int, int], None]  # (bytes on disk, bytes in all; 0 if unknown)
Ask = Callable[[Sequence[str]], str]  # pick one file name out of several

_TRUE = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub reads its boolean variables
_SPLIT_RE = re.compile(r"-\d{5}-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class HubFile:
    """A file of a repo as the hub lists it."""

    name: str  # its path inside the repo
    size: int | None
    sha256: str | None  # an LFS file's content hash
    blob_id: str | None  # a file kept in git: sha1 of b"blob <size>\0" + content


@dataclass(frozen=True)
class Pulled:
    entry: ModelEntry
    downloaded: int  # bytes fetched by this run (0: the file was already here)
    resumed_from: int  # bytes an earlier, interrupted run had left


def offline() -> bool:
    """Whether the user asked for no network (huggingface_hub's own switches)."""
    return any(
        os.environ.get(var, "").strip().upper() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_endpoint() -> str | None:
    """`HF_ENDPOINT` as it is now (None: huggingface_hub's default hub)."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


@contextmanager
def _online() -> Iterator[None]:
    """huggingface_hub's offline switch off for the pull (its copy may predate the
    environment's; see the module docstring), as it was afterwards."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_OFFLINE = False
    # The pull reaches the repo's hub for the file and nothing else: no usage reports.
    constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_TELEMETRY = saved


@contextmanager
def _hub_errors(repo: str, where: str) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as one-line `HubError`s."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import OfflineModeIsEnabled

    login = "set HF_TOKEN to an access token of an account that has accepted its terms"
    try:
        yield
    except GatedRepoError:  # (a subclass of RepositoryNotFoundError: first)
        raise HubError(
            f"{repo} is a gated repo: request access on its page, then {login}"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"no model repo {repo} on {where} (if it is private, set HF_TOKEN to an access token)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo} has no such revision on {where}") from None
    except HfHubHTTPError as exc:
        code = exc.response.status_code
        if code in (401, 403):
            raise HubError(f"{where} refused access to {repo} ({code}): {login}") from None
        raise HubError(f"{where} answered {code} for {repo}: {_first_line(exc)}") from None
    except HFValidationError as exc:
        raise HubError(f"{repo!r} is not a repo id (owner/name): {_first_line(exc)}") from None
    except OfflineModeIsEnabled:
        raise HubError(f"offline: huggingface_hub refused to reach {where}") from None
    except httpx2.ConnectError as exc:
        raise HubError(f"cannot reach {where} (offline? {_first_line(exc)})") from None
    except httpx2.TimeoutException:
        raise HubError(f"{where} did not answer in time (offline or too slow?)") from None
    except httpx2.HTTPError as exc:
        raise HubError(f"talking to {where} failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)


def list_files(
    repo: str, revision: str | None = None, *, token: str | None = None
) -> tuple[str, list[HubFile]]:
    """The commit `revision` (default: the main branch) is at, and that commit's files."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub_endpoint(), token=token).model_info(
        repo, revision=revision, files_metadata=True
    )
    files = [
        HubFile(
            name=s.rfilename,
            size=s.lfs.size if s.lfs else s.size,
            sha256=s.lfs.sha256 if s.lfs else None,
            blob_id=s.blob_id,
        )
        for s in info.siblings or []
    ]
    return info.sha or revision or "main", files


def choose(
    repo: str,
    names: Sequence[str],
    *,
    file: str | None = None,
    quant: str | None = None,
    ask: Ask | None = None,
) -> str:
    """The GGUF to pull: `file` if the repo has it; else the one whose name holds `quant`
    (case-insensitive; a whole-word match wins over a longer name, so Q4_K picks x.Q4_K.gguf
    over x.Q4_K_M.gguf); else the only one; else `ask` (a terminal's numbered list)."""
    ggufs = [n for n in names if n.lower().endswith(".gguf")]
    if file is not None:
        if file not in ggufs:
            what = "is not a .gguf file" if file in names else "has no such file"
            raise HubError(f"{repo}: {file!r} {what}; its GGUF files: {_listed(ggufs)}")
        return file
    if not ggufs:
        raise HubError(f"{repo} has no GGUF file (pull takes llama.cpp's .gguf files)")
    candidates = ggufs
    if quant:
        q = quant.lower()
        matched = [n for n in ggufs if q in PurePosixPath(n).name.lower()]
        if not matched:
            raise HubError(
                f"{repo}: no GGUF file matches {quant}; its GGUF files: {_listed(ggufs)}"
            )
        word = re.compile(rf"(?<![a-z0-9_]){re.escape(q)}(?![a-z0-9_])")
        whole = [n for n in matched if word.search(PurePosixPath(n).name.lower())]
        candidates = whole or matched
    if len(candidates) == 1:
        return candidates[0]
    if ask is None:
        raise HubError(
            f"{repo} has {len(candidates)} GGUF files{' matching ' + quant if quant else ''}; "
            f"choose one with --file or --quant: {_listed(candidates)}"
        )
    picked = ask(candidates)
    if picked not in candidates:
        raise HubError(f"{picked!r} is not one of {repo}'s GGUF files")
    return picked


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def destination(data_dir: Path, repo: str, name: str) -> Path:
    """Where a repo's file lives: `<data_dir>/models/<owner>/<repo>/<file>` (repos often
    share file names such as `model.gguf`)."""
    parts = [*repo.split("/"), *PurePosixPath(name).parts]
    if any(p in ("", ".", "..") or p.startswith("/") for p in parts):
        raise HubError(f"{repo}: refusing the file name {name!r} (it leaves the models folder)")
    return data_dir.joinpath("models", *parts)


def pull(
    library: ModelLibrary,
    repo: str,
    *,
    file: str | None = None,
    quant: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    ask: Ask | None = None,
    progress: Progress | None = None,
    bar: bool = False,
) -> Pulled:
    """Download a GGUF from a hub repo, check it, and register it in `library`.

    `token`: an access token (None: huggingface_hub's own, from `HF_TOKEN` or a login).
    `ask`: picks one of several files (None: several is an error naming them). `progress`:
    fed (bytes on disk, bytes in all) as the download goes. `bar`: huggingface_hub's tqdm
    bar instead (for a terminal)."""
    where = hub_endpoint() or "the Hugging Face hub"
    if offline():
        raise HubError(
            "offline: HF_HUB_OFFLINE is set; pull is the one command that needs the network, "
            "so unset HF_HUB_OFFLINE for it"
        )
    with _online(), _hub_errors(repo, where):
        commit, files = list_files(repo, revision, token=token)
        chosen = choose(repo, [f.name for f in files], file=file, quant=quant, ask=ask)
        meta = next(f for f in files if f.name == chosen)
        parts = _SPLIT_RE.search(chosen)
        if parts and int(parts.group(1)) > 1:
            raise HubError(
                f"{repo}: {chosen} is one part of a model split in {int(parts.group(1))} files; "
                "pulling split models is not supported yet"
            )
        dest = destination(library.data_dir, repo, chosen)
        model_name = library.name_for(dest, name)  # a bad --name fails before any byte moves
        if meta.sha256 is None and meta.blob_id is None:
            raise HubError(f"{repo}: the hub gave no hash for {chosen}, so it can't be checked")
        downloaded = resumed = 0
        if not (dest.is_file() and _verified(dest, meta)):
            downloaded, resumed = _fetch(repo, commit, meta, dest, token, progress, bar, where)
    lineage = {
        "source": "hub",
        "repo": repo,
        "file": chosen,
        "revision": commit,
        "sha256": meta.sha256 or _sha256(dest),
    }
    try:
        entry = library.add(dest, model_name, lineage=lineage)
    except LlmosError as exc:
        dest.unlink(missing_ok=True)  # a file the library refuses is of no use on the disk
        raise HubError(f"{repo}: {chosen} is not a usable GGUF ({exc}); removed it") from None
    return Pulled(entry, downloaded, resumed)


def _fetch(
    repo: str,
    commit: str,
    meta: HubFile,
    dest: Path,
    token: str | None,
    progress: Progress | None,
    bar: bool,
    where: str,
) -> tuple[int, int]:
    """Download `meta` at `commit` to `dest`, resuming a partial file; check its hash.
    Returns (bytes fetched now, bytes an earlier run had left)."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    endpoint = hub_endpoint()
    url = hf_hub_url(repo, meta.name, revision=commit, endpoint=endpoint)
    head = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    size = meta.size if meta.size is not None else head.size
    key = meta.sha256 or meta.blob_id or ""
    partial = dest.with_name(f"{dest.name}.{key[:16]}.incomplete")
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.is_file() else 0
    if size is not None and have > size:  # not a prefix of this file: start again
        partial.unlink()
        have = 0
    if size is not None:
        _check_space(partial.parent, size - have, meta.name)

    headers = build_hf_headers(token=token)
    if _origin(head.location) != _origin(url):
        headers.pop("authorization", None)  # a signed CDN address: the token stays on the hub
    # a part that a rerun can resume from (the connection lost, Ctrl-C) is kept; any other
    # failure removes it, so nothing half-made is left in the models folder
    keep = False
    try:
        with partial.open("ab") as fh:
            http_get(
                head.location,
                fh,
                resume_size=have,
                headers=headers,
                expected_size=size,
                displayed_filename=PurePosixPath(meta.name).name,
                tqdm_class=None if bar else _reporting_tqdm(progress or (lambda n, total: None)),
            )
        keep = True
    except KeyboardInterrupt:
        keep = True
        raise
    except httpx2.TransportError as exc:  # (after huggingface_hub's own retries)
        keep = True
        got = partial.stat().st_size
        raise HubError(
            f"the download of {meta.name} from {where} stopped at {human_bytes(got)}"
            f"{' of ' + human_bytes(size) if size else ''} ({_first_line(exc)}); "
            "run the same command again to resume"
        ) from None
    except OSError as exc:
        if isinstance(exc, httpx2.HTTPError):
            raise  # (huggingface_hub's HTTP errors are OSErrors too: _hub_errors words them)
        if exc.errno == errno.ENOSPC:
            raise NotEnoughSpace(f"the disk filled up while downloading {meta.name}") from None
        # (also http_get's own check that the size received is the size announced)
        raise HubError(f"the download of {meta.name} failed: {_first_line(exc)}") from None
    finally:
        if not keep:
            partial.unlink(missing_ok=True)
    if not _verified(partial, meta):
        partial.unlink()
        raise HubError(
            f"{meta.name} from {where} does not match the hub's hash (corrupted in transit or "
            "changed on the hub); the download was removed, try again"
        )
    os.replace(partial, dest)
    return dest.stat().st_size - have, have


def _reporting_tqdm(report: Progress) -> Any:
    """A tqdm class that draws nothing and reports each update to `report`: `http_get`
    takes a class and makes one bar per download (it keeps it across its own retries)."""
    from tqdm import tqdm

    class Reporting(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)
            self.size = int(kwargs.get("total") or 0)
            report(self.done, self.size)

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            report(self.done, self.size)
            return None

    return Reporting


def _check_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise NotEnoughSpace(
            f"not enough disk space for {what}: it needs {human_bytes(need)} more and "
            f"{folder} has {human_bytes(free)} free"
        )


def _verified(path: Path, meta: HubFile) -> bool:
    """`path` holds the bytes the hub lists for `meta` (by size, then by hash)."""
    size = path.stat().st_size
    if meta.size is not None and size != meta.size:
        return False
    if meta.sha256 is not None:
        return _sha256(path) == meta.sha256.lower()
    if meta.blob_id is not None:  # git's own id for a file kept in git rather than LFS
        blob = hashlib.sha1(f"blob {size}\0".encode())
        return _digest(path, lambda: blob) == meta.blob_id.lower()
    return False


def _sha256(path: Path) -> str:
    return _digest(path, "sha256")


def _digest(path: Path, digest: Any) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, digest).hexdigest()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()
