"""An OpenAI-compatible face (``/v1``): any OpenAI client or tool can call a model alias or a workflow.

    GET  /v1/models             every model alias, and ``workflow:<template>`` for every template
    GET  /v1/models/{id}        one of them
    POST /v1/chat/completions   ``model`` is an alias or ``workflow:<template>``; ``stream`` gives SSE chunks

Every completion is a run of the hub's, like ``POST /template/{name}``: recorded, listed by ``/runs``,
metered, held to the caller's capacity. An alias runs a one-task workflow whose prompt reads the
conversation from its inputs (text a user sends is never rendered as a template). A template gets the
conversation as its inputs: the last user message is either a JSON object of them, or the text of the
first required string input, and earlier turns go to a ``history`` input.

What the engine cannot honour is refused with a 400 naming the field (``n`` > 1, tools, log
probabilities, penalties, stop sequences...), not ignored; fields that only identify or label the
caller (``user``, ``metadata``...) are accepted and change nothing. A completion's id is
``chatcmpl-<run id>``: ``GET /runs/<run id>`` shows its tasks, tokens and cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from engine.assembly import model_rows
from engine.core import PreparedRun
from engine.dsl.loader import load_workflow
from engine.dsl.models import DSL_VERSION, Workflow, is_image_input
from engine.errors import InputError
from engine.runtime.results import RunResult
from engine.server.api import Caller
from engine.server.context import (
    JsonAnswer,
    ServerContext,
    check_capacity,
    context_of,
    read_body,
    start_run,
    wait_for,
)
from engine.server.errors import ApiError, error_body
from engine.server.hub import Found, LiveRun
from engine.server.images import network_inputs
from engine.server.runs import STREAM_HEADERS
from engine.suggest import did_you_mean

router = APIRouter(prefix="/v1", tags=["openai"])

WORKFLOW_PREFIX = "workflow:"
CHAT_WORKFLOW = "openai.chat"  # the name of an alias call's run (GET /runs?workflow=openai.chat)
REPLY_TASK = "reply"
HISTORY_INPUT = "history"
_STARTED = int(time.time())  # "created" of every listed model: they exist since the server started

MAX_IMAGES = 16  # image_url parts in one message
# The prompt of an alias call: the conversation is in the inputs, so no user text is ever a template.
CHAT_PROMPT = "{% if history %}Conversation so far:\n{{ history }}\n\n{% endif %}{{ message }}"


# -- the request ------------------------------------------------------------------------------------------

class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # refused below by name, not with pydantic's 422
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class ChatCompletionBody(BaseModel):
    """OpenAI's chat completion request; what is not declared here is checked in ``refuse_unsupported``."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=300, description="A model alias, or `workflow:<template>`.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)

    @property
    def token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# Fields OpenAI defines that the engine cannot honour: accepted only at the value that asks for nothing
# (absent or null always is), else refused with why.
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "one choice is made per request"),
    "tools": (([],), "tool calling is not offered"),
    "tool_choice": (("none",), "tool calling is not offered"),
    "functions": (([],), "function calling is not offered"),
    "function_call": (("none",), "function calling is not offered"),
    "logprobs": ((False,), "log probabilities are not returned"),
    "top_logprobs": ((0,), "log probabilities are not returned"),
    "logit_bias": (({},), "logit bias is not applied"),
    "response_format": (({"type": "text"},), "answers are text (a workflow's output schema gives JSON)"),
    "frequency_penalty": ((0,), "penalties are not applied"),
    "presence_penalty": ((0,), "penalties are not applied"),
    "top_p": ((1,), "nucleus sampling is not set (temperature is)"),
    "stop": (([],), "stop sequences are not applied"),
    "seed": ((), "seeded sampling is not offered"),
    "store": ((False,), "completions are recorded as runs (GET /runs), not stored"),
    "modalities": ((["text"],), "answers are text only"),
    "audio": ((), "answers are text only"),
    "prediction": ((), "predicted outputs are not used"),
    "reasoning_effort": ((), "reasoning is set per model alias in the engine's configuration"),
    "verbosity": ((), "verbosity is not set"),
    "web_search_options": ((), "web search is not offered"),
    "service_tier": (("auto", "default"), "service tiers are the providers'"),
}
# Fields that identify or label the caller, or tune tools that are refused anyway: they change no answer.
IGNORED = frozenset({"user", "safety_identifier", "prompt_cache_key", "metadata", "parallel_tool_calls"})
MESSAGE_NEUTRAL = frozenset({"refusal", "tool_calls", "function_call", "audio", "annotations"})  # null or empty
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def refuse_unsupported(body: ChatCompletionBody) -> None:
    """400 naming the first field asked for that this server does not do."""
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED or value is None:
            continue
        if name not in REFUSED:
            raise _unsupported(name, f"unknown field {name!r}")
        neutral, why = REFUSED[name]
        if not any(_same(value, allowed) for allowed in neutral):
            raise _unsupported(name, f"{name}={json.dumps(value, default=str)[:80]} is not supported: {why}")
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise _unsupported("max_tokens", "max_tokens and max_completion_tokens differ: give one")
    _check_stream_options(body)


