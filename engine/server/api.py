"""The seed systems' routes: chat, workflow, template, templates, models, addons, health, stats."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from engine.assembly import model_rows
from engine.catalog import is_workflow_path
from engine.compiler import Plan
from engine.dsl.loader import load_workflow, parse_workflow
from engine.dsl.models import Stage, Task, Workflow
from engine.errors import Location, Problem, WorkflowError
from engine.graph import to_mermaid
from engine.server.context import (
    JsonAnswer,
    ServerContext,
    check_capacity,
    context_of,
    launch,
    read_body,
    read_json,
    same_request,
)
from engine.server.errors import ApiError
from engine.server.images import network_inputs, public_schema
from engine.suggest import did_you_mean

MAX_MESSAGE_CHARS = 200_000

router = APIRouter()
open_router = APIRouter()  # no token needed


async def caller_of(request: Request) -> str:  # async: FastAPI runs a sync dependency in a thread
    context = context_of(request)
    caller = context.auth.caller(request)
    request.state.caller = caller
    return caller


Caller = Depends(caller_of)


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    session_id: str = Field("default", pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    template: str = Field("chat", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    image: str | None = Field(None, description="An image sent with the message, as a data: URL (the chat template "
                              "sends it to image_analysis_ai)")


class WorkflowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: dict[str, Any] | str = Field(description="A DSL document or a seed-format workflow: an object, "
                                                       "or YAML/JSON text (then errors carry line and column).")
    inputs: dict[str, Any] = Field(default_factory=dict)


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


_INPUTS_DOC = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "description": "The template's inputs (GET /templates/{name} gives their schema)."}}}}}


@open_router.get("/health", summary="Liveness: breaker states and whether the store answers")
async def health(request: Request) -> JsonAnswer:
    context = context_of(request)
    return JsonAnswer({"status": "draining" if context.hub.draining else "ok",
                       "breakers": context.engine.health()["breakers"], "store": await _store_health(context)})


@open_router.get("/health/ready", summary="Readiness: 503 while draining or when the store does not answer")
async def ready(request: Request) -> JsonAnswer:
    context = context_of(request)
    store = await _store_health(context)
    ok = not context.hub.draining and store["reachable"] is not False
    return JsonAnswer({"ready": ok, "draining": context.hub.draining, "store": store}, status_code=200 if ok else 503)


async def _store_health(context: ServerContext) -> dict[str, Any]:
    try:
        with anyio.fail_after(2.0):
            store = await context.engine.run_store()
            if store is None:
                return {"configured": False, "reachable": None}
            await store.list_runs(limit=1)
    except Exception as error:
        return {"configured": True, "reachable": False, "error": context.scrub.text(f"{type(error).__name__}: {error}")}
    return {"configured": True, "reachable": True}


@router.post("/chat", summary="One turn of a conversation (the chat template)", openapi_extra=_body_doc(ChatBody))
async def chat(request: Request, caller: str = Caller) -> JsonAnswer:
    context = context_of(request)
    body = await read_body(request, ChatBody)
    _known_template(context, body.template)
    check_capacity(context, caller)
    image = network_inputs(_known_template(context, body.template), {"image": body.image})["image"] \
        if body.image is not None else None
    reply = await context.engine.chat(body.message, session_id=body.session_id, template=body.template, image=image)
    result = reply.result
    return JsonAnswer({"answer": reply.answer, "category": reply.category, "session_id": body.session_id,
                       "run_id": result.run_id, "status": result.status, "error": result.error,
                       "usage": {"input_tokens": result.totals.input_tokens,
                                 "output_tokens": result.totals.output_tokens, "cost_usd": result.totals.cost_usd}})


@router.post("/workflow", summary="Run a workflow sent in the body", openapi_extra=_body_doc(WorkflowBody),
             status_code=200, responses={202: {"description": "Detached (`?wait=false`): the run id"}})
async def workflow(request: Request, wait: bool = True, raise_: bool = Query(False, alias="raise"),
                   caller: str = Caller) -> Response:
    context = context_of(request)
    body = await read_body(request, WorkflowBody)
    repeated = await same_request(request, caller, wait=wait, raise_on_failure=raise_)
    if repeated is not None:
        return repeated
    loaded = parse_workflow(body.workflow, name="<request>") if isinstance(body.workflow, str) \
        else load_workflow(body.workflow)
    refuse_file_references(loaded)
    check_capacity(context, caller)
    prepared = await context.engine.prepare(loaded, network_inputs(loaded, body.inputs), run_id=None)
    return await launch(request, prepared, caller, wait=wait, raise_on_failure=raise_)


@router.post("/template/{name}", summary="Run a template with the body as its inputs", openapi_extra=_INPUTS_DOC,
             responses={202: {"description": "Detached (`?wait=false`): the run id"}})
async def template(request: Request, name: str, wait: bool = True, raise_: bool = Query(False, alias="raise"),
                   caller: str = Caller) -> Response:
    context = context_of(request)
    inputs = await read_json(request)
    if not isinstance(inputs, dict):
        raise ApiError(422, "invalid_inputs", "the body is the template's inputs: a JSON object")
    loaded = _known_template(context, name)
    repeated = await same_request(request, caller, wait=wait, raise_on_failure=raise_)
    if repeated is not None:
        return repeated
    check_capacity(context, caller)
    prepared = await context.engine.prepare(loaded, network_inputs(loaded, inputs))
    return await launch(request, prepared, caller, wait=wait, raise_on_failure=raise_)


@router.get("/templates", summary="The templates this server runs, with their inputs")
async def templates(request: Request, _: str = Caller) -> JsonAnswer:
    context = context_of(request)
    listed = []
    for name in sorted(context.engine.catalog.templates):
        try:
            listed.append(describe_template(name, context.engine.catalog.load_workflow(name), graph=False))
        except WorkflowError as error:  # a broken template file is listed with its problem, not hidden
            listed.append({"name": name, "error": str(error).splitlines()[0]})
    return JsonAnswer({"templates": listed})


@router.get("/templates/{name}", summary="A template's inputs (a JSON Schema), outputs and task graph")
async def template_detail(request: Request, name: str, _: str = Caller) -> JsonAnswer:
    context = context_of(request)
    loaded = _known_template(context, name)
    described = describe_template(name, loaded, graph=True)
    plan = context.engine.compile(loaded)
    described["mermaid"] = to_mermaid(plan)
    described["graph"] = graph_of(plan)
    return JsonAnswer(described)


@router.get("/models", summary="Model aliases: provider, model, context window, prices, breaker")
async def models(request: Request, _: str = Caller) -> JsonAnswer:
    context = context_of(request)
    return JsonAnswer({"models": model_rows(context.engine.config, context.engine.health()["breakers"])})


@router.get("/addons", summary="Prompt addons tasks may use")
async def addons(request: Request, _: str = Caller) -> JsonAnswer:
    catalog = context_of(request).engine.catalog
    return JsonAnswer({"addons": [{"name": addon.name, "category": addon.category, "description": addon.description}
                                  for addon in sorted(catalog.addons.values(), key=lambda addon: addon.name)]})


@router.get("/stats", summary="Model calls per model and per workflow: failures, tokens, cost, latency")
async def stats(request: Request, since: float = Query(86_400.0, ge=0, description="seconds back"),
                workflow: str | None = None, _: str = Caller) -> JsonAnswer:
    context = context_of(request)
    return JsonAnswer((await context.engine.stats(since=time.time() - since, workflow=workflow)).to_dict())


def _known_template(context: ServerContext, name: str) -> Workflow:
    templates = context.engine.catalog.templates
    if name not in templates:
        hint = did_you_mean(name, templates) or f"templates: {', '.join(sorted(templates)) or 'none'}"
        raise ApiError(404, "unknown_template", f"no template {name!r} ({hint})")
    return context.engine.catalog.load_workflow(name)


def describe_template(name: str, workflow: Workflow, *, graph: bool) -> dict[str, Any]:
    required = [key for key, schema in workflow.inputs.items() if "default" not in schema]
    return {"name": name, "workflow": workflow.name, "version": workflow.version, "description": workflow.description,
            "inputs": {"type": "object", "required": required,
                       "properties": {key: public_schema(schema) for key, schema in workflow.inputs.items()},
                       "additionalProperties": False},
            "outputs": sorted(workflow.outputs)}


def graph_of(plan: Plan) -> dict[str, Any]:
    """The plan's nodes and edges for the viewer to lay out; ``source`` is a prompt's template (unrendered),
    a function's or workflow's name, or an `until` check's condition."""
    return {"nodes": [{"id": node.id, "task_id": node.task_id, "kind": node.kind, "stage": node.stage,
                       "round": node.round, "task": node.task.kind if node.task is not None else None,
                       "source": node.task.source if node.task is not None else node.condition,
                       "models": list(node.policies.models) if node.policies is not None else [],
                       "depends_on": sorted(node.depends_on)} for node in plan.nodes.values()],
            "edges": [list(edge) for edge in plan.edges], "critical_path": list(plan.critical_path)}


def _tasks(stages: Sequence[Stage], path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Task]]:
    """Every task with its document path, in stages nested at any depth."""
    for stage_index, stage in enumerate(stages):
        yield from _members(stage, (*path, stage_index))


def _members(stage: Stage, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Task]]:
    for index, member in enumerate(stage.tasks):
        if isinstance(member, Stage):
            yield from _members(member, (*path, "tasks", index))
        else:
            yield (*path, "tasks", index), member


def refuse_file_references(workflow: Workflow) -> None:
    """A workflow from the network may run templates, never a file of the server's by its path
    (else ``workflow: /etc/passwd`` would tell whether a file exists)."""
    problems = [
        Problem("file_reference", f"a workflow sent over HTTP names templates, not files: {task.workflow!r}",
                path=(*path, "workflow"), hint="GET /templates lists the templates this server has",
                location=Location("<request>"))
        for path, task in _tasks(workflow.stages, ("stages",))
        if task.workflow is not None and is_workflow_path(task.workflow)
    ]
    if problems:
        raise WorkflowError(problems)
