"""OpenTelemetry traces: a run is a tree of spans (run → task → model call) with the GenAI attributes,
the engine's decisions as span events, the events' own times, and no prompt or answer anywhere."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra: pip install 'orchestrion[otel]'")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from engine import Engine, Event, ModelCalled, ModelError, OtelTracing, RunResult
from engine.config import (
    BreakerConfig,
    EngineConfig,
    FakeProviderConfig,
    GateRule,
    HttpProviderConfig,
    ModelConfig,
)
from engine.testing import FakeModel, capture_events
from engine.tracing import gen_ai_systems

pytestmark = pytest.mark.anyio

PROMPT = "PROMPT-TEXT-never-in-a-span"
ANSWER = "ANSWER-TEXT-never-in-a-span"
SECRET_MESSAGE = "MESSAGE-TEXT-never-in-a-span"


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A private provider: the global one is never set."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def traced(engine: Engine, provider: TracerProvider) -> Engine:
    engine.add_listener(OtelTracing(provider))
    return engine


def flow(*tasks: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "traced", "defaults": {"model": "fast_ai", "retry": None, **defaults},
            "stages": [{"type": "linear", "tasks": list(tasks)}]}


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Tree:
    """The finished spans, by name and by parent."""

    def __init__(self, spans: tuple[ReadableSpan, ...]) -> None:
        self.spans = spans
        self.by_id = {span.context.span_id: span for span in spans}

    def named(self, name: str) -> ReadableSpan:
        (span,) = [span for span in self.spans if span.name == name]
        return span

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        return sorted((child for child in self.spans if child.parent is not None
                       and child.parent.span_id == span.context.span_id), key=lambda child: child.start_time or 0)

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id.get(span.parent.span_id) if span.parent is not None else None


def all_text(spans: tuple[ReadableSpan, ...]) -> str:
    """Every name, attribute, status and span event of the spans, as one string."""
    parts = []
    for span in spans:
        parts += [span.name, json.dumps(dict(span.attributes or {})), str(span.status.description)]
        parts += [event.name + json.dumps(dict(event.attributes or {})) for event in span.events]
    return "\n".join(parts)


def assert_nested(tree: Tree) -> None:
    """Every span lies within its parent's time and trace."""
    for span in tree.spans:
        assert span.end_time is not None and span.start_time is not None and span.start_time <= span.end_time
        parent = tree.parent(span)
        if parent is not None:
            assert parent.context.trace_id == span.context.trace_id
            assert parent.start_time is not None and parent.end_time is not None
            assert parent.start_time <= span.start_time and span.end_time <= parent.end_time, (span.name, parent.name)