def _check_stream_options(body: ChatCompletionBody) -> None:
    options = body.stream_options
    if options is None:
        return
    if not body.stream:
        raise _unsupported("stream_options", "stream_options is only allowed when stream is true")
    for name, value in (options.model_extra or {}).items():
        if value not in (None, False):  # include_obfuscation=true asks for padding this server does not add
            raise _unsupported(f"stream_options.{name}", f"stream_options.{name} is not supported")


def _same(value: Any, allowed: Any) -> bool:
    """Equal, with true and 1 (and false and 0) told apart."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    return bool(value == allowed)


def _unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, "unsupported_field", message, param=param)


# -- the conversation -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    role: str  # system, user or assistant
    text: str
    images: tuple[str, ...] = ()  # data: URLs of its image_url parts


@dataclass(frozen=True)
class Conversation:
    """The messages as the engine takes them: leading system text, earlier turns, the last user message."""

    system: str
    earlier: tuple[Turn, ...]
    message: str
    images: tuple[str, ...] = ()  # the last user message's, as data: URLs


def conversation_of(messages: Sequence[ChatMessage]) -> Conversation:
    turns = [_turn(index, message) for index, message in enumerate(messages)]
    leading = 0
    while leading < len(turns) and turns[leading].role == "system":
        leading += 1
    rest = turns[leading:]
    if not rest or rest[-1].role != "user":
        raise _unsupported("messages", "the last message must be the user's (an assistant prefix is not supported)")
    earlier_images = [index for index, turn in enumerate(turns[:-1]) if turn.images]
    if earlier_images:
        where = f"messages[{earlier_images[0]}].content"
        raise _unsupported(where, f"{where} has images: only the last user message may carry images")
    system = "\n\n".join(turn.text for turn in turns[:leading])
    return Conversation(system, tuple(rest[:-1]), rest[-1].text, rest[-1].images)


def _turn(index: int, message: ChatMessage) -> Turn:
    where = f"messages[{index}]"
    role = ROLES.get(message.role)
    if role is None:
        raise _unsupported(f"{where}.role", f"{where}.role {message.role!r} is not supported: "
                                            "system, developer, user and assistant messages are (no tools)")
    for name, value in (message.model_extra or {}).items():
        if name not in MESSAGE_NEUTRAL or value not in (None, [], ""):
            raise _unsupported(f"{where}.{name}", f"{where}.{name} is not supported")
    if message.content is None:
        if role != "assistant":
            raise _unsupported(f"{where}.content", f"{where} has no content")
        return Turn(role, "")
    if isinstance(message.content, str):
        return Turn(role, message.content)
    return Turn(role, _text_of(where, message.content), _images_of(where, message.content))


def _text_of(where: str, parts: Sequence[ContentPart]) -> str:
    other = sorted({part.type for part in parts if part.type not in ("text", "image_url")})
    if other:
        raise _unsupported(f"{where}.content", f"{where}.content has parts of type {', '.join(map(repr, other))}: "
                                               "only text and image_url parts are supported")
    missing = [index for index, part in enumerate(parts) if part.type == "text" and part.text is None]
    if missing:
        raise _unsupported(f"{where}.content", f"{where}.content[{missing[0]}] is a text part without text")
    return "\n".join(part.text or "" for part in parts if part.type == "text")


def _images_of(where: str, parts: Sequence[ContentPart]) -> tuple[str, ...]:
    """The data: URLs of the image_url parts (a URL to fetch is refused: the server fetches nothing)."""
    images = []
    for index, part in enumerate(parts):
        if part.type != "image_url":
            continue
        image = (part.model_extra or {}).get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url.startswith("data:"):
            raise _unsupported(f"{where}.content[{index}].image_url", f"{where}.content[{index}].image_url is not a "
                               "data: URL: send the image as one (the server fetches nothing for a request)")
        images.append(url)
    if len(images) > MAX_IMAGES:
        raise _unsupported(f"{where}.content", f"{where}.content has {len(images)} images; at most {MAX_IMAGES}")
    return tuple(images)


def transcript(turns: Sequence[Turn]) -> str:
    """Turns as the chat template's history is written: ``role: text``, one a line, oldest first."""
    return "\n".join(f"{turn.role}: {turn.text}" for turn in turns)


