"""Apps over REST: list, search the index, install (the grants are explicit in the request:
there is nobody to ask), run and remove. The same store and checks as `llmos app`."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from llmos.apps.store import AppError, AppStore, InstalledApp, decide
from llmos.errors import LlmosError
from llmos.server.errors import ApiError
from llmos.server.state import Api


class AppInstallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        description="an app folder or archive on the daemon's machine, a git+ URL, or a NAME "
        "from the index"
    )
    grant: list[str] = Field(
        default_factory=list,
        description="the capabilities granted, each one the app asks for; the rest are denied",
    )


class AppRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entry: str | None = Field(None, description="an entry of the app (default: its first)")
    args: list[Any] = Field(default_factory=list, description="arguments for main(ctx, *args)")


def view(app: InstalledApp) -> dict[str, Any]:
    m = app.manifest
    return {
        **app.as_dict(),
        "requested": m.capabilities,
        "entries": {k: e.description for k, e in m.entries.items()},
    }


def router(api: Api) -> APIRouter:
    r = APIRouter()
    k = api.kernel

    def store() -> AppStore:
        return AppStore(api.settings.data_dir)

    def get(name: str) -> InstalledApp:
        try:
            return store().get(name)
        except AppError as exc:
            raise ApiError(404, str(exc), param="name") from None

    @r.get("/v1/apps", tags=["apps"])
    async def list_apps() -> dict[str, Any]:
        return {"apps": [view(a) for a in store().list()]}

    @r.get("/v1/apps/search", tags=["apps"])
    async def search(q: str = "") -> dict[str, Any]:
        from llmos.apps.index import search as find

        try:
            found = await asyncio.to_thread(find, q.split(), api.settings.app_index)
        except LlmosError as exc:
            raise ApiError(400, str(exc), param="q") from None
        return {"entries": [dataclasses.asdict(f) for f in found]}

    @r.post("/v1/apps", tags=["apps"], status_code=201)
    async def install(body: AppInstallRequest) -> dict[str, Any]:
        from llmos.apps.index import materialize

        def work() -> InstalledApp:
            s = store()
            with materialize(body.source, api.settings.app_index) as local:
                staged = s.stage(local.path, record=local.record)
            try:
                requested = staged.manifest.capabilities
                decision = decide(
                    requested, grant=body.grant, deny=set(requested) - set(body.grant)
                )
                return s.install(staged, decision)
            finally:
                staged.discard()

        try:
            return view(await asyncio.to_thread(work))
        except (LlmosError, OSError, ValueError) as exc:  # (a path with a NUL byte: ValueError)
            raise ApiError(400, " ".join(str(exc).split()), param="source") from None

    @r.post("/v1/apps/{name}/run", tags=["apps"], status_code=201)
    async def run(name: str, body: AppRunRequest) -> dict[str, Any]:
        from llmos.apps.launch import load_entries, spawn_app
        from llmos.kernel.loader import ProgramError

        app = get(name)
        try:
            main, programs = await asyncio.to_thread(load_entries, app, body.entry)
        except (ProgramError, LlmosError) as exc:
            raise ApiError(400, str(exc), param="entry") from None
        proc = await spawn_app(k, app, main, programs, body.args)
        return proc.info()

    @r.delete("/v1/apps/{name}", tags=["apps"])
    async def remove(name: str, purge: bool = False) -> dict[str, Any]:
        get(name)
        await asyncio.to_thread(store().remove, name, purge=purge)
        return {"removed": name}

    return r
