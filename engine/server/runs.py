"""Runs: list, show, cancel, resume, and their events live (Server-Sent Events and a WebSocket).

A stream replays the run's events from the first (or after ``Last-Event-ID`` /
``?after=``), then follows it live until ``run_finished``; each SSE event's id
is its ``seq``, so a client that reconnects misses nothing and sees nothing
twice. A quiet stream gets a ``: ping`` comment every ``heartbeat_seconds``
(never an id, so resuming is not disturbed); a server shutting down ends its
streams with a ``shutdown`` event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse

from engine.graph import to_mermaid
from engine.runtime.journal import ITEM_STATUS
from engine.server.api import Caller, graph_of
from engine.server.context import JsonAnswer, ServerContext, check_capacity, context_of, launch, wait_for
from engine.server.errors import ApiError
from engine.server.hub import TERMINAL, Found
from engine.store.records import StoredRun, StoredRunStatus

router = APIRouter()
ws_router = APIRouter()

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
SHUTDOWN = {"type": "shutdown", "message": "the server is shutting down; reconnect with Last-Event-ID"}


@router.get("/runs", summary="Recent runs, newest first")
async def list_runs(request: Request, limit: int = Query(50, ge=1, le=1000), workflow: str | None = None,
                    status: StoredRunStatus | None = None, _: str = Caller) -> JsonAnswer:
    context = context_of(request)
    live = {run.run_id: run.summary() for run in context.hub.runs.values()}
    store = await context.engine.run_store()
    rows: list[dict[str, Any]] = []
    if store is not None:
        for record in await store.list_runs(limit, workflow, status):
            row = {"run_id": record.run_id, "workflow": record.workflow, "status": record.status,
                   "started_at": record.started_at, "ended_at": record.ended_at, "error": record.error,
                   "cost_usd": record.cost_usd, "input_tokens": record.input_tokens,
                   "output_tokens": record.output_tokens}
            if record.run_id in live:
                row["status"] = live.pop(record.run_id)["status"]  # fresher than the row
            rows.append(row)
    extra = [run for run in live.values() if (workflow is None or run["workflow"] == workflow)
             and (status is None or run["status"] == status)]
    rows = sorted(rows + extra, key=lambda row: row["started_at"], reverse=True)[:limit]
    return JsonAnswer({"runs": rows})


@router.get("/runs/{run_id}", summary="A run: status, outputs, each task's result (`?wait=true`: once it ends)")
async def show_run(request: Request, run_id: str, wait: bool = False, _: str = Caller) -> JsonAnswer:
    found = await _found(request, run_id)
    if found.live is not None:
        live = found.live
        if wait or (live.status in TERMINAL and live.result is None):  # join; or its result is a moment away
            await wait_for(request, live, cancel_on_disconnect=False)
        if live.result is not None:
            return JsonAnswer(live.result.to_dict())
        return JsonAnswer({**live.summary(), "tasks": _live_tasks(live.events)})
    assert found.stored is not None
    return JsonAnswer(stored_result(found.stored))


def stored_result(stored: StoredRun) -> dict[str, Any]:
    """A stored run in the shape of ``RunResult.to_dict()`` (what a run held here answers), with its inputs."""
    run = stored.run
    tasks = {task_id: {"task_id": task_id, "status": task.status, "output": task.output, "model": task.model,
                       "attempts": task.attempts, "input_tokens": task.input_tokens,
                       "output_tokens": task.output_tokens, "cost_usd": task.cost_usd, "started_at": task.started_at,
                       "ended_at": task.ended_at, "error": task.error, "error_kind": task.error_kind}
             for task_id, task in stored.tasks.items() if task.status != ITEM_STATUS}
    ended = run.ended_at
    models = sorted({task["model"] for task in tasks.values() if task["model"]})
    failed = next((task_id for task_id, task in tasks.items() if task["status"] == "failed"), None)
    return {"run_id": run.run_id, "workflow": run.workflow, "status": run.status, "outputs": run.outputs or {},
            "tasks": tasks,
            "totals": {"input_tokens": run.input_tokens, "output_tokens": run.output_tokens,
                       "cost_usd": run.cost_usd, "wall_time_s": (ended - run.started_at) if ended else None,
                       "models_used": models},
            "started_at": run.started_at, "ended_at": ended, "error": run.error,
            "failed_task": failed if run.status == "failed" else None, "inputs": run.inputs}


@router.get("/runs/{run_id}/graph", summary="The run's task graph (Mermaid text, and nodes and edges)")
async def run_graph(request: Request, run_id: str, _: str = Caller) -> JsonAnswer:
    context, found = context_of(request), await _found(request, run_id)
    plan = found.live.plan if found.live is not None else None
    if plan is None:
        store = await context.engine.run_store()
        stored = found.stored or (await store.load_run(run_id) if store is not None else None)
        if stored is None:
            raise ApiError(404, "no_graph", f"run {run_id!r} is not in the store, so its workflow is not known")
        plan = context.engine.compile(stored.run.document)
    return JsonAnswer({"run_id": run_id, "mermaid": to_mermaid(plan), "graph": graph_of(plan)})


@router.post("/runs/{run_id}/cancel", summary="Cancel a run (`?wait=true`: answer once it has stopped)")
async def cancel_run(request: Request, run_id: str, wait: bool = False, _: str = Caller) -> JsonAnswer:
    context, found = context_of(request), await _found(request, run_id)
    if found.status in TERMINAL:
        raise ApiError(409, "run_ended", f"run {run_id!r} has already ended: {found.status}")
    if found.live is None:
        raise ApiError(409, "run_elsewhere", f"run {run_id!r} runs in another process; cancel it there")
    await context.hub.cancel(found.live, wait=wait)
    return JsonAnswer({"run_id": run_id, "status": found.live.status}, status_code=200 if wait else 202)


@router.post("/runs/{run_id}/resume", summary="Go on with a failed, cancelled or interrupted run")
async def resume_run(request: Request, run_id: str, *, wait: bool = True, force: bool = False,
                     raise_: bool = Query(False, alias="raise"), caller: str = Caller) -> Response:
    context = context_of(request)
    live = context.hub.runs.get(run_id)
    if live is not None and not live.done.is_set():
        raise ApiError(409, "run_running", f"run {run_id!r} is still running")
    check_capacity(context, caller)
    prepared = await context.engine.prepare_resume(run_id, force=force)
    return await launch(request, prepared, caller, wait=wait, raise_on_failure=raise_, resumed=True)


@router.get("/runs/{run_id}/events", summary="The run's events as Server-Sent Events, replayed then live",
            response_class=StreamingResponse)
async def run_events(request: Request, run_id: str, after: int = Query(0, ge=0),
                     last_event_id: str | None = Header(None), _: str = Caller) -> StreamingResponse:
    context, found = context_of(request), await _found(request, run_id)
    if last_event_id is not None:
        try:
            after = max(after, int(last_event_id))
        except ValueError:
            raise ApiError(400, "bad_last_event_id", "Last-Event-ID is an event's seq (a number)") from None
    return StreamingResponse(_sse(context, found, after), media_type="text/event-stream", headers=STREAM_HEADERS)


async def _sse(context: ServerContext, found: Found, after: int) -> AsyncIterator[str]:
    heartbeat = context.settings.heartbeat_seconds
    while True:
        events, ended = await context.hub.next_events(found, after, heartbeat)
        for event in events:
            after = event["seq"]
            yield f"id: {after}\nevent: {event['type']}\ndata: {json.dumps(event, default=str)}\n\n"
        if ended:
            return
        if context.hub.draining:
            yield f"event: shutdown\ndata: {json.dumps(SHUTDOWN)}\n\n"
            return
        if not events:
            yield ": ping\n\n"


@ws_router.websocket("/runs/{run_id}/ws")
async def run_socket(websocket: WebSocket, run_id: str, after: int = Query(0, ge=0)) -> None:
    """The same events as the SSE stream, one JSON text message each; the socket closes after the last."""
    context = context_of(websocket)  # type: ignore[arg-type]
    try:
        context.auth.caller(websocket)  # type: ignore[arg-type]
        found = await context.hub.find(run_id)
    except ApiError as error:
        await websocket.close(code=1008, reason=error.message[:120])
        return
    if found is None:
        await websocket.close(code=1008, reason=f"no run {run_id!r}"[:120])
        return
    await websocket.accept()
    try:
        async with anyio.create_task_group() as group:
            async def until_closed() -> None:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(until_closed)
            while True:
                events, ended = await context.hub.next_events(found, after, context.settings.heartbeat_seconds)
                for event in events:
                    after = event["seq"]
                    await websocket.send_text(json.dumps(event, default=str))
                if ended or context.hub.draining:
                    if context.hub.draining and not ended:
                        await websocket.send_text(json.dumps(SHUTDOWN))
                    break
            group.cancel_scope.cancel()
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        return


async def _found(request: Request, run_id: str) -> Found:
    found = await context_of(request).hub.find(run_id)
    if found is None:
        raise ApiError(404, "unknown_run", f"no run {run_id!r} (GET /runs lists them)")
    return found


def _live_tasks(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each task's state so far, from the run's own events."""
    tasks: dict[str, dict[str, Any]] = {}
    states = {"task_started": "running", "task_retrying": "retrying", "task_finished": "succeeded",
              "task_failed": "failed", "task_skipped": "skipped"}
    for event in events:
        state = states.get(event["type"])
        if state is not None:
            tasks.setdefault(event["task_id"], {"task_id": event["task_id"]})["status"] = state
    return tasks
