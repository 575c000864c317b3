"""Events: the typed schema, JSON both ways, streaming, slow subscribers; structured output; logging."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine import Engine, Event, ModelCalled, ModelError, event_from_dict
from engine.events import EVENT_TYPES
from engine.testing import FakeModel, capture_events, example_for_schema

pytestmark = pytest.mark.anyio

FLOW: dict[str, Any] = {"dsl": "orchestrion/v1", "name": "events", "defaults": {"model": "fast_ai", "retry": None},
                        "stages": [{"type": "inline", "tasks": [{"id": "a", "prompt": "hello there"},
                                                                 {"id": "b", "prompt": "{{ a }}", "when": "false"}]}]}


async def test_event_sequence_of_a_run() -> None:
    engine = Engine(models=FakeModel())
    with capture_events(engine) as events:
        result = await engine.run(FLOW)
    kinds = [event.type for event in events if event.type != "token_delta"]
    assert kinds == ["run_started", "task_started", "model_called", "task_finished", "task_skipped", "run_finished"]
    assert {event.run_id for event in events} == {result.run_id}
    assert all(event.time > 0 for event in events)
    finished = next(event for event in events if event.type == "task_finished")
    assert (finished.task_id, finished.attempt, finished.model) == ("a", 1, "fast_ai")
    (called,) = [event for event in events if isinstance(event, ModelCalled)]
    assert (called.task_id, called.attempt, called.model, called.provider_model, called.outcome,
            called.finish_reason) == ("a", 1, "fast_ai", "fake/fast_ai", "ok", "stop")
    assert (called.input_tokens, called.output_tokens) == (result.tasks["a"].input_tokens,
                                                           result.tasks["a"].output_tokens)
    assert called.started_at > 0 and called.latency_s >= 0
    assert called.started_at + called.latency_s <= called.time + 1e-6 and called.time <= finished.time  # an ulp
    deltas = "".join(event.text for event in events if event.type == "token_delta")
    assert deltas == "[fast_ai] hello there"


async def test_every_event_type_round_trips_through_json() -> None:
    engine = Engine(models=FakeModel({"fast_ai": [ModelError("rate_limit", "slow")], "medium_ai": "ok"}),
                    sleep=lambda seconds: anyio.lowlevel.checkpoint())
    flow = {**FLOW, "stages": [{"type": "inline", "tasks": [
        {"id": "a", "prompt": "x", "model": ["fast_ai", "medium_ai"], "retry": {"max_attempts": 2}},
        {"id": "b", "prompt": "y", "when": "false"}]}]}
    with capture_events(engine) as events:
        await engine.run(flow)
    seen = {event.type for event in events}
    assert {"task_retrying", "task_fell_back", "task_skipped", "token_delta"} <= seen
    for event in events:
        assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event
    assert set(EVENT_TYPES) >= seen


async def test_stream_yields_events_live_and_then_the_result() -> None:
    engine = Engine(models=FakeModel(latency=0.01))
    types = []
    async with engine.stream(FLOW) as events:
        async for event in events:
            types.append(event.type)
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert events.result is not None and events.result.status == "succeeded"


async def test_a_slow_subscriber_is_told_it_dropped_events_and_never_stalls_the_run() -> None:
    tasks = [{"id": f"t{i}", "prompt": "x" * 64} for i in range(50)]
    flow = {**FLOW, "stages": [{"type": "linear", "tasks": tasks}]}
    engine = Engine(models=FakeModel())
    with capture_events(engine) as everything:
        async with engine.stream(flow, buffer=4) as events:
            await anyio.sleep(0.2)  # the run finishes while nobody reads
            received: list[Event] = [event async for event in events]
    assert events.result is not None and events.result.status == "succeeded"
    dropped = [event for event in received if event.type == "events_dropped"]
    assert len(received) < len(everything)
    assert sum(event.count for event in dropped) + len(received) - len(dropped) == len(everything)


async def test_leaving_the_stream_early_cancels_the_run() -> None:
    fake = FakeModel(latency=10)
    engine = Engine(models=fake)
    with anyio.fail_after(5):
        async with engine.stream(FLOW) as events:
            async for event in events:
                if event.type == "task_started":
                    break
    assert events.result is None and len(fake.calls) == 1


async def test_invalid_structured_output_is_repaired_with_the_error_fed_back() -> None:
    fake = FakeModel({"fast_ai": ["not json", '{"score": "high"}', '```json\n{"score": 7}\n```']})
    schema = {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}}
    rate = {"id": "a", "prompt": "rate", "output": {"schema": schema}}
    flow = {**FLOW, "stages": [{"type": "inline", "tasks": [rate]}]}
    engine = Engine(models=fake)
    with capture_events(engine) as events:
        result = await engine.run(flow)
    assert result.tasks["a"].output == {"score": 7} and result.tasks["a"].attempts == 3
    repair = fake.calls[2].messages
    assert [m.role for m in repair] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "at score: 'high' is not of type 'integer'" in repair[-1].content
    assert "JSON Schema" in repair[0].content and fake.calls[0].output_schema == schema
    assert [e.error_kind for e in events if e.type == "task_retrying"] == ["invalid_output", "invalid_output"]


async def test_output_still_invalid_after_repairs_fails_the_task() -> None:
    flow = {**FLOW, "stages": [{"type": "inline", "tasks": [
        {"id": "a", "prompt": "rate", "output": {"schema": {"type": "object"}}}]}]}
    result = await Engine(models=FakeModel({"fast_ai": "never json"})).run(flow)
    assert result.status == "failed" and result.tasks["a"].error_kind == "invalid_output"


async def test_a_failure_is_logged_with_prefixed_keys(caplog: pytest.LogCaptureFixture) -> None:
    flow = {**FLOW, "stages": [{"type": "inline", "tasks": [{"id": "a", "prompt": "x"}]}]}
    with caplog.at_level(logging.WARNING, logger="orchestrion"):
        result = await Engine(models=FakeModel({"fast_ai": ModelError("auth", "no key")})).run(flow)
    (record,) = [r for r in caplog.records if r.name == "orchestrion"]
    assert "orchestrion_task_id" in record.getMessage() and result.run_id in record.getMessage()
    assert "no key" not in record.getMessage()  # messages may hold secrets: only kinds are logged


def test_example_for_schema_satisfies_the_schema() -> None:
    from jsonschema import Draft202012Validator

    schema = {"type": "object", "required": ["a", "b", "c", "d"], "properties": {
        "a": {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 2},
        "b": {"enum": ["x", "y"]}, "c": {"type": "string", "minLength": 3}, "d": {"type": "number",
                                                                                   "exclusiveMinimum": 1}}}
    value = example_for_schema(schema)
    assert Draft202012Validator(schema).is_valid(value), value
