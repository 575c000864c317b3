"""The scheduling rules, on asyncio and trio: dataflow, caps, timeouts, failures, skips,
for_each, repeat, sub-workflows, functions, budgets and cancellation."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from engine import Engine, InputError, ModelError, ModelRequest, Price, RunResult
from engine.config import BreakerConfig, EngineConfig
from engine.testing import FakeModel, capture_events

pytestmark = pytest.mark.anyio


def wf(*stages: dict[str, Any], **top: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"dsl": "orchestrion/v1", "name": "t", "stages": list(stages),
                                "defaults": {"model": "fast_ai", "retry": None}}
    document.update(top)
    return document


def linear(*tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "linear", "tasks": list(tasks), **fields}


def inline(*tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "inline", "tasks": list(tasks), **fields}


def task(id: str, prompt: str = "go", **fields: Any) -> dict[str, Any]:
    return {"id": id, "prompt": prompt, **fields}


def order(events: list[Any], *types: str) -> list[tuple[str, str | None]]:
    return [(event.type, event.task_id) for event in events if event.type in types]


class InFlight:
    """A FakeModel answer that records how many calls run at once."""

    def __init__(self, delay: float = 0.02) -> None:
        self.now = 0
        self.peak = 0
        self.delay = delay

    async def __call__(self, request: ModelRequest) -> str:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await anyio.sleep(self.delay)
        self.now -= 1
        return "ok"


# -- dataflow ------------------------------------------------------------------------------------

async def test_a_task_starts_when_what_it_reads_is_done_not_its_stage() -> None:
    fake = FakeModel(latency={"fast_ai": 0.01, "medium_ai": 0.3})
    flow = wf(linear(task("a"), task("b", model="medium_ai")), linear(task("c", "{{ a }}")))
    engine = Engine(models=fake)
    with capture_events(engine) as events:
        result = await engine.run(flow)
    assert result.status == "succeeded"
    seen = order(events, "task_started", "task_finished")
    assert seen.index(("task_started", "c")) < seen.index(("task_finished", "b"))


async def test_staged_schedule_waits_for_the_whole_previous_stage() -> None:
    fake = FakeModel(latency={"fast_ai": 0.01, "medium_ai": 0.05})
    flow = wf(linear(task("a"), task("b", model="medium_ai")), linear(task("c", "{{ a }}")), schedule="staged")
    engine = Engine(models=fake)
    with capture_events(engine) as events:
        await engine.run(flow)
    seen = order(events, "task_started", "task_finished")
    assert seen.index(("task_finished", "b")) < seen.index(("task_started", "c"))


async def test_inline_stages_run_in_order_and_pass_values() -> None:
    fake = FakeModel({"fast_ai": ["one", "two", "three"]})
    result = await Engine(models=fake).run(wf(inline(task("a"), task("b", "after {{ a }}"), task("c", "{{ b }}"))))
    assert [result.tasks[t].output for t in "abc"] == ["one", "two", "three"]
    assert [call.prompt for call in fake.calls] == ["go", "after one", "two"]


# -- concurrency caps ----------------------------------------------------------------------------

async def test_run_concurrency_cap() -> None:
    meter = InFlight()
    flow = wf(linear(*(task(f"t{i}") for i in range(8))), limits={"max_concurrency": 3})
    result = await Engine(models=FakeModel({"fast_ai": meter})).run(flow)
    assert result.status == "succeeded" and meter.peak == 3


async def test_per_model_concurrency_cap() -> None:
    meter = InFlight()
    flow = wf(linear(*(task(f"t{i}") for i in range(6))))
    result = await Engine(models=FakeModel({"fast_ai": meter}), model_concurrency={"fast_ai": 2}).run(flow)
    assert result.status == "succeeded" and meter.peak == 2


# -- timeouts, retries, fallbacks ----------------------------------------------------------------

async def test_per_attempt_timeout_then_retry_succeeds() -> None:
    slow_then_fast = [lambda request: anyio.sleep(5), "fine"]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    flow = wf(linear(task("a", timeout=0.05, retry={"max_attempts": 3, "initial_delay": 1, "max_delay": 30})))
    engine = Engine(models=FakeModel({"fast_ai": slow_then_fast}), sleep=fake_sleep)
    with capture_events(engine) as events:
        result = await engine.run(flow)
    assert result.status == "succeeded" and result.tasks["a"].output == "fine"
    assert result.tasks["a"].attempts == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 1  # full jitter: between 0 and the first delay
    (retry,) = [event for event in events if event.type == "task_retrying"]
    assert retry.error_kind == "timeout"


async def test_transient_errors_are_retried_with_capped_backoff() -> None:
    errors = [ModelError("rate_limit", "slow down")] * 5 + ["done"]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    retry = {"max_attempts": 6, "initial_delay": 1, "backoff": 2, "max_delay": 3}
    patient = EngineConfig(breaker=BreakerConfig(failures=10))  # five failures would open the default breaker
    result = await Engine(patient, models=FakeModel({"fast_ai": errors}), sleep=fake_sleep).run(
        wf(linear(task("a", retry=retry))))
    assert result.tasks["a"].output == "done" and result.tasks["a"].attempts == 6
    assert len(sleeps) == 5 and all(0 <= delay <= 3 for delay in sleeps)


async def test_persistent_error_falls_back_to_the_next_model_without_retrying() -> None:
    fake = FakeModel({"fast_ai": ModelError("auth", "bad key"), "medium_ai": "from medium"})
    engine = Engine(models=fake)
    with capture_events(engine) as events:
        result = await engine.run(wf(linear(task("a", model=["fast_ai", "medium_ai"], retry={"max_attempts": 4}))))
    assert result.tasks["a"].output == "from medium" and result.tasks["a"].model == "medium_ai"
    assert len(fake.calls_to("fast_ai")) == 1
    (fell,) = [event for event in events if event.type == "task_fell_back"]
    assert (fell.from_model, fell.to_model, fell.error_kind) == ("fast_ai", "medium_ai", "auth")


async def test_run_timeout_fails_the_run() -> None:
    flow = wf(linear(task("a")), limits={"timeout": 0.1})
    with anyio.fail_after(5):
        result = await Engine(models=FakeModel(latency=10)).run(flow)
    assert result.status == "failed" and "longer than 0.1 s" in (result.error or "")
    assert result.tasks["a"].status == "cancelled"


# -- failures ------------------------------------------------------------------------------------

async def test_critical_failure_cancels_everything_still_running() -> None:
    fake = FakeModel({"fast_ai": ModelError("bad_request", "nope"), "medium_ai": "slow"}, latency={"medium_ai": 10})
    flow = wf(linear(task("a"), task("b", model="medium_ai")), linear(task("c", "{{ b }}", model="medium_ai")))
    with anyio.fail_after(5):
        result = await Engine(models=fake).run(flow)
    assert result.status == "failed" and result.failed_task == "a"
    assert "nope" in (result.error or "")
    assert (result.tasks["a"].status, result.tasks["b"].status, result.tasks["c"].status) == (
        "failed", "cancelled", "cancelled")
    assert result.tasks["a"].error_kind == "bad_request"


async def test_non_critical_failure_yields_null_and_the_run_goes_on() -> None:
    fake = FakeModel({"fast_ai": ModelError("server_error", "boom"), "medium_ai": "fine"})
    flow = wf(inline(task("a", critical=False), task("b", "a was {{ a }}", model="medium_ai")))
    result = await Engine(models=fake).run(flow)
    assert result.status == "succeeded"
    assert result.tasks["a"].status == "failed" and result.tasks["a"].output is None
    assert fake.calls_to("medium_ai")[0].prompt == "a was None"


# -- skipping ------------------------------------------------------------------------------------

async def test_when_false_skips_the_task_and_its_exclusive_dependents() -> None:
    flow = wf(linear(task("a"), task("b", when="false")),
              inline(task("only_b", "{{ b }}"), task("both", "{{ a }} {{ b }}"), task("after_only", "x")),
              outputs={"both": "{{ both }}"})
    engine = Engine(models=FakeModel())
    with capture_events(engine) as events:
        result = await engine.run(flow)
    statuses = {name: result.tasks[name].status for name in ("a", "b", "only_b", "both", "after_only")}
    assert statuses == {"a": "succeeded", "b": "skipped", "only_b": "skipped", "both": "succeeded",
                        "after_only": "succeeded"}
    assert result.outputs["both"] == "[fast_ai] [fast_ai] go None"
    assert ("task_skipped", "b") in order(events, "task_skipped")


async def test_when_reads_task_outputs() -> None:
    fake = FakeModel({"fast_ai": [{"score": 3}, "ran"]})
    flow = wf(inline(task("grade", output={"schema": {"type": "object"}}), task("retry", when="grade.score > 5")))
    result = await Engine(models=fake).run(flow)
    assert result.tasks["retry"].status == "skipped"


# -- for_each ------------------------------------------------------------------------------------

async def test_for_each_keeps_input_order_and_respects_its_cap() -> None:
    meter = InFlight(delay=0.01)

    async def answer(request: ModelRequest) -> str:
        number = int(request.prompt.split()[-1])
        await anyio.sleep(0.001 * (10 - number))  # later items finish first
        await meter(request)
        return f"item {number}"

    flow = wf(inline(task("each", "do {{ n }}", for_each="range(10) | list", max_concurrency=3, **{"as": "n"})))
    result = await Engine(models=FakeModel({"fast_ai": answer})).run(flow)
    assert result.tasks["each"].output == [f"item {n}" for n in range(10)]
    assert meter.peak <= 3 and result.tasks["each"].attempts == 10


async def test_for_each_over_a_task_output() -> None:
    fake = FakeModel({"fast_ai": [["x", "y"], lambda request: request.prompt.split()[-1].upper()]})
    flow = wf(inline(task("list", output={"schema": {"type": "array"}}),
                     task("each", "upper {{ item }}", for_each="list", max_concurrency=1)))
    result = await Engine(models=fake).run(flow)
    assert result.tasks["each"].output == ["X", "Y"]


async def test_for_each_on_a_non_list_fails_clearly() -> None:
    result = await Engine(models=FakeModel()).run(wf(inline(task("each", for_each="'text'"))))
    assert result.status == "failed" and "not a list" in (result.error or "")


# -- repeat --------------------------------------------------------------------------------------

async def test_repeat_stops_as_soon_as_until_holds() -> None:
    fake = FakeModel({"fast_ai": ["draft 1", {"score": 4}, "draft 2", {"score": 9}, "draft 3", {"score": 10}]})
    loop = {"max_rounds": 5, "until": "review.score >= 8"}
    flow = wf(inline(task("draft", "improve {{ draft }} (round {{ loop.round }})"),
                     task("review", "{{ draft }}", output={"schema": {"type": "object"}}), repeat=loop),
              outputs={"final": "{{ draft }}", "score": "{{ review.score }}"})
    result = await Engine(models=fake).run(flow)
    assert result.outputs == {"final": "draft 2", "score": 9}
    assert result.tasks["draft@3"].status == "skipped" and result.tasks["until:stages[0]@2"].output is True
    assert [call.prompt for call in fake.calls if call.prompt.startswith("improve")] == [
        "improve None (round 1)", "improve draft 1 (round 2)"]


async def test_repeat_stops_at_max_rounds() -> None:
    flow = wf(inline(task("a", "{{ loop.round }}"), repeat={"max_rounds": 3, "until": "false"}),
              outputs={"last": "{{ a }}"})
    result = await Engine(models=FakeModel({"fast_ai": ["1", "2", "3"]})).run(flow)
    assert result.outputs == {"last": "3"}
    assert all(result.tasks[f"a@{r}"].status == "succeeded" for r in (1, 2, 3))


# -- other kinds ---------------------------------------------------------------------------------

async def test_call_tasks_run_sync_functions_in_a_worker_thread_and_async_ones_directly() -> None:
    threads: dict[str, int] = {}

    def blocking(text: str) -> str:
        threads["sync"] = threading.get_ident()
        return text.upper()

    async def awaiting(values: list[int]) -> int:
        threads["async"] = threading.get_ident()
        return sum(values)

    flow = wf(inline({"id": "up", "call": "blocking", "with": {"text": "{{ word }}"}},
                     {"id": "total", "call": "awaiting", "with": {"values": "{{ numbers }}"}}),
              inputs={"word": {"type": "string"}, "numbers": {"type": "array"}})
    engine = Engine(functions={"blocking": blocking, "awaiting": awaiting})
    result = await engine.run(flow, {"word": "hi", "numbers": [1, 2, 3]})
    assert (result.tasks["up"].output, result.tasks["total"].output) == ("HI", 6)
    assert threads["sync"] != threading.get_ident() and threads["async"] == threading.get_ident()


async def test_a_raising_function_is_a_function_error() -> None:
    def broken() -> None:
        raise ValueError("bad data")

    result = await Engine(functions={"broken": broken}).run(wf(inline({"id": "x", "call": "broken"})))
    assert result.status == "failed" and result.tasks["x"].error_kind == "function"
    assert "ValueError: bad data" in (result.tasks["x"].error or "")


async def test_workflow_tasks_run_a_nested_workflow(tmp_path) -> None:
    child = tmp_path / "child.json"
    child.write_text('{"dsl": "orchestrion/v1", "name": "child", "inputs": {"topic": {"type": "string"}}, '
                     '"defaults": {"model": "fast_ai"}, "stages": [{"type": "inline", "tasks": '
                     '[{"id": "answer", "prompt": "about {{ topic }}"}]}], "outputs": {"text": "{{ answer }}"}}')
    parent = tmp_path / "parent.json"
    parent.write_text('{"dsl": "orchestrion/v1", "name": "parent", "stages": [{"type": "inline", "tasks": '
                      '[{"id": "sub", "workflow": "child.json", "with": {"topic": "tea"}}]}], '
                      '"outputs": {"text": "{{ sub.text }}"}}')
    result = await Engine(models=FakeModel()).run(parent)
    assert result.outputs == {"text": "[fast_ai] about tea"}
    assert result.tasks["sub"].input_tokens > 0


async def test_plan_tasks_fail_clearly_until_the_planner_exists() -> None:
    result = await Engine(models=FakeModel()).run(wf(inline({"id": "p", "plan": "do things"})))
    assert result.status == "failed" and "planner" in (result.error or "")


# -- budget --------------------------------------------------------------------------------------

async def test_max_cost_stops_the_run_before_a_call_would_pass_it() -> None:
    fake = FakeModel()
    price = {"fast_ai": Price(input=1000.0, output=1000.0)}  # $0.001 per token
    # Each call is estimated at 11 tokens ($0.011: 2 prompt bytes, 4 for the turn, 5 of answer) and costs 4
    # ($0.004): after two calls, $0.008 spent, the third would pass $0.015.
    flow = wf(inline(*(task(f"t{i}", max_tokens=5) for i in range(5))), limits={"max_cost_usd": 0.015})
    result = await Engine(models=fake, prices=price).run(flow)
    assert result.status == "failed" and result.failed_task == "t2"
    assert result.tasks["t2"].error_kind == "budget" and "limit of $0.015" in (result.error or "")
    assert len(fake.calls) == 2 and result.totals.cost_usd == pytest.approx(0.008)


async def test_concurrent_tasks_cannot_overshoot_the_budget_together() -> None:
    fake = FakeModel(latency=0.01)
    flow = wf(linear(*(task(f"t{i}", max_tokens=5) for i in range(20))), limits={"max_cost_usd": 0.05})
    result = await Engine(models=fake, prices={"fast_ai": Price(1000.0, 1000.0)}).run(flow)
    assert result.status == "failed" and result.totals.cost_usd <= 0.05


# -- cancellation and inputs ---------------------------------------------------------------------

async def test_cancelling_the_caller_cancels_every_branch() -> None:
    fake = FakeModel(latency=10)
    engine = Engine(models=fake)
    with capture_events(engine) as events:
        with anyio.move_on_after(0.1):
            await engine.run(wf(linear(task("a"), task("b"), task("c"))))
    assert len(fake.calls) == 3
    assert not [event for event in events if event.type == "task_finished"]
    assert events[-1].type == "run_finished" and events[-1].status == "cancelled"


async def test_inputs_are_checked_before_anything_runs() -> None:
    fake = FakeModel()
    flow = wf(linear(task("a", "{{ topic }} {{ n }}")),
              inputs={"topic": {"type": "string"}, "n": {"type": "integer", "default": 3}})
    engine = Engine(models=fake)
    for bad, message in [({}, "missing input 'topic'"), ({"topic": "x", "tpoic": 1}, "did you mean 'topic'"),
                         ({"topic": 5}, "input 'topic': 5 is not of type 'string'")]:
        with pytest.raises(InputError, match=message):
            await engine.run(flow, bad)
    assert fake.calls == []
    result = await engine.run(flow, {"topic": "x"})
    assert result.tasks["a"].output == "[fast_ai] x 3"


# -- outputs and results -------------------------------------------------------------------------

async def test_outputs_keep_types_of_single_expressions_and_default_to_every_task() -> None:
    fake = FakeModel({"fast_ai": [{"n": 2}]})
    flow = wf(inline(task("a", output={"schema": {"type": "object"}})),
              outputs={"whole": "{{ a }}", "n": "{{ a.n }}", "text": "n={{ a.n }}"})
    result = await Engine(models=fake).run(flow)
    assert result.outputs == {"whole": {"n": 2}, "n": 2, "text": "n=2"}
    plain = await Engine(models=FakeModel()).run(wf(inline(task("a"), task("b"))))
    assert plain.outputs == {"a": "[fast_ai] go", "b": "[fast_ai] go"}


async def test_run_result_totals_and_json_round_trip() -> None:
    import json

    result = await Engine(models=FakeModel(), prices={"fast_ai": Price(1.0, 2.0)}).run(wf(linear(task("a"), task("b"))))
    assert result.totals.input_tokens == 2 and result.totals.output_tokens == 6  # "[fast_ai] go": 12 chars
    assert result.totals.cost_usd == pytest.approx((2 * 1.0 + 6 * 2.0) / 1e6)
    assert result.totals.models_used == ["fast_ai"]
    again = RunResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert again.tasks["a"].latency_s is not None and again.tasks["a"].latency_s >= 0


def test_run_sync_on_both_backends() -> None:
    engine = Engine(models=FakeModel())
    for backend in ("asyncio", "trio"):
        assert engine.run_sync(wf(linear(task("a"))), backend=backend).status == "succeeded"  # type: ignore[arg-type]


async def test_scripted_responses_carry_their_own_usage() -> None:
    from engine import ModelResponse, Usage

    scripted = ModelResponse("cached answer", Usage(1000, 10, cached_input_tokens=800), model="big-model")
    engine = Engine(models=FakeModel({"fast_ai": scripted}), prices={"fast_ai": Price(2.0, 8.0, cached_input=0.5)})
    result = await engine.run(wf(linear(task("a"))))
    a = result.tasks["a"]
    assert (a.output, a.input_tokens, a.output_tokens) == ("cached answer", 1000, 10)
    assert a.cost_usd == pytest.approx((200 * 2.0 + 800 * 0.5 + 10 * 8.0) / 1e6)


async def test_raise_for_status_raises_only_for_a_run_that_did_not_succeed() -> None:
    from engine import RunFailedError

    engine = Engine(models=FakeModel({"fast_ai": ModelError("auth", "no key")}))
    failed = await engine.run(wf(linear(task("a"))))
    with pytest.raises(RunFailedError, match="failed: task 'a'"):
        failed.raise_for_status()
    ok = await Engine(models=FakeModel()).run(wf(linear(task("a"))))
    assert ok.raise_for_status() is ok
