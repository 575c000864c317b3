"""What every route works with (kept on ``app.state``), and the helpers routes share:
reading a JSON body, starting a run awaited or detached, answering with its result."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from engine.core import Engine, PreparedRun
from engine.secrets import Scrubber
from engine.server.auth import Auth
from engine.server.errors import ApiError
from engine.server.hub import DrainingError, LiveRun, RunHub
from engine.server.settings import ServerSettings

Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class ServerContext:
    engine: Engine
    settings: ServerSettings
    hub: RunHub
    auth: Auth
    scrub: Scrubber


def context_of(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.orchestrion
    return context


class JsonAnswer(JSONResponse):
    """JSON whatever a function returned: values JSON cannot hold are written as text."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")


async def read_json(request: Request) -> Any:
    """The body as JSON, whatever the Content-Type (``curl -d`` says form data); empty is ``{}``."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {error}") from None


async def read_body(request: Request, model: type[Body]) -> Body:
    value = await read_json(request)
    try:
        return model.model_validate(value)
    except ValidationError as error:
        problems = [{"message": item["msg"], "path": ".".join(str(part) for part in item["loc"]) or "<body>",
                     "type": item["type"]} for item in error.errors(include_url=False, include_input=False)]
        raise ApiError(422, "invalid_request", "the request is invalid: " + "; ".join(
            f"{problem['path']}: {problem['message']}" for problem in problems[:5]), problems=problems) from None


def check_capacity(context: ServerContext, caller: str) -> None:
    """429 before anything is recorded when the caller has its most runs in flight; 503 when draining."""
    if context.hub.draining:
        raise _draining()
    limit = context.settings.max_runs_per_token
    if context.hub.in_flight(caller) >= limit:
        raise ApiError(429, "too_many_runs", f"{limit} runs in flight for this caller already; "
                                             "wait for one to finish", headers={"Retry-After": "1"})


async def launch(request: Request, prepared: PreparedRun, caller: str, *, wait: bool, raise_on_failure: bool,
                 resumed: bool = False) -> Response:
    """Start a prepared run; answer 202 with its id at once, or 200 with its result when it ends."""
    live = await start_run(context_of(request), prepared, caller, resumed=resumed,
                           key=request.headers.get("idempotency-key"))
    return await answer_for(request, live, wait=wait, raise_on_failure=raise_on_failure)


async def start_run(context: ServerContext, prepared: PreparedRun, caller: str, *, resumed: bool = False,
                    key: str | None = None) -> LiveRun:
    """The hub starts it; a server shutting down answers 503."""
    try:
        return await context.hub.start(prepared, caller, resumed=resumed, key=key)
    except DrainingError:
        raise _draining() from None


async def same_request(request: Request, caller: str, *, wait: bool, raise_on_failure: bool) -> Response | None:
    """The answer for a run this caller already started with the request's ``Idempotency-Key``, if any:
    a retried create gives the same run, not a second one (kept in this process's memory)."""
    key = request.headers.get("idempotency-key")
    live = context_of(request).hub.by_key(caller, key) if key else None
    if live is None:
        return None
    return await answer_for(request, live, wait=wait, raise_on_failure=raise_on_failure)


async def answer_for(request: Request, live: LiveRun, *, wait: bool, raise_on_failure: bool) -> Response:
    context = context_of(request)
    location = f"{request.scope.get('root_path', '')}/runs/{live.run_id}"
    if not wait:
        return JsonAnswer({"run_id": live.run_id, "workflow": live.workflow, "status": live.status,
                           "location": location, "events": f"{location}/events"},
                          status_code=202, headers={"Location": location})
    await wait_for(request, live, cancel_on_disconnect=context.settings.on_disconnect == "cancel")
    return run_answer(live, raise_on_failure, headers={"Location": location})


async def wait_for(request: Request, live: LiveRun, *, cancel_on_disconnect: bool) -> None:
    """Until the run ends; a client that goes away first cancels it (``on_disconnect: cancel``)."""
    async with anyio.create_task_group() as group:
        async def watch_client() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            if cancel_on_disconnect:
                live.scope.cancel()
            group.cancel_scope.cancel()

        group.start_soon(watch_client)
        await live.done.wait()
        group.cancel_scope.cancel()


def run_answer(live: LiveRun, raise_on_failure: bool, headers: dict[str, str] | None = None) -> Response:
    result = live.result
    if raise_on_failure and live.status != "succeeded":
        raise ApiError(502, "run_failed", f"run {live.run_id} of {live.workflow!r} {live.status}: {live.error}",
                       run_id=live.run_id, task=result.failed_task if result is not None else None)
    if result is None:  # it never started, or its store failed
        return JsonAnswer({"run_id": live.run_id, "workflow": live.workflow, "status": live.status,
                           "error": live.error}, headers=headers)
    return JsonAnswer(result.to_dict(), headers=headers)


def _draining() -> ApiError:
    return ApiError(503, "draining", "the server is shutting down and takes no new runs", headers={"Retry-After": "5"})