# -- what runs: an alias's one-task workflow, or a template ---------------------------------------------------

def chat_workflow(alias: str, temperature: float | None, max_tokens: int | None, images: int = 0) -> dict[str, Any]:
    """One prompt task on ``alias``; system text, history, message and images come in as inputs."""
    task: dict[str, Any] = {"id": REPLY_TASK, "model": alias, "system": "{{ system }}", "prompt": CHAT_PROMPT}
    pictures = {f"image_{index}": {"type": "image"} for index in range(images)}
    if pictures:
        task["images"] = list(pictures)
    if temperature is not None:
        task["temperature"] = float(temperature)
    if max_tokens is not None:
        task["max_tokens"] = max_tokens
    text = {"type": "string", "default": ""}
    return {"dsl": DSL_VERSION, "name": CHAT_WORKFLOW, "description": f"POST /v1/chat/completions on {alias}",
            "inputs": {"message": {"type": "string"}, "history": text, "system": text, **pictures},
            "stages": [{"type": "inline", "tasks": [task]}]}


def chat_inputs(conversation: Conversation) -> dict[str, Any]:
    images = {f"image_{index}": url for index, url in enumerate(conversation.images)}
    return {"message": conversation.message, "history": transcript(conversation.earlier),
            "system": conversation.system, **images}


def template_inputs(model: str, workflow: Workflow, conversation: Conversation) -> dict[str, Any]:
    """The template's inputs from the conversation: the last user message as a JSON object of them, or
    as its first required string input; earlier turns (system text included) as its ``history``."""
    declared = workflow.inputs
    given = _json_object(conversation.message)
    if given is not None and given and given.keys() <= declared.keys():
        inputs = given
    else:
        target = _message_input(workflow)
        if target is None:
            raise _misfit(model, workflow, "it has no string input for the user's message")
        inputs = {target: conversation.message}
    earlier = ((Turn("system", conversation.system),) if conversation.system else ()) + conversation.earlier
    if earlier and HISTORY_INPUT not in inputs:
        if HISTORY_INPUT not in declared:
            raise _misfit(model, workflow, f"it has no {HISTORY_INPUT!r} input for the earlier messages "
                                           "(send only the last user message)")
        inputs[HISTORY_INPUT] = _history_value(declared[HISTORY_INPUT], earlier)
    if conversation.images:  # in order, to the template's image inputs
        slots = [name for name, schema in declared.items() if is_image_input(schema) and name not in inputs]
        if len(conversation.images) > len(slots):
            raise _misfit(model, workflow, f"the message has {len(conversation.images)} image(s) and the template "
                                           f"takes {len(slots)}")
        inputs.update(zip(slots, conversation.images, strict=False))
    return inputs


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _message_input(workflow: Workflow) -> str | None:
    """The first required string input; else the first string input (``history`` is never it)."""
    strings = [name for name, schema in workflow.inputs.items()
               if schema.get("type") == "string" and name != HISTORY_INPUT]
    required = [name for name in strings if "default" not in workflow.inputs[name]]
    return next(iter(required or strings), None)