def events_of(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


async def test_a_run_with_a_retry_and_a_fallback_is_a_tree_of_spans(provider: TracerProvider,
                                                                     exporter: InMemorySpanExporter) -> None:
    fake = FakeModel({"fast_ai": [ModelError("rate_limit", SECRET_MESSAGE), ANSWER],
                      "medium_ai": ModelError("auth", SECRET_MESSAGE), "thinking_ai": ANSWER})
    engine = traced(Engine(models=fake, sleep=no_sleep), provider)
    with capture_events(engine) as events:
        result = await engine.run(flow(
            {"id": "a", "prompt": PROMPT, "retry": {"max_attempts": 2}},
            {"id": "b", "prompt": PROMPT, "model": ["medium_ai", "thinking_ai"]},
            {"id": "c", "prompt": PROMPT, "when": "false"}))
    assert result.status == "succeeded"
    tree = Tree(exporter.get_finished_spans())
    assert_nested(tree)

    run = tree.named("orchestrion.run traced")
    assert run.parent is None and run.status.status_code is StatusCode.UNSET
    assert dict(run.attributes or {}) == {
        "orchestrion.run.id": result.run_id, "orchestrion.workflow": "traced", "orchestrion.run.nodes": 3,
        "orchestrion.run.status": "succeeded", "orchestrion.cost_usd": result.totals.cost_usd,
        "orchestrion.usage.input_tokens": result.totals.input_tokens,
        "orchestrion.usage.output_tokens": result.totals.output_tokens,
        "orchestrion.wall_time_s": result.totals.wall_time_s}
    assert sorted(span.name for span in tree.children(run)) == ["orchestrion.task a", "orchestrion.task b"]
    assert events_of(run, "orchestrion.task_skipped") == [
        {"orchestrion.task.id": "c", "orchestrion.skip_reason": "`when` is false: false"}]

    a, b = tree.named("orchestrion.task a"), tree.named("orchestrion.task b")
    assert [(span.name, span.kind, span.attributes["orchestrion.outcome"]) for span in tree.children(a)] == [
        ("chat fast_ai", SpanKind.CLIENT, "rate_limit"), ("chat fast_ai", SpanKind.CLIENT, "ok")]
    assert [(span.name, span.attributes["orchestrion.outcome"]) for span in tree.children(b)] == [
        ("chat medium_ai", "auth"), ("chat thinking_ai", "ok")]
    (retry,) = events_of(a, "orchestrion.task_retrying")
    assert (retry["error.type"], retry["gen_ai.request.model"], retry["orchestrion.attempt"]) == (
        "rate_limit", "fast_ai", 1)
    assert events_of(b, "orchestrion.task_fell_back") == [{
        "orchestrion.fallback.from_model": "medium_ai", "orchestrion.fallback.to_model": "thinking_ai",
        "error.type": "auth"}]
    assert dict(a.attributes or {}) == {
        "orchestrion.run.id": result.run_id, "orchestrion.task.id": "a", "orchestrion.task.model": "fast_ai",
        "orchestrion.task.status": "succeeded", "orchestrion.task.attempts": 2,
        "orchestrion.usage.input_tokens": result.tasks["a"].input_tokens,
        "orchestrion.usage.output_tokens": result.tasks["a"].output_tokens,
        "orchestrion.cost_usd": result.tasks["a"].cost_usd}

    failed, answered = tree.children(a)
    assert failed.status.status_code is StatusCode.ERROR and failed.status.description == "rate_limit"
    assert failed.attributes is not None and failed.attributes["error.type"] == "rate_limit"
    assert "gen_ai.response.model" not in failed.attributes
    assert answered.status.status_code is StatusCode.UNSET
    assert dict(answered.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.system": "orchestrion", "gen_ai.provider.name": "orchestrion",
        "gen_ai.request.model": "fast_ai", "gen_ai.response.model": "fake/fast_ai",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": result.tasks["a"].input_tokens,
        "gen_ai.usage.output_tokens": result.tasks["a"].output_tokens,
        "orchestrion.cost_usd": 0.0, "orchestrion.outcome": "ok", "orchestrion.run.id": result.run_id,
        "orchestrion.task.id": "a", "orchestrion.attempt": 2}
    for task in (a, b):  # the calls' tokens add up to the task's, and to the run's
        calls = tree.children(task)
        task_id = task.name.split()[-1]
        assert sum(call.attributes["gen_ai.usage.input_tokens"] for call in calls) == result.tasks[task_id].input_tokens
        assert sum(call.attributes["gen_ai.usage.output_tokens"] for call in calls) == (
            result.tasks[task_id].output_tokens)

    assert_times_are_the_events(tree, events, result)
    text = all_text(tree.spans)
    assert PROMPT not in text and ANSWER not in text and SECRET_MESSAGE not in text


def assert_times_are_the_events(tree: Tree, events: list[Event], result: RunResult) -> None:
    by_type = {(event.type, event.task_id): event for event in events if event.type != "model_called"}
    run = tree.named("orchestrion.run traced")
    assert (run.start_time, run.end_time) == (ns(by_type["run_started", None].time),
                                              ns(by_type["run_finished", None].time))
    for task_id in ("a", "b"):
        span = tree.named(f"orchestrion.task {task_id}")
        assert (span.start_time, span.end_time) == (ns(by_type["task_started", task_id].time),
                                                    ns(by_type["task_finished", task_id].time))
    calls = sorted((event for event in events if isinstance(event, ModelCalled)), key=lambda call: call.started_at)
    spans = sorted((span for span in tree.spans if span.name.startswith("chat ")), key=lambda s: s.start_time or 0)
    assert [(span.start_time, span.end_time) for span in spans] == [
        (ns(call.started_at), ns(call.started_at + call.latency_s)) for call in calls]
    (retrying,) = tree.named("orchestrion.task a").events
    assert retrying.timestamp == ns(by_type["task_retrying", "a"].time)


async def test_a_cache_hit_is_a_span_event_and_no_model_call(provider: TracerProvider,
                                                             exporter: InMemorySpanExporter) -> None:
    engine = traced(Engine(models=FakeModel()), provider)
    first = await engine.run(flow({"id": "a", "prompt": PROMPT}, cache=True))
    second = await engine.run(flow({"id": "a", "prompt": PROMPT}, cache=True))
    first_run, second_run = (next(span for span in exporter.get_finished_spans()
                                  if span.attributes and span.attributes.get("orchestrion.run.id") == result.run_id
                                  and span.name.startswith("orchestrion.run")) for result in (first, second))
    assert first_run.context.trace_id != second_run.context.trace_id  # a trace per run
    tree = Tree(exporter.get_finished_spans())
    (task,) = tree.children(second_run)
    assert tree.children(task) == []
    assert events_of(task, "orchestrion.cache_hit") == [
        {"gen_ai.request.model": "fast_ai", "orchestrion.cache.saved_cost_usd": first.totals.cost_usd}]
    (first_task,) = tree.children(first_run)
    assert [span.name for span in tree.children(first_task)] == ["chat fast_ai"]


async def test_a_failed_task_fails_its_span_and_the_run_with_only_the_error_kind(
        provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    engine = traced(Engine(models=FakeModel({"fast_ai": ModelError("auth", SECRET_MESSAGE)})), provider)
    inline = {**flow(), "stages": [{"type": "inline", "tasks": [{"id": "a", "prompt": PROMPT},
                                                                {"id": "later", "prompt": "{{ a }}"}]}]}
    result = await engine.run(inline)
    assert result.status == "failed"
    tree = Tree(exporter.get_finished_spans())
    assert_nested(tree)
    run, task, call = (tree.named(name) for name in ("orchestrion.run traced", "orchestrion.task a", "chat fast_ai"))
    for span in (run, task, call):
        assert span.status.status_code is StatusCode.ERROR and span.status.description == "auth", span.name
        assert span.attributes is not None and span.attributes["error.type"] == "auth"
    assert task.attributes is not None and task.attributes["orchestrion.task.status"] == "failed"
    assert task.attributes["orchestrion.task.critical"] is True
    assert run.attributes is not None and run.attributes["orchestrion.run.status"] == "failed"
    assert SECRET_MESSAGE not in all_text(tree.spans) and PROMPT not in all_text(tree.spans)


async def test_breaker_and_gate_decisions_are_events_on_the_task_span(provider: TracerProvider,
                                                                     exporter: InMemorySpanExporter) -> None:
    config = EngineConfig(providers={"dry": FakeProviderConfig(kind="fake")}, default_provider="dry",
                          breaker=BreakerConfig(failures=1), gates=[GateRule(above=100_000, deny=True)])
    fake = FakeModel({"fast_ai": ModelError("server_error", SECRET_MESSAGE), "thinking_ai": ANSWER})
    engine = traced(Engine(config, models=fake, sleep=no_sleep), provider)
    result = await engine.run(flow({"id": "a", "prompt": PROMPT, "model": ["fast_ai", "thinking_ai"]}))
    assert result.status == "succeeded"
    tree = Tree(exporter.get_finished_spans())
    task = tree.named("orchestrion.task a")
    gates = events_of(task, "orchestrion.gate_applied")
    assert gates[0]["orchestrion.gate.action"] == "allow" and gates[0]["gen_ai.request.model"] == "fast_ai"
    assert events_of(task, "orchestrion.breaker_state_changed")[0] == {
        "orchestrion.breaker.model": "fast_ai", "orchestrion.breaker.old_state": "closed",
        "orchestrion.breaker.new_state": "open"}
    assert [(span.name, span.attributes["orchestrion.outcome"]) for span in tree.children(task)] == [
        ("chat fast_ai", "server_error"), ("chat thinking_ai", "ok")]
    assert [event.name for event in task.events] == [
        "orchestrion.gate_applied", "orchestrion.breaker_state_changed", "orchestrion.task_fell_back",
        "orchestrion.gate_applied"]
    assert SECRET_MESSAGE not in all_text(tree.spans)


async def test_a_task_cancelled_by_a_failure_ends_with_its_run(provider: TracerProvider,
                                                               exporter: InMemorySpanExporter) -> None:
    fake = FakeModel({"fast_ai": ModelError("auth", SECRET_MESSAGE)}, latency={"medium_ai": 10})
    engine = traced(Engine(models=fake), provider)
    with anyio.fail_after(5):
        result = await engine.run(flow({"id": "a", "prompt": PROMPT}, {"id": "slow", "prompt": PROMPT,
                                                                       "model": "medium_ai"}))
    assert result.status == "failed" and result.tasks["slow"].status == "cancelled"
    tree = Tree(exporter.get_finished_spans())
    assert_nested(tree)
    run, slow = tree.named("orchestrion.run traced"), tree.named("orchestrion.task slow")
    assert slow.end_time == run.end_time and slow.attributes is not None
    assert slow.attributes["orchestrion.task.status"] == "cancelled"
    (call,) = tree.children(slow)
    assert call.attributes is not None and call.attributes["orchestrion.outcome"] == "cancelled"


async def test_a_nested_run_is_under_the_task_that_ran_it(tmp_path: Path, provider: TracerProvider,
                                                          exporter: InMemorySpanExporter) -> None:
    child = {"dsl": "orchestrion/v1", "name": "child", "inputs": {"topic": {"type": "string"}},
             "defaults": {"model": "fast_ai"}, "stages": [{"type": "inline", "tasks": [
                 {"id": "answer", "prompt": "about {{ topic }}"}]}]}
    (tmp_path / "child.json").write_text(json.dumps(child), encoding="utf-8")
    parent = tmp_path / "parent.json"  # two at once: each nested run under its own task
    parent.write_text(json.dumps(flow({"id": "one", "workflow": "child.json", "with": {"topic": "tea"}},
                                      {"id": "two", "workflow": "child.json", "with": {"topic": "cake"}})),
                      encoding="utf-8")
    engine = traced(Engine(models=FakeModel(latency={"fast_ai": 0.01})), provider)
    result = await engine.run(parent)
    assert result.status == "succeeded"
    tree = Tree(exporter.get_finished_spans())
    assert_nested(tree)
    run = tree.named("orchestrion.run traced")
    assert {span.context.trace_id for span in tree.spans} == {run.context.trace_id}
    for task_id in ("one", "two"):
        (nested,) = tree.children(tree.named(f"orchestrion.task {task_id}"))
        assert nested.name == "orchestrion.run child"
        (answer,) = tree.children(nested)
        (call,) = tree.children(answer)
        assert call.name == "chat fast_ai" and call.attributes is not None
        assert call.attributes["orchestrion.run.id"] == nested.attributes["orchestrion.run.id"]  # type: ignore[index]
        assert call.attributes["orchestrion.run.id"] != result.run_id
    assert sum(span.attributes["gen_ai.usage.input_tokens"] for span in tree.spans  # type: ignore[index,misc]
               if span.name.startswith("chat ")) == result.totals.input_tokens


async def test_a_run_is_under_the_callers_current_span(provider: TracerProvider,
                                                       exporter: InMemorySpanExporter) -> None:
    engine = traced(Engine(models=FakeModel()), provider)
    with provider.get_tracer("app").start_as_current_span("request") as request:
        await engine.run(flow({"id": "a", "prompt": PROMPT}))
    tree = Tree(exporter.get_finished_spans())
    run = tree.named("orchestrion.run traced")
    assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id


def test_of_a_run_it_did_not_see_start_only_the_model_calls_are_traced(provider: TracerProvider,
                                                                       exporter: InMemorySpanExporter) -> None:
    """engine.plan's calls have no run: each is a span of its own (under the caller's, if any)."""
    from engine.events import GateApplied, TaskFinished, TokenDelta

    tracing = OtelTracing(provider)
    tracing(TokenDelta("plan-1", 1.0, task_id="plan", text=PROMPT))
    tracing(GateApplied("plan-1", 1.0, task_id="plan", model="fast_ai", tokens=3, action="allow", reason="fits"))
    tracing(TaskFinished("plan-1", 1.0, task_id="plan", model=None, input_tokens=1, output_tokens=1, cost_usd=0.0,
                         latency_s=0.0))
    assert exporter.get_finished_spans() == ()
    tracing(ModelCalled("plan-1", 2.0, task_id="plan", attempt=1, model="fast_ai", provider_model=None, outcome="ok",
                        started_at=1.5, latency_s=0.5, input_tokens=3, output_tokens=4, cost_usd=0.0,
                        finish_reason=None))
    (span,) = exporter.get_finished_spans()
    assert (span.name, span.parent, span.start_time, span.end_time) == ("chat fast_ai", None, ns(1.5), ns(2.0))
    assert span.attributes is not None and "gen_ai.response.finish_reasons" not in span.attributes


def test_gen_ai_system_comes_from_the_provider_kind() -> None:
    config = EngineConfig(providers={"oai": HttpProviderConfig(kind="openai"), "dry": FakeProviderConfig(kind="fake"),
                                     "claude": HttpProviderConfig(kind="anthropic")},
                          models={"fast_ai": ModelConfig(provider="oai"), "echo": ModelConfig(provider="dry")},
                          default_provider="claude")
    assert gen_ai_systems(config) == ({"fast_ai": "openai", "echo": "orchestrion"}, "anthropic")
    assert gen_ai_systems(None) == ({}, "orchestrion")


def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"pip install 'orchestrion\[otel\]'"):
        OtelTracing()
