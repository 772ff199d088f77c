"""The quantize worker: `python -m llmos.ops.quantize_worker`, started by `ops/quantize.py`.

llama.cpp's quantizer holds the calling thread (and both cores) for seconds to minutes and
may abort the whole process on a bad file, so it runs here, in a process of its own, and
the kernel or shell that asked stays responsive and survives.

The job arrives as one JSON object on stdin; events go back as JSON lines on the original
stdout: `{"event": "progress", "done": n, "total": m}` per tensor, then `{"event": "done",
"warnings": [...]}` or `{"event": "error", "message": "..."}`. Anything else written to
fd 1 (a C library's printf) is sent to stderr, so it can never corrupt that stream.

This module imports only the llama backend, so the process starts fast; the parent starts
it first and checks the job while it boots.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from llmos.errors import LlmosError
from llmos.kernel.llama_backend import binding_only, quantize_file, quantize_types


def _send(out: TextIO, **event: Any) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


def main() -> int:
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    binding_only()  # the high-level Llama half is a tenth of a second of start-up, unused
    quantize_types()  # loads and initializes llama.cpp while the parent checks the job
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent found the job bad and closed our stdin: nothing to do
    job = json.loads(line)
    try:
        warnings = quantize_file(
            job["src"], job["dst"], int(job["ftype"]),
            allow_requantize=bool(job["allow_requantize"]),
            prune_layers=[int(i) for i in job["prune_layers"]], nthread=int(job["nthread"]),
            progress=lambda done, total: _send(events, event="progress", done=done, total=total),
        )  # fmt: skip
    except LlmosError as exc:
        _send(events, event="error", message=str(exc))
        return 1
    _send(events, event="done", warnings=warnings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