def _history_value(schema: dict[str, Any], turns: Sequence[Turn]) -> Any:
    if schema.get("type") == "array":  # a template that takes the turns themselves
        return [{"role": turn.role, "content": turn.text} for turn in turns]
    return transcript(turns)


def _misfit(model: str, workflow: Workflow, why: str, problems: Sequence[str] = ()) -> ApiError:
    message = (f"the conversation does not fit the inputs of {model}: {why}. It takes: {_describe_inputs(workflow)}. "
               "Send them as the last user message, a JSON object")
    return ApiError(422, "invalid_inputs", message, problems=[{"message": p} for p in problems] or None)


def _describe_inputs(workflow: Workflow) -> str:
    described = []
    for name, schema in workflow.inputs.items():
        kind = schema.get("type", "any")
        need = f"default {json.dumps(schema['default'])[:40]}" if "default" in schema else "required"
        described.append(f"{name} ({kind}, {need})")
    return ", ".join(described) or "no inputs"


def _known_template(context: ServerContext, model: str) -> Workflow:
    name = model.removeprefix(WORKFLOW_PREFIX)
    templates = context.engine.catalog.templates
    if name not in templates:
        raise _no_model(model, [WORKFLOW_PREFIX + known for known in templates])
    return context.engine.catalog.load_workflow(name)


def _known_alias(context: ServerContext, model: str) -> str:
    if model not in context.engine.catalog.models:
        raise _no_model(model, list(context.engine.catalog.models))
    return model


def _no_model(model: str, known: Sequence[str]) -> ApiError:
    hint = did_you_mean(model, known) or "GET /v1/models lists them"
    return ApiError(404, "model_not_found", f"the model {model!r} does not exist ({hint})", param="model")


@dataclass(frozen=True)
class Target:
    """A prepared run, and the task whose streamed text is the answer (None: the run's output, at its end)."""

    prepared: PreparedRun
    streamed_task: str | None


async def prepare(context: ServerContext, body: ChatCompletionBody, conversation: Conversation,
                  caller: str) -> Target:
    if body.model.startswith(WORKFLOW_PREFIX):
        return await _prepare_template(context, body, conversation, caller)
    alias = _known_alias(context, body.model)
    check_capacity(context, caller)
    workflow = load_workflow(chat_workflow(alias, body.temperature, body.token_cap, len(conversation.images)))
    return Target(await context.engine.prepare(workflow, network_inputs(workflow, chat_inputs(conversation))),
                  REPLY_TASK)


async def _prepare_template(context: ServerContext, body: ChatCompletionBody, conversation: Conversation,
                            caller: str) -> Target:
    workflow = _known_template(context, body.model)
    for name in ("temperature", "max_tokens", "max_completion_tokens"):
        if getattr(body, name) is not None:  # a template's tasks set their own: it would not be honoured
            raise _unsupported(name, f"{name} applies to a model alias; the tasks of {body.model} set their own")
    inputs = template_inputs(body.model, workflow, conversation)
    check_capacity(context, caller)
    try:
        prepared = await context.engine.prepare(workflow, network_inputs(workflow, inputs))
    except InputError as error:
        raise _misfit(body.model, workflow, "; ".join(error.problems), error.problems) from None
    return Target(prepared, None)


# -- the answer -------------------------------------------------------------------------------------------------

