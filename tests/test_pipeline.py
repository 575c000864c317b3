"""The model call pipeline: each stage alone, their composition, and Engine.plan going through it."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine import BudgetExceededError, Engine, ModelError, ModelRequest, ModelResponse, PlanningError, Usage
from engine.config import BreakerConfig, EngineConfig, GateRule, ModelConfig, RetryConfig
from engine.events import Emitter, Event
from engine.model.client import Message
from engine.model.prices import Price
from engine.resilience.breaker import Breakers
from engine.resilience.budget import Budget, SpendStage
from engine.resilience.call import Call, RunContext
from engine.resilience.circuit import BreakerStage
from engine.resilience.gates import Gatekeeper
from engine.resilience.pipeline import PipelineParts, build_pipeline
from engine.resilience.provider import Clients, ProviderStage
from engine.resilience.ratelimit import RateLimiter, RateLimitStage
from engine.resilience.slots import SlotStage
from engine.resilience.timeout import Deadlines, TimeLimit, time_limit
from engine.runtime.results import TaskResult
from engine.testing import FakeModel, capture_events

pytestmark = pytest.mark.anyio
REQUEST = ModelRequest("fast_ai", (Message("user", "hello"),), max_tokens=10)


def make_call(events: list[Event] | None = None, *, budget: float | None = None, timeout: float | None = None,
              deadlines: Deadlines | None = None) -> Call:
    emit = Emitter("run", events.append if events is not None else None)
    return Call("task", RunContext(emit, Budget(budget), deadlines), TaskResult("task"), timeout=timeout)


# -- stages alone ---------------------------------------------------------------------------------

async def test_the_provider_stage_counts_the_attempt_and_tallies_tokens_and_cost() -> None:
    stage = ProviderStage(Clients({"fast_ai": FakeModel({"fast_ai": ModelResponse("hi", Usage(100, 20))})}),
                          {"fast_ai": Price(input=1.0, output=2.0)})
    call = make_call()
    assert stage.enter(REQUEST, call) is None
    response = await stage.send(REQUEST, call)
    stage.exit(REQUEST, call, response, None)
    assert (call.tally.attempts, call.tally.input_tokens, call.tally.output_tokens) == (1, 100, 20)
    assert call.tally.cost_usd == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    assert call.tally.model == "fast_ai"


async def test_the_spend_stage_reserves_then_settles_and_refuses_past_the_limit() -> None:
    stage = SpendStage({"fast_ai": Price(input=1_000.0, output=1_000.0)})
    call = make_call(budget=1.0)
    stage.enter(REQUEST, call)
    budget = call.run.budget
    assert budget.reserved == pytest.approx(call.reserved) and call.reserved > 0
    stage.exit(REQUEST, call, ModelResponse("x", Usage(10, 10)), None)
    assert budget.reserved == pytest.approx(0) and budget.spent == pytest.approx(0.02)
    expensive = ModelRequest("fast_ai", (Message("user", "x" * 2_000),), max_tokens=1_000)
    with pytest.raises(BudgetExceededError):
        stage.enter(expensive, call)
    unlimited = make_call()
    assert stage.enter(REQUEST, unlimited) is None and unlimited.run.budget.reserved == 0


async def test_the_slot_stage_lets_a_limited_number_through() -> None:
    stage = SlotStage({"fast_ai": [("alias:fast_ai", 2), ("provider:p", 1)]})  # the narrower one decides
    run = make_call().run  # slots are shared by the calls of a run
    inside: list[int] = []
    most = 0

    async def attempt() -> None:
        nonlocal most
        call = make_call()
        call.run = run
        pending = stage.enter(REQUEST, call)
        assert pending is not None
        await pending
        inside.append(1)
        most = max(most, len(inside))
        await anyio.sleep(0.01)
        inside.pop()
        stage.exit(REQUEST, call, None, None)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(attempt)
    assert most == 1
    assert stage.enter(ModelRequest("other", REQUEST.messages), make_call()) is None  # no limit for that alias


async def test_the_rate_limit_stage_waits_only_for_limited_aliases() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    stage = RateLimitStage({"fast_ai": RateLimiter(rpm=1, tpm=None)}, sleep)
    for _ in range(2):
        pending = stage.enter(REQUEST, make_call())
        assert pending is not None
        await pending
    assert len(slept) == 1 and slept[0] > 50  # the second call of the minute waits for the window
    assert stage.enter(ModelRequest("other", REQUEST.messages), make_call()) is None


async def test_the_breaker_stage_refuses_when_open_and_announces_changes() -> None:
    stage = BreakerStage(Breakers(BreakerConfig(failures=2, reset_timeout=60)))
    events: list[Event] = []
    for _ in range(2):
        call = make_call(events)
        stage.enter(REQUEST, call)
        stage.exit(REQUEST, call, None, ModelError("server_error", "down", model="fast_ai"))
    with pytest.raises(ModelError) as refused:
        stage.enter(REQUEST, make_call(events))
    assert refused.value.kind == "breaker_open"
    assert [(e.old_state, e.new_state) for e in events if e.type == "breaker_state_changed"] == [  # type: ignore[attr-defined]
        ("closed", "open")]


async def test_a_cancelled_attempt_is_not_counted_against_the_endpoint() -> None:
    breakers = Breakers(BreakerConfig(failures=1, reset_timeout=60))
    stage = BreakerStage(breakers)
    call = make_call()
    stage.enter(REQUEST, call)
    with anyio.move_on_after(0.01):
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class() as cancelled:
            stage.exit(REQUEST, call, None, cancelled)
            raise
    stage.enter(REQUEST, make_call())  # still closed: no error
    assert breakers.health()["fast_ai"]["state"] == "closed"


@pytest.mark.parametrize("watched", [True, False], ids=["deadlines", "fail_after"])
async def test_the_time_limit_turns_a_slow_answer_into_a_timeout(watched: bool) -> None:
    deadlines = Deadlines()
    async with anyio.create_task_group() as group:
        if watched:
            group.start_soon(deadlines.watch)
        call = make_call(timeout=0.05, deadlines=deadlines if watched else None)
        started = time.monotonic()
        with pytest.raises(ModelError) as timed_out, time_limit(REQUEST, call):
            await anyio.sleep(5)
        assert timed_out.value.kind == "timeout" and "0.05 s" in timed_out.value.message
        assert time.monotonic() - started < 1
        with time_limit(REQUEST, call):  # a fast answer goes through untouched
            await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert not deadlines._buckets  # every deadline was removed when its attempt ended


async def test_deadlines_fire_in_order_and_a_later_earlier_deadline_wakes_the_watcher() -> None:
    deadlines = Deadlines()
    fired: list[str] = []

    async def attempt(name: str, seconds: float, delay: float = 0) -> None:
        await anyio.sleep(delay)
        try:
            with TimeLimit(seconds, name, deadlines):
                await anyio.sleep(5)
        except ModelError:
            fired.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(deadlines.watch)
        async with anyio.create_task_group() as attempts:
            attempts.start_soon(attempt, "long", 0.3)
            attempts.start_soon(attempt, "short", 0.05, 0.02)  # registered after "long", due before it
        group.cancel_scope.cancel()
    assert fired == ["short", "long"]


async def test_a_bucket_that_empties_and_fills_again_is_queued_once() -> None:
    """Zero-latency calls empty and refill the same bucket thousands of times: its key stays queued once."""
    deadlines = Deadlines()
    for _ in range(1_000):
        scope = anyio.CancelScope()
        key = deadlines.add(scope, 120)
        deadlines.discard(key, scope)
    assert len(deadlines._due) <= 2  # the clock may cross one bucket boundary


async def test_a_cancelled_run_cancels_an_attempt_under_a_time_limit_without_a_timeout() -> None:
    deadlines = Deadlines()
    call = make_call(timeout=10, deadlines=deadlines)
    with anyio.move_on_after(0.05) as outer:
        with time_limit(REQUEST, call):
            await anyio.sleep(5)
    assert outer.cancelled_caught and not deadlines._buckets


# -- the composition --------------------------------------------------------------------------------

def test_the_pipeline_leaves_out_stages_with_nothing_to_do() -> None:
    clients = Clients({}, default=FakeModel())
    bare = build_pipeline(PipelineParts(clients=clients))
    assert [type(stage).__name__ for stage in bare.stages] == ["SpendStage", "ProviderStage"] and bare.gate is None
    full = build_pipeline(PipelineParts(
        clients=clients, breakers=Breakers(BreakerConfig()), gatekeeper=Gatekeeper([GateRule(above=10, deny=True)], {}),
        rate_limiters={"fast_ai": RateLimiter(1, None)}, slots={"fast_ai": [("alias:fast_ai", 2)]}))
    assert [type(stage).__name__ for stage in full.stages] == [
        "SpendStage", "SlotStage", "RateLimitStage", "BreakerStage", "ProviderStage"]
    assert full.gate is not None


async def test_every_stage_entered_is_exited_in_reverse_even_on_failure() -> None:
    trail: list[str] = []

    class Recorder:
        def __init__(self, name: str, refuse: bool = False) -> None:
            self.name, self.refuse = name, refuse

        def enter(self, request: ModelRequest, call: Call) -> Any:
            trail.append(f"enter {self.name}")
            if self.refuse:
                raise ModelError("bad_request", "refused")
            return None

        def exit(self, request: ModelRequest, call: Call, response: Any, error: Any) -> Any:
            trail.append(f"exit {self.name}: {'ok' if error is None else type(error).__name__}")
            return None

    pipeline = build_pipeline(PipelineParts(clients=Clients({}, default=FakeModel({"fast_ai": "answer"}))))
    pipeline.stages = (Recorder("a"), Recorder("b"), *pipeline.stages)
    assert await pipeline.answer(REQUEST, make_call()) == "answer"
    assert trail == ["enter a", "enter b", "exit b: ok", "exit a: ok"]
    trail.clear()
    pipeline.stages = (Recorder("a"), Recorder("b", refuse=True), *pipeline.stages[2:])
    with pytest.raises(ModelError):
        await pipeline.answer(REQUEST, make_call())
    assert trail == ["enter a", "enter b", "exit a: ModelError"]  # b refused: only a is exited


# -- Engine.plan through the pipeline ----------------------------------------------------------------

PLAN = {"name": "planned", "description": "A planned workflow",
        "stages": [{"type": "linear", "tasks": [{"model": "fast_ai", "prompt": "Do the first thing"}]}]}


async def test_engine_plan_is_retried_and_announced_like_a_plan_task() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    model = FakeModel({"thinking_ai": [ModelError("rate_limit", "slow down", model="thinking_ai"), PLAN]})
    engine = Engine(models=model, sleep=sleep)
    with capture_events(engine) as events:
        workflow = await engine.plan("do a thing")
    assert workflow.name == "planned" and len(model.calls_to("thinking_ai")) == 2 and len(sleeps) == 1
    (retry,) = [event for event in events if event.type == "task_retrying"]
    assert retry.task_id == "plan" and retry.error_kind == "rate_limit"  # type: ignore[attr-defined]


async def test_engine_plan_meets_the_gates_before_anything_is_spent() -> None:
    config = EngineConfig(models={"thinking_ai": ModelConfig(provider="dry")}, gates=[GateRule(above=10, deny=True)],
                          providers={"dry": {"kind": "fake"}}, retry=RetryConfig())
    model = FakeModel({"thinking_ai": PLAN})
    engine = Engine(config, models={"thinking_ai": model})
    with capture_events(engine) as events, pytest.raises((ModelError, PlanningError)):
        await engine.plan("do a thing")
    assert model.calls == []  # denied before the model was asked
    assert [event.action for event in events if event.type == "gate_applied"] == ["deny"]  # type: ignore[attr-defined]


# -- what a transient error does: retry the same model, or fall back (retry.on) -----------------------

def chain_flow(retry: dict[str, Any] | None = None, chain: tuple[str, ...] = ("medium_ai", "thinking_ai")) -> Any:
    task: dict[str, Any] = {"id": "a", "prompt": "go", "model": list(chain)}
    if retry is not None:
        task["retry"] = retry
    return {"dsl": "orchestrion/v1", "name": "policy", "stages": [{"type": "linear", "tasks": [task]}]}


def down(kind: str = "connection", retry_after: float | None = None) -> ModelError:
    return ModelError(kind, f"{kind}!", model="medium_ai", retry_after=retry_after)  # type: ignore[arg-type]


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.mark.parametrize("kind", ["connection", "timeout", "server_error"])
async def test_an_unreachable_or_failing_model_is_left_at_once_when_there_is_a_next_one(kind: str) -> None:
    model, sleeps = FakeModel({"medium_ai": down(kind), "thinking_ai": "backup"}), Sleeps()
    result = await Engine(models=model, sleep=sleeps).run(chain_flow())
    assert result.tasks["a"].output == "backup" and len(model.calls_to("medium_ai")) == 1 and sleeps == []


async def test_with_nowhere_else_to_go_the_same_error_is_retried_with_backoff() -> None:
    model, sleeps = FakeModel({"medium_ai": [down(), down(), "third time"]}), Sleeps()
    result = await Engine(models=model, sleep=sleeps).run(chain_flow(chain=("medium_ai",)))
    assert result.tasks["a"].output == "third time" and len(sleeps) == 2


async def test_retry_then_fallback_retries_first_and_retry_never_falls_back() -> None:
    model, sleeps = FakeModel({"medium_ai": down(), "thinking_ai": "backup"}), Sleeps()
    engine = Engine(models=model, sleep=sleeps)
    result = await engine.run(chain_flow({"on": {"connection": "retry_then_fallback"}}))
    assert result.tasks["a"].output == "backup" and len(model.calls_to("medium_ai")) == 4 and len(sleeps) == 3
    result = await engine.run(chain_flow({"on": {"connection": "retry"}, "max_attempts": 2}))
    assert result.status == "failed" and result.tasks["a"].error_kind == "connection"
    assert len(model.calls_to("thinking_ai")) == 1  # only the first run reached the backup


async def test_a_rate_limit_is_retried_unless_its_retry_after_is_longer_than_any_wait() -> None:
    model, sleeps = FakeModel({"medium_ai": [down("rate_limit", 2), "waited"], "thinking_ai": "backup"}), Sleeps()
    engine = Engine(models=model, sleep=sleeps)
    assert (await engine.run(chain_flow())).tasks["a"].output == "waited" and sleeps == [2]
    model.script["medium_ai"] = [down("rate_limit", 3_600)]
    assert (await engine.run(chain_flow())).tasks["a"].output == "backup" and sleeps == [2]


def test_the_policy_merges_per_class_from_defaults_and_task() -> None:
    from engine import compile_workflow, load_workflow

    document = chain_flow({"on": {"timeout": "retry"}})
    document["defaults"] = {"retry": {"on": {"connection": "retry_then_fallback", "timeout": "fallback"}}}
    retry = compile_workflow(load_workflow(document)).nodes["a"].policies.retry  # type: ignore[index, union-attr]
    assert retry is not None
    assert {kind: retry.action(kind) for kind in ("connection", "timeout", "server_error", "rate_limit")} == {
        "connection": "retry_then_fallback", "timeout": "retry", "server_error": "fallback",
        "rate_limit": "retry_then_fallback"}


async def test_an_open_breaker_ends_the_retries_before_another_wait() -> None:
    config = EngineConfig(breaker=BreakerConfig(failures=2, reset_timeout=60))
    model, sleeps = FakeModel({"medium_ai": down("server_error")}), Sleeps()
    result = await Engine(config, models=model, sleep=sleeps).run(chain_flow(chain=("medium_ai",)))
    assert result.status == "failed"
    assert len(model.calls_to("medium_ai")) == 2 and len(sleeps) == 1  # the second failure opened it: no third


# -- hedging: the next model is asked as well when the first is slow ----------------------------------

def hedged_flow(hedge_after: float, chain: tuple[str, ...] = ("medium_ai", "thinking_ai")) -> Any:
    document = chain_flow(chain=chain)
    document["stages"][0]["tasks"][0]["hedge_after"] = hedge_after
    return document


async def test_a_slow_model_is_joined_by_the_next_and_the_first_answer_wins() -> None:
    model = FakeModel({"medium_ai": "slow", "thinking_ai": "quick"}, latency={"medium_ai": 5.0, "thinking_ai": 0.01})
    engine = Engine(models=model)
    started = time.monotonic()
    with capture_events(engine) as events:
        result = await engine.run(hedged_flow(0.05))
    assert result.tasks["a"].output == "quick" and time.monotonic() - started < 1
    assert result.tasks["a"].attempts == 2 and result.tasks["a"].model == "thinking_ai"  # both were asked
    (hedge,) = [event for event in events if event.type == "task_fell_back"]
    assert hedge.error_kind == "hedge" and hedge.to_model == "thinking_ai"  # type: ignore[attr-defined]


async def test_a_model_that_answers_before_the_hedge_delay_is_alone() -> None:
    model = FakeModel({"medium_ai": "first", "thinking_ai": "never"}, latency=0.01)
    result = await Engine(models=model).run(hedged_flow(1.0))
    assert result.tasks["a"].output == "first" and model.calls_to("thinking_ai") == []


async def test_when_the_hedge_fails_the_slower_first_model_still_answers() -> None:
    model = FakeModel({"medium_ai": "late but right", "thinking_ai": ModelError("auth", "no key")},
                      latency={"medium_ai": 0.2, "thinking_ai": 0.0})
    result = await Engine(models=model).run(hedged_flow(0.05))
    assert result.tasks["a"].output == "late but right"


async def test_when_both_hedged_models_fail_the_chain_goes_on_past_both() -> None:
    model = FakeModel({"medium_ai": ModelError("auth", "no"), "thinking_ai": ModelError("auth", "no"),
                       "fast_ai": "third"}, latency={"medium_ai": 0.2, "thinking_ai": 0.1})
    result = await Engine(models=model).run(hedged_flow(0.05, ("medium_ai", "thinking_ai", "fast_ai")))
    assert result.tasks["a"].output == "third" and len(model.calls_to("thinking_ai")) == 1


async def test_a_model_hedged_away_counts_as_too_slow_so_its_breaker_can_open() -> None:
    config = EngineConfig(breaker=BreakerConfig(failures=2, reset_timeout=60))
    model = FakeModel({"medium_ai": "slow", "thinking_ai": "quick"}, latency={"medium_ai": 5.0, "thinking_ai": 0.0})
    engine = Engine(config, models=model)
    for _ in range(2):
        assert (await engine.run(hedged_flow(0.2))).tasks["a"].output == "quick"
    assert engine.health()["breakers"]["medium_ai"]["state"] == "open"
    started = time.monotonic()
    assert (await engine.run(hedged_flow(0.2))).tasks["a"].output == "quick"
    assert time.monotonic() - started < 0.15  # refused at once by the open breaker: no hedge delay
    assert len(model.calls_to("medium_ai")) == 2


async def test_a_breaker_that_opens_during_a_retry_wait_ends_the_wait() -> None:
    """One call waits 10 s to retry a rate-limited model; another call's failure opens the model's breaker:
    the wait ends there, the retry is refused by the breaker, and the call falls over to the backup."""
    async def fail_soon(request: ModelRequest) -> Any:
        await anyio.sleep(0.1)
        raise ModelError("server_error", "down", model="medium_ai")

    model = FakeModel({"medium_ai": [down("rate_limit", 10), fail_soon], "thinking_ai": "backup"})
    # The rate limit is the first failure, the other call's the second: the breaker opens during the wait.
    engine = Engine(EngineConfig(breaker=BreakerConfig(failures=2, reset_timeout=60)), models=model)
    document = chain_flow()
    document["stages"][0]["tasks"].append({"id": "b", "prompt": "go", "model": ["medium_ai", "thinking_ai"]})
    started = time.monotonic()
    result = await engine.run(document)
    assert time.monotonic() - started < 2  # not the 10 s Retry-After
    assert {task.output for task in result.tasks.values()} == {"backup"}
    assert len(model.calls_to("medium_ai")) == 2  # the woken retry never reached it


async def test_a_later_attempt_that_cannot_connect_falls_over_as_the_first_would() -> None:
    model, sleeps = FakeModel({"medium_ai": [down("rate_limit", 1), down("connection")], "thinking_ai": "backup"}), \
        Sleeps()
    result = await Engine(models=model, sleep=sleeps).run(chain_flow())
    assert result.tasks["a"].output == "backup" and len(model.calls_to("medium_ai")) == 2 and sleeps == [1]


async def test_a_refused_reservation_fails_only_its_task_when_it_is_not_critical() -> None:
    from engine import Price

    engine = Engine(models=FakeModel(), prices={"medium_ai": Price(input=1_000.0, output=1_000.0)})
    document = {"dsl": "orchestrion/v1", "name": "capped", "limits": {"max_cost_usd": 0.01}, "stages": [
        {"type": "linear", "tasks": [{"id": "free", "model": "fast_ai", "prompt": "go"},
                                     {"id": "pricey", "model": "medium_ai", "prompt": "go", "critical": False}]}]}
    result = await engine.run(document)
    assert result.status == "succeeded" and result.tasks["free"].status == "succeeded"
    assert result.tasks["pricey"].status == "failed" and result.tasks["pricey"].error_kind == "budget"
