"""The response cache: hits cost nothing and call nothing, the key covers what decides the answer,
entries expire, only valid answers are kept, and a real HTTP server sees no second request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from engine import CacheHit, Engine, ModelError, ModelResponse, Usage, event_from_dict
from engine.assembly import clients_for
from engine.compiler.plan import CacheSpec
from engine.config import EngineConfig, FakeProviderConfig, GateRule, HttpProviderConfig, ModelConfig
from engine.events import Emitter, Event
from engine.model.client import Message, ModelRequest
from engine.model.prices import Price
from engine.resilience.budget import Budget
from engine.resilience.cache import clear_cache
from engine.resilience.call import Call, RunContext
from engine.resilience.pipeline import PipelineParts, build_pipeline
from engine.resilience.provider import Clients
from engine.runtime.results import TaskResult
from engine.store.memory import MemoryStore
from engine.testing import FakeModel, capture_events
from tests.support.fault_server import FaultServer, running_fault_server

pytestmark = pytest.mark.anyio

PRICES = {"fast_ai": Price(input=1.0, output=2.0)}
SCHEMA = {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}}


def flow(*tasks: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "cached",
            "defaults": {"model": "fast_ai", "retry": None, "cache": True, **defaults},
            "stages": [{"type": "linear", "tasks": list(tasks)}]}


def ask(prompt: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"id": "a", "prompt": prompt, **fields}


# -- through the engine ---------------------------------------------------------------------------

async def test_the_second_identical_run_calls_nothing_costs_nothing_and_says_what_it_saved() -> None:
    fake = FakeModel()
    engine = Engine(models=fake, prices=PRICES)
    first = await engine.run(flow(ask()))
    with capture_events(engine) as events:
        second = await engine.run(flow(ask()))
    assert len(fake.calls) == 1
    assert second.outputs == first.outputs and second.tasks["a"].output == "[fast_ai] hello"
    assert first.totals.cost_usd > 0
    assert (second.totals.cost_usd, second.totals.input_tokens, second.totals.output_tokens) == (0.0, 0, 0)
    task = second.tasks["a"]
    assert (task.status, task.attempts, task.model, task.cost_usd) == ("succeeded", 0, "fast_ai", 0.0)
    (hit,) = [event for event in events if isinstance(event, CacheHit)]
    assert (hit.task_id, hit.model) == ("a", "fast_ai")
    assert hit.saved_cost_usd == pytest.approx(first.totals.cost_usd)


async def test_a_hit_on_a_streamed_call_is_one_delta_of_the_whole_text() -> None:
    engine = Engine(models=FakeModel(chunk_size=2))
    await engine.run(flow(ask("a long enough prompt")))
    with capture_events(engine) as events:
        await engine.run(flow(ask("a long enough prompt")))
    assert [event.text for event in events if event.type == "token_delta"] == ["[fast_ai] a long enough prompt"]


@pytest.mark.parametrize("change", [
    {"prompt": "goodbye"}, {"temperature": 0.3}, {"max_tokens": 50}, {"system": "Be brief."},
    {"output": {"schema": SCHEMA}}, {"model": "medium_ai"},
], ids=["prompt", "temperature", "max_tokens", "system", "output-schema", "model"])
async def test_a_request_that_differs_in_anything_that_decides_the_answer_misses(change: dict[str, Any]) -> None:
    fake = FakeModel()
    engine = Engine(models=fake)
    await engine.run(flow(ask(temperature=0.7)))
    await engine.run(flow({**ask(temperature=0.7), **change}))
    assert len(fake.calls) == 2


async def test_a_structured_answer_is_kept_once_valid_under_the_first_request() -> None:
    fake = FakeModel({"fast_ai": ["not json", '{"score": 7}']})
    store = MemoryStore()
    engine = Engine(models=fake, prices=PRICES, store=store)
    first = await engine.run(flow(ask(output={"schema": SCHEMA})))
    with capture_events(engine) as events:
        second = await engine.run(flow(ask(output={"schema": SCHEMA})))
    assert len(fake.calls) == 2  # the first request and its repair, in the first run only
    assert first.tasks["a"].output == second.tasks["a"].output == {"score": 7}
    assert len(store.cache) == 1  # the repair request is not a key of its own
    (hit,) = [event for event in events if isinstance(event, CacheHit)]
    assert hit.saved_cost_usd == pytest.approx(first.totals.cost_usd)  # both rounds were saved


async def test_cache_false_on_a_task_overrides_the_defaults() -> None:
    fake = FakeModel()
    engine = Engine(models=fake)
    workflow = flow(ask(), {"id": "b", "prompt": "other", "cache": False})
    await engine.run(workflow)
    await engine.run(workflow)
    assert sorted(call.prompt for call in fake.calls) == ["hello", "other", "other"]


async def test_without_cache_nothing_is_looked_up_or_kept() -> None:
    fake = FakeModel()
    store = MemoryStore()
    engine = Engine(models=fake, store=store)
    workflow = flow(ask(), cache=None)
    await engine.run(workflow)
    await engine.run(workflow)
    assert len(fake.calls) == 2 and store.cache == {}


async def test_failures_are_not_kept() -> None:
    fake = FakeModel({"fast_ai": [ModelError("server_error", "boom"), "fine"]})
    engine = Engine(models=fake)
    failed = await engine.run(flow(ask()))
    assert failed.status == "failed"
    assert (await engine.run(flow(ask()))).tasks["a"].output == "fine"  # asked again, not the error
    assert (await engine.run(flow(ask()))).tasks["a"].output == "fine"
    assert len(fake.calls) == 2


async def test_an_answer_after_retries_is_kept_and_a_hit_spends_no_attempt() -> None:
    async def no_wait(seconds: float) -> None:
        return None

    fake = FakeModel({"fast_ai": [ModelError("rate_limit", "slow down"), "after a retry"]})
    engine = Engine(models=fake, sleep=no_wait)
    retried = await engine.run(flow(ask(), retry={"max_attempts": 3}))
    hit = await engine.run(flow(ask(), retry={"max_attempts": 3}))
    assert (retried.tasks["a"].attempts, hit.tasks["a"].attempts) == (2, 0)
    assert hit.tasks["a"].output == "after a retry" and len(fake.calls) == 2


async def test_an_answer_cut_short_by_a_bound_the_request_did_not_set_is_not_kept() -> None:
    fake = FakeModel({"fast_ai": ModelResponse("cut sh", Usage(1, 2), finish_reason="length")})
    engine = Engine(models=fake)
    await engine.run(flow(ask()))
    await engine.run(flow(ask()))
    assert len(fake.calls) == 2
    await engine.run(flow(ask(max_tokens=2)))  # asked for at most 2 tokens: that is its answer
    await engine.run(flow(ask(max_tokens=2)))
    assert len(fake.calls) == 3


async def test_a_hit_spends_none_of_the_budget() -> None:
    fake = FakeModel()
    engine = Engine(models=fake, prices={"fast_ai": Price(input=1_000.0, output=1_000.0)})
    await engine.run(flow(ask()))
    broke = {**flow(ask()), "limits": {"max_cost_usd": 0.0}}  # any call would be refused
    result = await engine.run(broke)
    assert result.status == "succeeded", result.error
    assert len(fake.calls) == 1


async def test_each_model_of_a_fallback_chain_has_its_own_entries() -> None:
    fake = FakeModel({"fast_ai": ModelError("not_found", "gone")})
    engine = Engine(models=fake)
    for _ in range(2):
        result = await engine.run(flow(ask(model=["fast_ai", "medium_ai"])))
        assert result.tasks["a"].output == "[medium_ai] hello"
    assert [call.model for call in fake.calls] == ["fast_ai", "medium_ai", "fast_ai"]  # the first is asked first


async def test_clear_cache_empties_the_store_and_says_how_many() -> None:
    fake = FakeModel()
    store = MemoryStore()
    engine = Engine(models=fake, store=store)
    await engine.run(flow(ask("one"), {"id": "b", "prompt": "two"}))
    assert await clear_cache(store) == 2
    await engine.run(flow(ask("one"), {"id": "b", "prompt": "two"}))
    assert len(fake.calls) == 4


async def test_a_cache_hit_event_round_trips_through_json() -> None:
    engine = Engine(models=FakeModel())
    await engine.run(flow(ask()))
    with capture_events(engine) as events:
        await engine.run(flow(ask()))
    hits = [event for event in events if event.type == "cache_hit"]
    assert hits and all(event_from_dict(json.loads(json.dumps(event.to_dict()))) == event for event in hits)


def gated_config(*rules: GateRule, answers: dict[str, Any] | None = None) -> EngineConfig:
    return EngineConfig(providers={"dry": FakeProviderConfig(kind="fake", answers=answers or {})},
                        models={"fast_ai": ModelConfig(provider="dry", model="m", context_window=10_000)},
                        gates=list(rules))


async def test_the_gate_comes_first_once_per_request_and_its_denial_stands_over_a_kept_answer() -> None:
    store = MemoryStore()
    engine = Engine(gated_config(answers={"fast_ai": ["not json", '{"score": 1}']}), store=store)
    with capture_events(engine) as events:
        await engine.run(flow(ask(output={"schema": SCHEMA})))  # a miss: the request, then its repair
        await engine.run(flow(ask(output={"schema": SCHEMA})))  # a hit
    assert [event.type for event in events if event.type in ("gate_applied", "cache_hit")] == [
        "gate_applied", "gate_applied", "gate_applied", "cache_hit"]
    denying = Engine(gated_config(GateRule(above=1, deny=True)), store=store)
    denied = await denying.run(flow(ask(output={"schema": SCHEMA})))
    assert denied.status == "failed" and denied.tasks["a"].error_kind == "denied"


# -- the key and the stage alone ------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cached_call(events: list[Event] | None = None, ttl: float | None = None) -> Call:
    emit = Emitter("run", events.append if events is not None else None)
    return Call("task", RunContext(emit, Budget(None)), TaskResult("task"), cache=CacheSpec(ttl))


REQUEST = ModelRequest("fast_ai", (Message("user", "hello"),))


async def test_an_entry_expires_after_its_ttl() -> None:
    fake, clock = FakeModel(), Clock()
    pipeline = build_pipeline(PipelineParts(Clients({}, default=fake), clock=clock))
    for advance in (0.0, 59.0, 2.0, 30.0):  # kept at 0 for 60 s; asked again at 61; kept again till 121
        clock.now += advance
        assert await pipeline.answer(REQUEST, cached_call(ttl=60)) == "[fast_ai] hello"
    assert len(fake.calls) == 2


async def test_an_entry_without_ttl_is_kept_until_cleared() -> None:
    fake, clock, store = FakeModel(), Clock(), MemoryStore()
    pipeline = build_pipeline(PipelineParts(Clients({}, default=fake), store=store, clock=clock))
    await pipeline.answer(REQUEST, cached_call())
    clock.now += 10 * 365 * 86400
    await pipeline.answer(REQUEST, cached_call())
    assert len(fake.calls) == 1 and next(iter(store.cache.values())).expires_at is None


def key_of(targets: dict[str, str], request: ModelRequest = REQUEST) -> str:
    pipeline = build_pipeline(PipelineParts(Clients({}, default=FakeModel(), targets=targets)))
    return pipeline.cache.key(request)


def test_the_key_names_the_model_behind_the_alias_not_the_alias() -> None:
    same = {"fast_ai": "openai https://x/v1 gpt-4o", "other": "openai https://x/v1 gpt-4o"}
    assert key_of(same) == key_of(same, ModelRequest("other", REQUEST.messages))
    assert key_of(same) != key_of({"fast_ai": "openai https://x/v1 gpt-4o-mini"})
    schema_a = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}}
    schema_b = {"properties": {"b": {"type": "number"}, "a": {"type": "string"}}, "type": "object"}
    with_a = ModelRequest("fast_ai", REQUEST.messages, output_schema=schema_a)
    assert key_of(same, with_a) == key_of(same, ModelRequest("fast_ai", REQUEST.messages, output_schema=schema_b))
    assert key_of(same, with_a) != key_of(same)


def test_configured_aliases_are_keyed_by_provider_endpoint_and_model_and_given_clients_by_class() -> None:
    config = EngineConfig(
        providers={"p": HttpProviderConfig(kind="openai", base_url="http://h/v1"), "q": HttpProviderConfig(
            kind="openai", base_url="http://other/v1")},
        models={"a": ModelConfig(provider="p", model="m"), "b": ModelConfig(provider="p", model="m"),
                "c": ModelConfig(provider="q", model="m")})
    clients = clients_for(config, None)
    assert clients.target("a") == clients.target("b") != clients.target("c")
    given = clients_for(config, {"a": FakeModel()})
    assert given.target("a") == "engine.providers.fake.FakeModel alias:a" and given.target("b") == clients.target("b")


# -- over a real HTTP server ----------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[FaultServer]:
    with running_fault_server() as running:
        yield running


def http_config(server: FaultServer, model: str) -> EngineConfig:
    return EngineConfig(
        providers={"loopback": HttpProviderConfig(kind="openai", base_url=server.url, api_key="sk-test", timeout=5)},
        models={"fast_ai": ModelConfig(provider="loopback", model=model, input_price=1.0, output_price=2.0),
                "also_fast": ModelConfig(provider="loopback", model=model)})


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_over_http_the_second_run_sends_no_request(server: FaultServer, stream: bool) -> None:
    store = MemoryStore()
    engine = Engine(http_config(server, "m-one"), store=store, stream_tokens=stream)
    remapped = Engine(http_config(server, "m-two"), store=store)
    try:
        first = await engine.run(flow(ask()))
        assert first.tasks["a"].output == "answer:hello" and len(server.requests) == 1
        with capture_events(engine) as events:
            second = await engine.run(flow(ask()))
        assert second.tasks["a"].output == "answer:hello" and len(server.requests) == 1
        assert second.totals.cost_usd == 0.0 and [e.type for e in events].count("cache_hit") == 1
        await engine.run(flow(ask(model="also_fast")))  # another alias of the same model shares the entry
        assert len(server.requests) == 1
        await remapped.run(flow(ask()))  # the alias now names another model: a miss
        assert [request["model"] for request in server.requests] == ["m-one", "m-two"]
    finally:
        await engine.aclose()
        await remapped.aclose()


def test_the_local_models_prompt_format_is_part_of_what_answers() -> None:
    """The same request in the chat and the completion format gets different answers: never one for the other."""
    from engine.providers.settings import LlamaCppProviderConfig
    from engine.resilience.cache import model_target

    targets = {model_target(LlamaCppProviderConfig(kind="llama_cpp", prompt_format=form), "m", "fast_ai")
               for form in ("auto", "chat", "completion")}
    assert len(targets) == 3