@dataclass
class Reply:
    """One completion being answered: its run, its names, and the text streamed of it so far."""

    live: LiveRun
    model: str
    streamed_task: str | None
    include_usage: bool
    sent: list[str] = field(default_factory=list)
    attempt: int | None = None
    diverged: bool = False  # the model was asked again after part of an answer went out

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.live.run_id}"

    @property
    def created(self) -> int:
        return int(self.live.created_at)

    def delta_of(self, event: dict[str, Any]) -> str | None:
        """The text of a token delta of the answering task to send on; None for any other event."""
        if (self.streamed_task is None or event["type"] != "token_delta" or event.get("run_id") != self.live.run_id
                or event.get("task_id") != self.streamed_task):
            return None
        if self.sent and event.get("attempt") != self.attempt:
            self.diverged = True  # what went out cannot be taken back: the rest is checked at the end
        if self.diverged:
            return None
        self.attempt = event.get("attempt")
        self.sent.append(event["text"])
        return str(event["text"])

    def rest(self, answer: str) -> str | None:
        """The answer not yet sent; None if what was sent is not the start of it."""
        sent = "".join(self.sent)
        return answer[len(sent):] if answer.startswith(sent) else None

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        return {**chunk, "usage": None} if self.include_usage else chunk


def answer_text(result: RunResult) -> str:
    """The assistant's message: one output's text, or several as a JSON object."""
    outputs = result.outputs
    value = next(iter(outputs.values())) if len(outputs) == 1 else outputs
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def usage_of(result: RunResult) -> dict[str, int]:
    totals = result.totals
    return {"prompt_tokens": totals.input_tokens, "completion_tokens": totals.output_tokens,
            "total_tokens": totals.input_tokens + totals.output_tokens}


LENGTH = frozenset({"length", "max_tokens", "MAX_TOKENS"})  # OpenAI's, Anthropic's and Gemini's words for it
FILTERED = frozenset({"content_filter", "SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST"})


def finish_reason(reply: Reply) -> str:
    """``length`` when the answering model's last call was cut at its token cap, ``content_filter`` when it
    was filtered, else ``stop`` (a workflow's answer is its outputs, never cut)."""
    if reply.streamed_task is None:
        return "stop"
    for event in reversed(reply.live.events):
        if (event["type"] == "model_called" and event.get("task_id") == reply.streamed_task
                and event.get("run_id") == reply.live.run_id and event.get("outcome") == "ok"):
            reason = event.get("finish_reason")
            return "length" if reason in LENGTH else "content_filter" if reason in FILTERED else "stop"
    return "stop"  # no call made (a cache hit): nothing says the answer was cut


def failure_of(live: LiveRun) -> ApiError | None:
    """502 naming the failed task, for a run that did not succeed."""
    result = live.result
    if live.status == "succeeded" and result is not None:
        return None
    task = result.failed_task if result is not None else None
    where = f" at task {task!r}" if task else ""
    # The engine has retried per its policy already: a client's retry would pay for the run again.
    return ApiError(502, "run_failed", f"run {live.run_id} of {live.workflow!r} {live.status}{where}: {live.error}",
                    headers={"x-should-retry": "false"}, run_id=live.run_id, task=task)


def completion(reply: Reply) -> dict[str, Any]:
    failure = failure_of(reply.live)
    if failure is not None:
        raise failure
    result = reply.live.result
    assert result is not None
    message = {"role": "assistant", "content": answer_text(result), "refusal": None}
    return {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(reply)}],
            "usage": usage_of(result)}


# -- streaming ---------------------------------------------------------------------------------------------------

def _data(value: dict[str, Any]) -> str:
    return f"data: {json.dumps(value, ensure_ascii=False, default=str)}\n\n"


async def stream(context: ServerContext, reply: Reply) -> AsyncIterator[str]:
    """The chunks of a streamed completion; a client that goes away cancels the run (``on_disconnect``)."""
    try:
        async for line in _chunks(context, reply):
            yield line
    finally:
        if not reply.live.done.is_set() and context.settings.on_disconnect == "cancel":
            reply.live.scope.cancel()


