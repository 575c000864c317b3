"""OpenTelemetry traces of runs (``orchestrion[otel]``): a listener that turns a run's events into spans.

    engine.add_listener(OtelTracing(tracer_provider))

Off unless added. One trace per top-level run; the events' own times are the spans' times::

    orchestrion.run <workflow>              run_started → run_finished (error status if the run failed)
    ├── orchestrion.task <task id>          task_started → task_finished / task_failed
    │   ├── chat <alias>                    one per model call (model_called), GenAI attributes
    │   └── chat <alias>                    a retry is a second call; the retry itself, a span event
    └── orchestrion.task <a workflow: task>
        └── orchestrion.run <nested>        a nested run (its own run id), under the task that ran it

Retries, fallbacks, gate decisions, cache hits and plans are span events on their task's span, named
``orchestrion.<event type>``; a breaker's change is one on the span of the task that saw it. A skipped
task is an event on the run's span, not a span: it spent nothing, and the unrolled rounds of a
repeated stage would otherwise fill the trace with empty spans. A task that fails before it starts (its
`when` could not be evaluated) is a span of no length; one still open when its run ends (cancelled)
ends with the run, as ``cancelled``. GenAI usage is on the model-call spans only, so a backend that
adds tokens up across a trace counts each once.

No prompt, answer, input or error message goes into a span, only names, kinds, counts, costs and
times: an error's message may quote a model's answer. Spans are made in memory as the events come
(the listener is called in line and must not block); exporting them is the SDK's span processor's job
(a ``BatchSpanProcessor`` in production).

A nested run's events do not name the task that started it; the listener is called in the coroutine
that emits, so the task span that coroutine opened last (a context variable) is its parent. A run with
no such task has the caller's current OpenTelemetry span, if any, as its parent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine import __version__
from engine.events import (
    BreakerStateChanged,
    CacheHit,
    Event,
    GateApplied,
    ModelCalled,
    PlanCreated,
    RunFinished,
    RunStarted,
    TaskFailed,
    TaskFellBack,
    TaskFinished,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from engine.config import EngineConfig

INSTALL_HINT = "OpenTelemetry tracing needs the OpenTelemetry API and SDK: pip install 'orchestrion[otel]'"
UNKNOWN_SYSTEM = "orchestrion"
# A provider kind as the GenAI conventions name the system (``gen_ai.system``).
GEN_AI_SYSTEMS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "llama_cpp": "llama_cpp"}

# The task span the current coroutine opened last, as (run id, task id): a nested run's parent.
_CURRENT_TASK: ContextVar[tuple[str, str] | None] = ContextVar("orchestrion_current_task", default=None)


@dataclass(slots=True)
class _Run:
    span: Span
    tasks: dict[str, Span] = field(default_factory=dict)  # open task spans by task id
    error_kind: str | None = None  # the first critical task failure's kind


class OtelTracing:
    """An engine listener that makes OpenTelemetry spans of runs, tasks and model calls.

    ``tracer_provider``: where the spans go (None: OpenTelemetry's global provider). ``config``: the
    engine's configuration, to name each alias's provider as ``gen_ai.system`` ("orchestrion" without).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None, *, config: EngineConfig | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        self._tracer = trace.get_tracer("orchestrion", __version__, tracer_provider=tracer_provider)
        self._in_context = trace.set_span_in_context
        self._client: SpanKind = trace.SpanKind.CLIENT  # kept: nothing is imported per event
        self._status: type[Status] = trace.Status
        self._error: StatusCode = trace.StatusCode.ERROR
        self._systems, self._default_system = gen_ai_systems(config)
        self._runs: dict[str, _Run] = {}
        self._handlers: dict[str, Callable[[Any], None]] = {
            RunStarted.type: self._run_started, RunFinished.type: self._run_finished,
            TaskStarted.type: self._task_started, TaskFinished.type: self._task_finished,
            TaskFailed.type: self._task_failed, TaskSkipped.type: self._task_skipped,
            ModelCalled.type: self._model_called, TaskRetrying.type: self._retrying,
            TaskFellBack.type: self._fell_back, GateApplied.type: self._gate_applied, CacheHit.type: self._cache_hit,
            BreakerStateChanged.type: self._breaker_changed, PlanCreated.type: self._plan_created,
        }

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(event.type)  # token deltas and the rest: not traced
        if handler is not None:
            handler(event)

    # -- runs ------------------------------------------------------------------------------------

    def _run_started(self, event: RunStarted) -> None:
        caller = _CURRENT_TASK.get()
        parent = self._runs[caller[0]].tasks.get(caller[1]) if caller is not None and caller[0] in self._runs else None
        span = self._tracer.start_span(
            f"orchestrion.run {event.workflow}", self._in_context(parent) if parent is not None else None,
            attributes={"orchestrion.run.id": event.run_id, "orchestrion.workflow": event.workflow,
                        "orchestrion.run.nodes": event.nodes},
            start_time=_ns(event.time))
        self._runs[event.run_id] = _Run(span)

    def _run_finished(self, event: RunFinished) -> None:
        run = self._runs.pop(event.run_id, None)
        if run is None:
            return
        for span in run.tasks.values():  # cancelled with the run: no event of their own
            span.set_attribute("orchestrion.task.status", "cancelled")
            span.end(_ns(event.time))
        span = run.span
        span.set_attributes({"orchestrion.run.status": event.status, "orchestrion.cost_usd": event.cost_usd,
                             "orchestrion.usage.input_tokens": event.input_tokens,
                             "orchestrion.usage.output_tokens": event.output_tokens,
                             "orchestrion.wall_time_s": event.wall_time_s})
        if event.status == "failed":
            self._fail(span, run.error_kind or "failed")
        span.end(_ns(event.time))

    # -- tasks -----------------------------------------------------------------------------------

    def _task_started(self, event: TaskStarted) -> None:
        run = self._runs.get(event.run_id)
        if run is None or event.task_id is None:
            return
        attributes: dict[str, AttributeValue] = {"orchestrion.run.id": event.run_id,
                                                 "orchestrion.task.id": event.task_id}
        if event.model is not None:
            attributes["orchestrion.task.model"] = event.model
        run.tasks[event.task_id] = self._tracer.start_span(
            f"orchestrion.task {event.task_id}", self._in_context(run.span), attributes=attributes,
            start_time=_ns(event.time))
        _CURRENT_TASK.set((event.run_id, event.task_id))

    def _task_finished(self, event: TaskFinished) -> None:
        span = self._end_task(event)
        if span is None:
            return
        attributes: dict[str, AttributeValue] = {
            "orchestrion.task.status": "succeeded", "orchestrion.task.attempts": event.attempt or 0,
            "orchestrion.usage.input_tokens": event.input_tokens,
            "orchestrion.usage.output_tokens": event.output_tokens, "orchestrion.cost_usd": event.cost_usd}
        if event.model is not None:
            attributes["orchestrion.task.model"] = event.model
        span.set_attributes(attributes)
        span.end(_ns(event.time))

    def _task_failed(self, event: TaskFailed) -> None:
        run = self._runs.get(event.run_id)
        if run is None or event.task_id is None:
            return
        span = self._end_task(event) or self._tracer.start_span(  # failed before it started: a span of no length
            f"orchestrion.task {event.task_id}", self._in_context(run.span),
            attributes={"orchestrion.run.id": event.run_id, "orchestrion.task.id": event.task_id},
            start_time=_ns(event.time))
        span.set_attributes({"orchestrion.task.status": "failed", "orchestrion.task.critical": event.critical,
                             "orchestrion.task.attempts": event.attempt or 0})
        self._fail(span, event.error_kind)
        span.end(_ns(event.time))
        if event.critical and run.error_kind is None:
            run.error_kind = event.error_kind

    def _end_task(self, event: Event) -> Span | None:
        """The task's open span, no longer open; None if it has none."""
        run = self._runs.get(event.run_id)
        if run is None or event.task_id is None:
            return None
        if _CURRENT_TASK.get() == (event.run_id, event.task_id):
            _CURRENT_TASK.set(None)
        return run.tasks.pop(event.task_id, None)

    def _task_skipped(self, event: TaskSkipped) -> None:
        run = self._runs.get(event.run_id)
        if run is not None and event.task_id is not None:
            run.span.add_event("orchestrion.task_skipped", {"orchestrion.task.id": event.task_id,
                                                           "orchestrion.skip_reason": event.reason}, _ns(event.time))

    # -- model calls -----------------------------------------------------------------------------

    def _model_called(self, event: ModelCalled) -> None:
        parent = self._parent_of(event)  # a call outside a run (engine.plan): under the caller's span, if any
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat", "gen_ai.system": self._system(event.model),
            "gen_ai.provider.name": self._system(event.model),  # the conventions' newer name for it
            "gen_ai.request.model": event.model,
            "gen_ai.usage.input_tokens": event.input_tokens, "gen_ai.usage.output_tokens": event.output_tokens,
            "orchestrion.cost_usd": event.cost_usd, "orchestrion.outcome": event.outcome,
            "orchestrion.run.id": event.run_id, "orchestrion.attempt": event.attempt or 0}
        if event.task_id is not None:
            attributes["orchestrion.task.id"] = event.task_id
        if event.provider_model is not None:
            attributes["gen_ai.response.model"] = event.provider_model
        if event.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [event.finish_reason]
        span = self._tracer.start_span(
            f"chat {event.model}", self._in_context(parent) if parent is not None else None, self._client,
            attributes, start_time=_ns(event.started_at))
        if event.outcome != "ok":
            self._fail(span, event.outcome)
        span.end(_ns(event.started_at + event.latency_s))

    def _system(self, alias: str) -> str:
        return self._systems.get(alias, self._default_system)

    def _fail(self, span: Span, kind: str) -> None:
        """Error status with the error's kind, never its message (it may quote a model's answer)."""
        span.set_attribute("error.type", kind)
        span.set_status(self._status(self._error, kind))

    # -- decisions, as span events ---------------------------------------------------------------

    def _retrying(self, event: TaskRetrying) -> None:
        attributes: dict[str, AttributeValue] = {"error.type": event.error_kind, "orchestrion.retry.delay_s":
                                                 event.delay_s, "orchestrion.attempt": event.attempt or 0}
        if event.model is not None:
            attributes["gen_ai.request.model"] = event.model
        self._note(event, attributes)

    def _fell_back(self, event: TaskFellBack) -> None:
        self._note(event, {"orchestrion.fallback.from_model": event.from_model,
                           "orchestrion.fallback.to_model": event.to_model, "error.type": event.error_kind})

    def _gate_applied(self, event: GateApplied) -> None:
        self._note(event, {"gen_ai.request.model": event.model, "orchestrion.gate.action": event.action,
                           "orchestrion.gate.tokens": event.tokens, "orchestrion.gate.reason": event.reason})

    def _cache_hit(self, event: CacheHit) -> None:
        self._note(event, {"gen_ai.request.model": event.model, "orchestrion.cache.saved_cost_usd":
                           event.saved_cost_usd})

    def _breaker_changed(self, event: BreakerStateChanged) -> None:
        self._note(event, {"orchestrion.breaker.model": event.model, "orchestrion.breaker.old_state":
                           event.old_state, "orchestrion.breaker.new_state": event.new_state})

    def _plan_created(self, event: PlanCreated) -> None:
        self._note(event, {"orchestrion.plan.attempts": event.attempts})  # not the workflow: the model wrote it

    def _note(self, event: Event, attributes: Mapping[str, AttributeValue]) -> None:
        """A span event on the event's task span, or its run's span without one."""
        span = self._parent_of(event)
        if span is not None:
            span.add_event(f"orchestrion.{event.type}", attributes, _ns(event.time))

    def _parent_of(self, event: Event) -> Span | None:
        run = self._runs.get(event.run_id)
        if run is None:
            return None
        task = run.tasks.get(event.task_id) if event.task_id is not None else None
        return task if task is not None else run.span


def gen_ai_systems(config: EngineConfig | None) -> tuple[dict[str, str], str]:
    """Each configured alias's ``gen_ai.system`` (from its provider's kind), and the default provider's."""
    if config is None:
        return {}, UNKNOWN_SYSTEM

    def system(provider: str | None) -> str:
        settings = config.providers.get(provider) if provider is not None else None
        return GEN_AI_SYSTEMS.get(settings.kind, UNKNOWN_SYSTEM) if settings is not None else UNKNOWN_SYSTEM

    return {alias: system(model.provider) for alias, model in config.models.items()}, system(config.default_provider)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
