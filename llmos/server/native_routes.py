"""The native routes: processes, syscalls, model load/unload, and the memory filesystem.

Memory and QA calls go through their syscalls, each in a short process of its own, so
permissions, approval and audit apply to the API as to any agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter
from sse_starlette import ServerSentEvent

from llmos.core.process import Signal
from llmos.kernel.loader import ProgramError, ProgramNotFound, load_program
from llmos.kernel.oneshot import jsonable as _jsonable
from llmos.server.errors import ApiError
from llmos.server.schemas import (
    FsWriteRequest,
    NiceRequest,
    QaRequest,
    SearchRequest,
    SignalRequest,
    SpawnRequest,
    SyscallRequest,
)
from llmos.server.state import Api
from llmos.server.streaming import STREAMS, event_stream, sse


def _load_program_file(path: str) -> Any:
    try:
        return load_program(path)
    except ProgramNotFound:
        raise ApiError(404, f"no such program file: {path}", param="path") from None
    except ProgramError as exc:
        raise ApiError(400, str(exc), param="path") from None


def router(api: Api) -> APIRouter:
    r = APIRouter()
    k = api.kernel

    @r.get("/v1/processes", tags=["processes"])
    async def list_processes() -> dict[str, Any]:
        return {"object": "list", "data": k.ps()}

    @r.post("/v1/processes", tags=["processes"], status_code=201)
    async def spawn(body: SpawnRequest) -> dict[str, Any]:
        if (body.program is None) == (body.path is None):
            raise ApiError(400, "give exactly one of program or path", param="program")
        if body.program is not None:
            table = k.programs
            program = table.get(body.program)
            if program is None:
                raise ApiError(
                    404, f"no built-in program {body.program!r}; known: {', '.join(sorted(table))}",
                    param="program",
                )  # fmt: skip
            name = body.name or body.program
        else:
            assert body.path is not None
            program = _load_program_file(body.path)
            name = body.name or Path(body.path).stem
        model = api.model_name(body.model) if body.model else None
        proc = await k.spawn(
            program, *body.args, name=name, model=model, nice=body.nice, caps=body.caps
        )
        return proc.info()

    @r.get("/v1/top", tags=["processes"])
    async def top() -> dict[str, Any]:
        """Kernel-wide figures, as `llmos top`: processes alive, and per loaded model its
        slots, KV cells, steps and tokens (speculation's drafted and accepted, fast-forward's
        forced and forced_kept included)."""
        from llmos.ops.capacity import predicted

        top = k.top()
        for m in top["models"]:
            if "kv_cells" in m:  # a local engine: its load against the queueing model
                m.update(predicted(m))
        return top

    @r.get("/v1/processes/{pid}", tags=["processes"])
    async def get_process(pid: int) -> dict[str, Any]:
        return k.get(pid).info()

    @r.post("/v1/processes/{pid}/signal", tags=["processes"])
    async def signal(pid: int, body: SignalRequest) -> dict[str, Any]:
        proc = k.get(pid)
        try:
            sig = Signal.parse(body.signal)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="signal") from None
        k.signal(
            pid, sig, reason=f"{sig.name} via API" if sig in (Signal.TERM, Signal.KILL) else None
        )
        if sig in (Signal.TERM, Signal.KILL):
            await proc.wait()
        return proc.info()

    @r.post("/v1/processes/{pid}/nice", tags=["processes"])
    async def nice(pid: int, body: NiceRequest) -> dict[str, Any]:
        k.renice(pid, body.nice)
        return k.get(pid).info()

    @r.get("/v1/processes/{pid}/wait", tags=["processes"])
    async def wait(pid: int, timeout_s: float = 60.0) -> dict[str, Any]:
        proc = k.get(pid)
        # the process is not ours to cancel: a timeout only stops waiting for it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(timeout_s, 3600.0))):
                await proc.wait()
        return proc.info()

    @r.get("/v1/processes/{pid}/logs", tags=["processes"], response_model=None, responses=STREAMS)
    async def logs(
        pid: int, follow: bool = False, stream: Literal["stdout", "stderr"] = "stdout"
    ) -> Any:
        proc = k.get(pid)
        out = proc.stderr if stream == "stderr" else proc.stdout
        if not follow:
            return {"pid": pid, "text": out.getvalue(), "state": proc.state.value}

        async def events() -> AsyncIterator[ServerSentEvent]:
            async for text in out.follow():
                yield sse({"text": text})
            await proc.wait()
            yield sse(
                {"pid": pid, "exit_code": proc.exit_code, "exit_reason": proc.exit_reason}, "exit"
            )

        return event_stream(events())

    @r.get("/v1/syscalls", tags=["syscalls"])
    async def list_syscalls() -> dict[str, Any]:
        specs = sorted(k.syscalls.specs.values(), key=lambda s: s.name)
        return {"object": "list", "data": [_spec_info(s) for s in specs]}

    @r.post("/v1/syscalls/{name}", tags=["syscalls"])
    async def call_syscall(name: str, body: SyscallRequest) -> dict[str, Any]:
        if name not in k.syscalls.specs:
            raise ApiError(404, f"no syscall named {name!r}", param="name", code="unknown_syscall")
        return {"name": name, "result": _jsonable(await api.syscall(name, body.args))}

    @r.post("/v1/models/{model_id}/load", tags=["native"])
    async def load_model(model_id: str) -> dict[str, Any]:
        name = api.model_name(model_id)
        await k.engine(name)
        return {"id": name, "loaded": sorted(k.models.loaded)}

    @r.post("/v1/models/{model_id}/unload", tags=["native"])
    async def unload_model(model_id: str) -> dict[str, Any]:
        name = api.model_name(model_id)
        await asyncio.to_thread(k.models.unload, name)
        return {"id": name, "loaded": sorted(k.models.loaded)}

    # memory filesystem (through the syscalls, so permissions and audit apply)
    @r.get("/v1/fs/ls", tags=["memory"])
    async def fs_ls(path: str = "/") -> dict[str, Any]:
        return {"path": path, "entries": _jsonable(await api.syscall("fs.ls", {"path": path}))}

    @r.get("/v1/fs/read", tags=["memory"])
    async def fs_read(path: str) -> dict[str, Any]:
        return {"path": path, "content": _jsonable(await api.syscall("fs.read", {"path": path}))}

    @r.put("/v1/fs/write", tags=["memory"])
    async def fs_write(body: FsWriteRequest) -> dict[str, Any]:
        r = await api.syscall("fs.write", {"path": body.path, "content": body.content})
        return {"path": body.path, "result": _jsonable(r)}

    @r.delete("/v1/fs/rm", tags=["memory"])
    async def fs_rm(path: str) -> dict[str, Any]:
        return {"path": path, "result": _jsonable(await api.syscall("fs.rm", {"path": path}))}

    @r.post("/v1/fs/search", tags=["memory"])
    async def fs_search(body: SearchRequest) -> dict[str, Any]:
        args = {"query": body.query, "k": body.k, "path": body.path}
        return {"query": body.query, "results": _jsonable(await api.syscall("fs.search", args))}

    @r.post("/v1/qa", tags=["memory"])
    async def qa(body: QaRequest) -> dict[str, Any]:
        args = {"question": body.question, "k": body.k}
        return {"question": body.question, "answer": _jsonable(await api.syscall("qa.ask", args))}

    return r


def _spec_info(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name, "signature": spec.signature(), "capability": spec.capability,
        "risk": str(spec.risk), "doc": spec.doc, "args": spec.schema(),
        "result": spec.result_schema(),
    }  # fmt: skip
