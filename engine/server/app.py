"""``create_app(engine)``: the HTTP adapter as a FastAPI application.

    app = create_app(Engine.from_file("orchestrion.yaml"))   # serve with uvicorn, or:
    host = FastAPI(lifespan=adapter.router.lifespan_context) ; host.mount("/llm", adapter)

The app's lifespan hosts detached runs (and drains them on shutdown); an app
mounted inside another must have its lifespan run by the host, as above,
else a run answers 503 saying so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

import anyio
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from engine.core import Engine
from engine.server import api, runs
from engine.server.auth import Auth
from engine.server.body import BodyLimit
from engine.server.context import ServerContext
from engine.server.errors import install_error_handlers
from engine.server.hub import RunHub
from engine.server.settings import ServerSettings


def create_app(engine: Engine, settings: ServerSettings | None = None, *, close_engine: bool = False) -> FastAPI:
    """The adapter for ``engine``; ``settings`` for tokens, limits and CORS (default: none, 1 MiB bodies).
    ``close_engine`` closes it (connections, the store's batched writes) when the app shuts down."""
    from engine.server import openai_compat

    settings = settings or ServerSettings()
    scrub = engine.scrubber
    hub = RunHub(engine, scrub, settings.keep_finished)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            await group.start(hub.serve)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await hub.drain(settings.drain_seconds)
                    if close_engine:
                        await engine.aclose()
                group.cancel_scope.cancel()

    app = FastAPI(title="Orchestrion", version=_version(), lifespan=lifespan,
                  description="Run LLM workflows over HTTP: templates, workflows, chat, runs and their events, "
                              "and an OpenAI-compatible face.")
    app.state.orchestrion = ServerContext(engine, settings, hub, Auth(settings.tokens), scrub)
    install_error_handlers(app, scrub)
    app.include_router(api.open_router)
    guarded = [Depends(api.caller_of)]
    app.include_router(api.router, dependencies=guarded)
    app.include_router(runs.router, dependencies=guarded)
    app.include_router(runs.ws_router)  # a WebSocket checks its token itself (dependencies answer HTTP)
    app.include_router(openai_compat.router, dependencies=guarded)
    app.mount("/", StaticFiles(directory=str(files("engine.server") / "static"), html=True), name="viewer")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"])
    return app


def _version() -> str:
    from engine import __version__

    return __version__