async def _chunks(context: ServerContext, reply: Reply) -> AsyncIterator[str]:
    yield _data(reply.chunk({"role": "assistant", "content": ""}))
    after = 0
    while True:
        events, ended = await _next_events(context, reply.live, after)
        for event in events:
            after = event["seq"]
            text = reply.delta_of(event)
            if text:
                yield _data(reply.chunk({"content": text}))
        if ended:
            break
        if not events:
            yield ": ping\n\n"  # a comment: keeps proxies from closing a quiet stream; clients skip it
    async for line in _ending(context, reply):
        yield line


async def _next_events(context: ServerContext, live: LiveRun, after: int) -> tuple[list[dict[str, Any]], bool]:
    hub, wait = context.hub, context.settings.heartbeat_seconds
    if hub.draining and live.last_seq <= after and not live.done.is_set():
        # next_events answers at once while draining; the run may still finish in the grace period
        with anyio.move_on_after(wait):
            await live.changed().wait()
    return await hub.next_events(Found(live=live), after, wait)


async def _ending(context: ServerContext, reply: Reply) -> AsyncIterator[str]:
    """After the run: the rest of the answer, the finish reason, the usage and ``[DONE]``; or an error."""
    failure = failure_of(reply.live)
    if failure is not None:
        yield _error_chunk(context, failure)
        return
    result = reply.live.result
    assert result is not None  # a run without a result is a failure
    rest = reply.rest(answer_text(result))
    if rest is None:
        yield _error_chunk(context, ApiError(502, "stream_diverged", "the model was asked again after part of its "
                                             f"answer was streamed; run {reply.live.run_id} has the whole answer",
                                             run_id=reply.live.run_id))
        return
    if rest:
        yield _data(reply.chunk({"content": rest}))
    yield _data(reply.chunk({}, finish_reason(reply)))
    if reply.include_usage:
        yield _data({**reply.chunk({}), "choices": [], "usage": usage_of(result)})
    yield "data: [DONE]\n\n"


def _error_chunk(context: ServerContext, error: ApiError) -> str:
    body = error_body(error.status, error.kind, context.scrub.text(error.message), **error.details)
    return _data(context.scrub.value(body))


# -- routes ------------------------------------------------------------------------------------------------------

def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "orchestrion"}


def _model_ids(context: ServerContext) -> list[str]:
    engine = context.engine
    aliases = {row["alias"] for row in model_rows(engine.config, engine.health()["breakers"])}
    aliases |= engine.catalog.models  # aliases given as clients directly are callable too
    return sorted(aliases) + [WORKFLOW_PREFIX + name for name in sorted(engine.catalog.templates)]


@router.get("/models", summary="OpenAI's model list: every model alias, and workflow:<template>")
async def list_models(request: Request, _: str = Caller) -> JsonAnswer:
    return JsonAnswer({"object": "list", "data": [_model(model_id) for model_id in _model_ids(context_of(request))]})


@router.get("/models/{model_id:path}", summary="One model alias or workflow:<template>")
async def get_model(request: Request, model_id: str, _: str = Caller) -> JsonAnswer:
    known = _model_ids(context_of(request))
    if model_id not in known:
        raise _no_model(model_id, known)
    return JsonAnswer(_model(model_id))


_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ChatCompletionBody.model_json_schema()}}}}


@router.post("/chat/completions", summary="OpenAI's chat completion, on a model alias or workflow:<template>",
             openapi_extra=_BODY_DOC, response_model=None)
async def chat_completions(request: Request, caller: str = Caller) -> Response:
    context = context_of(request)
    body = await read_body(request, ChatCompletionBody)
    refuse_unsupported(body)
    target = await prepare(context, body, conversation_of(body.messages), caller)
    live = await start_run(context, target.prepared, caller)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    reply = Reply(live, body.model, target.streamed_task, include_usage)
    location = {"Location": f"{request.scope.get('root_path', '')}/runs/{live.run_id}"}
    if body.stream:
        return StreamingResponse(stream(context, reply), media_type="text/event-stream",
                                 headers={**STREAM_HEADERS, **location})
    await wait_for(request, live, cancel_on_disconnect=context.settings.on_disconnect == "cancel")
    return JsonAnswer(completion(reply), headers=location)

