"""Checkpoints and resume through the run store's contract (the in-memory store; the SQL stores'
own contract is tests/test_store.py, the crash of a real process tests/test_crash.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import Engine
from engine.errors import ModelError, StoreError
from engine.model.client import ModelRequest
from engine.store import MemoryStore, RunRecord, TaskRecord
from engine.testing import FakeModel, capture_events

pytestmark = pytest.mark.anyio

CHAIN = {
    "dsl": "orchestrion/v1", "name": "chain", "inputs": {"topic": {"type": "string"}},
    "defaults": {"retry": None, "model": "fast_ai"},
    "stages": [{"type": "inline", "tasks": [
        {"id": "a", "prompt": "a about {{ topic }}"},
        {"id": "b", "prompt": "b after {{ a }}"},
        {"id": "c", "prompt": "c after {{ b }}"},
        {"id": "d", "prompt": "d after {{ c }}"},
    ]}],
    "outputs": {"last": "{{ d }}"},
}


def prompts(model: FakeModel) -> list[str]:
    return [call.messages[-1].content.split(" ")[0] for call in model.calls]


class FailingOnce:
    """Answers by echo, but fails (persistently) the first time a prompt starts with ``word``."""

    def __init__(self, word: str) -> None:
        self.word, self.failed = word, False

    def __call__(self, request: ModelRequest) -> Any:
        if request.messages[-1].content.startswith(self.word) and not self.failed:
            self.failed = True
            return ModelError("auth", "bad key")
        return f"<{request.messages[-1].content}>"


async def test_a_failed_run_resumes_without_repeating_a_finished_call() -> None:
    store = MemoryStore()
    model = FakeModel({"fast_ai": FailingOnce("c")})
    engine = Engine(models=model, store=store)
    failed = await engine.run(CHAIN, {"topic": "tea"})
    assert failed.status == "failed" and failed.failed_task == "c"
    assert prompts(model) == ["a", "b", "c"]
    assert {task: record.status for task, record in store.tasks[failed.run_id].items()} == {
        "a": "succeeded", "b": "succeeded", "c": "failed"}
    assert store.runs[failed.run_id].status == "failed"

    resumed = await engine.resume(failed.run_id)
    assert resumed.status == "succeeded" and resumed.run_id == failed.run_id
    assert prompts(model) == ["a", "b", "c", "c", "d"]  # a and b were not asked again
    uninterrupted = await Engine(models=FakeModel({"fast_ai": FailingOnce("never")})).run(CHAIN, {"topic": "tea"})
    assert resumed.outputs == uninterrupted.outputs
    assert resumed.tasks["a"].output == uninterrupted.tasks["a"].output
    assert store.runs[failed.run_id].status == "succeeded" and store.runs[failed.run_id].outputs == resumed.outputs


async def test_a_cancelled_run_is_recorded_and_resumes() -> None:
    store = MemoryStore()
    slow = FakeModel(latency={"fast_ai": 0.0, "medium_ai": 30.0})
    flow = json.loads(json.dumps(CHAIN))
    flow["stages"][0]["tasks"][2]["model"] = "medium_ai"
    engine = Engine(models=slow, store=store)
    with anyio.move_on_after(0.5):
        await engine.run(flow, {"topic": "tea"}, run_id="r1")
    assert store.runs["r1"].status == "cancelled"
    assert set(store.tasks["r1"]) == {"a", "b"}
    fresh = FakeModel()
    resumed = await Engine(models=fresh, store=store).resume("r1")
    assert resumed.status == "succeeded"
    assert prompts(fresh) == ["c", "d"]  # c was in flight when the run was cancelled: asked again


async def test_every_result_is_committed_before_its_readers_start() -> None:
    order: list[str] = []

    class Watching(MemoryStore):
        async def save_tasks(self, tasks: Any) -> None:
            order.extend(f"saved {task.task_id}" for task in tasks)
            await super().save_tasks(tasks)

    def answer(request: ModelRequest) -> str:
        order.append(f"asked {request.messages[-1].content.split(' ')[0]}")
        return "ok"

    await Engine(models=FakeModel({"fast_ai": answer}), store=Watching()).run(CHAIN, {"topic": "tea"})
    assert order == ["asked a", "saved a", "asked b", "saved b", "asked c", "saved c", "asked d", "saved d"]


async def test_a_fan_out_is_saved_in_few_transactions() -> None:
    batches: list[int] = []

    class Counting(MemoryStore):
        async def save_tasks(self, tasks: Any) -> None:
            batches.append(len(tasks))
            await super().save_tasks(tasks)

    wide = {"dsl": "orchestrion/v1", "name": "wide", "defaults": {"model": "fast_ai"},
            "stages": [{"type": "linear", "tasks": [{"id": f"t{i}", "prompt": f"q{i}"} for i in range(200)]}]}
    result = await Engine(models=FakeModel(), store=Counting()).run(wide)
    assert result.status == "succeeded" and sum(batches) == 200
    assert len(batches) < 20, batches  # the results of one tick share a transaction


async def test_the_last_tick_nothing_reads_is_committed_with_the_run_s_end() -> None:
    # Once no node is left to settle, results that no node reads and the last model calls go with the
    # run's end, in one transaction; a leaf that settles while another node still runs is saved at once.
    ended: dict[str, Any] = {}
    saved_while_b_ran: set[str] = set()

    class Watching(MemoryStore):
        async def finish_run(self, run: RunRecord, *, tasks: Any = (), attempts: Any = ()) -> None:
            if run.status != "running":
                ended["tasks"], ended["calls"] = {task.task_id for task in tasks}, len(attempts)
            await super().finish_run(run, tasks=tasks, attempts=attempts)

    store = Watching()

    def slow(request: ModelRequest) -> str:
        saved_while_b_ran.update(store.tasks.get("r1", {}))
        return "ok"

    flow = {"dsl": "orchestrion/v1", "name": "two", "defaults": {"retry": None},
            "stages": [{"type": "linear", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "a"},
                                                    {"id": "b", "model": "medium_ai", "prompt": "b"}]}]}
    model = FakeModel({"medium_ai": slow}, latency={"medium_ai": 0.2})
    result = await Engine(models=model, store=store).run(flow, run_id="r1")
    assert result.status == "succeeded"
    assert saved_while_b_ran == {"a"}  # committed while b was still running: not kept for the end
    assert ended == {"tasks": {"b"}, "calls": 1}  # b's result and call, with the run's end
    assert set(store.tasks["r1"]) == {"a", "b"} and len(store.attempts) == 2


async def test_a_store_that_cannot_write_fails_the_run_loudly() -> None:
    class Broken(MemoryStore):
        async def save_tasks(self, tasks: Any) -> None:
            raise OSError("disk full")

    result = await Engine(models=FakeModel(), store=Broken()).run(CHAIN, {"topic": "tea"})
    assert result.status == "failed" and result.failed_task == "a"
    assert result.error == "the run store could not save task results: OSError: disk full"
    assert result.tasks["b"].status == "cancelled"

    class Unrecordable(MemoryStore):
        async def create_run(self, run: RunRecord) -> None:
            raise OSError("read-only")

    model = FakeModel()
    with pytest.raises(StoreError, match="could not record the run: OSError: read-only"):
        await Engine(models=model, store=Unrecordable()).run(CHAIN, {"topic": "tea"})
    assert model.calls == []  # nothing ran that was not recorded


async def test_a_store_that_cannot_record_model_calls_fails_the_run_loudly() -> None:
    # The calls are written after the results their readers wait for: a failure there still fails the run.
    class NoCalls(MemoryStore):
        async def record_attempts(self, attempts: Any) -> None:
            raise OSError("disk full")

    result = await Engine(models=FakeModel(), store=NoCalls()).run(CHAIN, {"topic": "tea"})
    assert result.status == "failed" and result.failed_task == "a"
    assert result.error == "the run store could not record model calls: OSError: disk full"
    assert result.tasks["c"].status == "cancelled"


async def test_what_cannot_be_resumed_says_why(tmp_path: Path) -> None:
    store = MemoryStore()
    engine = Engine(models=FakeModel(), store=store)
    with pytest.raises(StoreError, match="no run 'nope' in the run store"):
        await engine.resume("nope")
    done = await engine.run(CHAIN, {"topic": "tea"})
    with pytest.raises(StoreError, match="already succeeded"):
        await engine.resume(done.run_id)
    with pytest.raises(StoreError, match="no run store, so it keeps no runs to resume"):
        await Engine(models=FakeModel()).resume(done.run_id)


async def test_a_changed_workflow_file_is_refused_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(CHAIN))
    store = MemoryStore()
    model = FakeModel({"fast_ai": FailingOnce("c")})
    engine = Engine(models=model, store=store)
    failed = await engine.run(path, {"topic": "tea"})
    assert store.runs[failed.run_id].source == str(path)
    changed = json.loads(json.dumps(CHAIN))
    changed["stages"][0]["tasks"][3]["prompt"] = "d changed after {{ c }}"
    path.write_text(json.dumps(changed))
    with pytest.raises(StoreError, match=r"chain.json changed since run .* started"):
        await engine.resume(failed.run_id)
    resumed = await engine.resume(failed.run_id, force=True)
    assert resumed.status == "succeeded" and resumed.outputs["last"].startswith("<d changed after")
    assert prompts(model) == ["a", "b", "c", "c", "d"]


async def test_a_run_whose_file_is_gone_resumes_from_the_stored_workflow(tmp_path: Path) -> None:
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(CHAIN))
    store = MemoryStore()
    model = FakeModel({"fast_ai": FailingOnce("b")})
    failed = await Engine(models=model, store=store).run(path, {"topic": "tea"})
    path.unlink()
    resumed = await Engine(models=model, store=store).resume(failed.run_id)
    assert resumed.status == "succeeded" and prompts(model) == ["a", "b", "b", "c", "d"]


async def test_a_non_critical_failure_is_kept_and_a_critical_one_runs_again() -> None:
    flow = json.loads(json.dumps(CHAIN))
    flow["stages"][0]["tasks"][1]["critical"] = False  # b fails softly: c reads null
    flow["stages"][0]["tasks"][2]["prompt"] = "c after {{ b or 'nothing' }}"
    store = MemoryStore()
    soft, hard = FailingOnce("b"), FailingOnce("d")
    model = FakeModel({"fast_ai": lambda request: (soft if request.messages[-1].content.startswith("b")
                                                   else hard)(request)})
    engine = Engine(models=model, store=store)
    failed = await engine.run(flow, {"topic": "tea"})
    assert failed.tasks["b"].status == "failed" and failed.failed_task == "d"
    resumed = await engine.resume(failed.run_id)
    assert resumed.status == "succeeded" and resumed.tasks["b"].status == "failed"
    assert prompts(model) == ["a", "b", "c", "d", "d"]  # b is not asked again: its null was the answer


async def test_a_run_still_beating_elsewhere_is_not_resumed_unless_forced() -> None:
    store = MemoryStore()
    await store.create_run(RunRecord("live", "chain", CHAIN, {"topic": "tea"}, started_at=1e18, owner="host:1"))
    await store.save_tasks([TaskRecord("live", "a", "succeeded", "<a>")])
    engine = Engine(models=FakeModel(), store=store)
    with pytest.raises(StoreError, match="still running in host:1"):
        await engine.resume("live")
    with capture_events(engine) as events:
        resumed = await engine.resume("live", force=True)
    assert resumed.status == "succeeded" and resumed.tasks["a"].output == "<a>"
    started = [event.task_id for event in events if event.type == "task_started"]
    assert started == ["b", "c", "d"]


async def test_every_model_call_is_recorded_and_summed_up_in_stats() -> None:
    from engine import Price

    answers = {"fast_ai": [ModelError("rate_limit", "slow down", retry_after=0), "fine"],
               "medium_ai": [ModelError("server_error", "down")]}
    flow = {"dsl": "orchestrion/v1", "name": "calls", "defaults": {"retry": {"max_attempts": 2, "max_delay": 0}},
            "stages": [{"type": "linear", "tasks": [
                {"id": "x", "model": "fast_ai", "prompt": "hello"},
                {"id": "y", "model": ["medium_ai", "thinking_ai"], "prompt": "again"}]}]}
    store = MemoryStore()

    async def no_wait(seconds: float) -> None:
        return None

    engine = Engine(models=FakeModel(answers), store=store, sleep=no_wait,
                    prices={"fast_ai": Price(1.0, 2.0), "thinking_ai": Price(3.0, 4.0)})
    result = await engine.run(flow)
    assert result.status == "succeeded"
    calls = sorted((a.task_id, a.attempt, a.model, a.outcome) for a in store.attempts)
    assert calls == [("x", 1, "fast_ai", "rate_limit"), ("x", 2, "fast_ai", "ok"),
                     ("y", 1, "medium_ai", "server_error"), ("y", 2, "thinking_ai", "ok")]
    assert all(a.run_id == result.run_id and a.workflow == "calls" and a.latency_s >= 0 for a in store.attempts)
    stats = await engine.stats()
    assert stats.total.calls == 4 and stats.total.retries == 2
    assert stats.by_model["fast_ai"].failures == {"rate_limit": 1}
    assert stats.by_model["medium_ai"].failures == {"server_error": 1}
    assert stats.by_workflow["calls"].cost_usd == pytest.approx(result.totals.cost_usd) and result.totals.cost_usd > 0
    assert stats.by_model["thinking_ai"].latency_p50_s is not None
    assert (await engine.stats(workflow="other")).total.calls == 0


async def test_a_cached_answer_is_a_free_call_in_stats() -> None:
    from engine import Price

    flow = {"dsl": "orchestrion/v1", "name": "cached", "defaults": {"cache": True},
            "stages": [{"type": "linear", "tasks": [{"id": "x", "model": "fast_ai", "prompt": "same"}]}]}
    store = MemoryStore()
    model = FakeModel()
    engine = Engine(models=model, store=store, prices={"fast_ai": Price(1.0, 2.0)})
    first, second = await engine.run(flow), await engine.run(flow)
    assert len(model.calls) == 1 and first.totals.cost_usd > 0 and second.totals.cost_usd == 0
    stats = await engine.stats()
    assert (stats.total.calls, stats.total.cached) == (2, 1)
    assert stats.total.cost_usd == first.totals.cost_usd
    assert stats.total.input_tokens == first.totals.input_tokens  # the hit used none


# --------------------------------------------------------------------------- any crashes, same outputs

WIDE_AND_DEEP = {
    "dsl": "orchestrion/v1", "name": "mixed", "defaults": {"model": "fast_ai", "retry": None},
    "limits": {"max_concurrency": 3},
    "stages": [
        {"type": "linear", "tasks": [{"id": f"w{n}", "prompt": f"w{n}"} for n in range(6)]},
        {"type": "inline", "tasks": [{"id": "s1", "prompt": "s1 {{ w0 }} {{ w5 }}"},
                                     {"id": "s2", "prompt": "s2 {{ s1 }}"}]},
        {"type": "inline", "repeat": {"max_rounds": 3, "until": "loop.round >= 3"},
         "tasks": [{"id": "r", "prompt": "r {{ r }} {{ s2 }}"}]},
        {"type": "linear", "tasks": [{"id": "end", "prompt": "end {{ r }} {{ w3 }}"}]},
    ],
}


async def _crashing_run(crash_after: list[int]) -> tuple[dict[str, Any], Counter[str], list[set[str]]]:
    """Run, cancelling the run (as a killed process would stop) after each count of calls in
    ``crash_after``, resuming after each; the outputs, calls per prompt, and the tasks stored at each crash."""
    store = MemoryStore()
    asked: Counter[str] = Counter()
    scope_box: list[anyio.CancelScope] = []
    budget = list(crash_after)

    def answer(request: ModelRequest) -> str:
        prompt = request.messages[-1].content
        asked[prompt] += 1
        if budget and sum(asked.values()) >= budget[0]:
            budget.pop(0)
            scope_box[-1].cancel()
        return f"<{prompt}>"

    engine = Engine(models=FakeModel({"fast_ai": answer}), store=store)
    stored_at_crash: list[set[str]] = []
    run_id = "prop"
    first = True
    while True:
        with anyio.CancelScope() as scope:
            scope_box.append(scope)
            result = await (engine.run(WIDE_AND_DEEP, run_id=run_id) if first else engine.resume(run_id))
            return result.outputs, asked, stored_at_crash
        first = False
        stored_at_crash.append({task for task, record in store.tasks[run_id].items() if record.status == "succeeded"})


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=14), max_size=4).map(sorted))
def test_any_sequence_of_crashes_resumes_to_the_same_outputs(crash_after: list[int]) -> None:
    whole, _, _ = anyio.run(_crashing_run, [])
    outputs, asked, stored = anyio.run(_crashing_run, crash_after)
    assert outputs == whole
    repeated = {prompt for prompt, count in asked.items() if count > 1}
    for finished in stored:  # a task stored as done at a crash was never asked again
        assert not {prompt for prompt in repeated if prompt.split(" ")[0] in finished}


async def test_the_finished_items_of_a_for_each_are_not_asked_again() -> None:
    flow = {"dsl": "orchestrion/v1", "name": "items", "defaults": {"model": "fast_ai", "retry": None},
            "stages": [{"type": "linear", "tasks": [
                {"id": "each", "for_each": "[1, 2, 3, 4, 5, 6]", "max_concurrency": 1, "prompt": "item {{ item }}"}]}]}
    store = MemoryStore()
    model = FakeModel({"fast_ai": FailingOnce("item 5")})
    engine = Engine(models=model, store=store)
    failed = await engine.run(flow)
    assert failed.status == "failed"
    saved = {int(key[5:-1]) + 1 for key, record in store.tasks[failed.run_id].items() if record.status == "item"}
    asked_before = Counter(call.messages[-1].content for call in model.calls)
    assert saved and saved == {int(prompt[5:]) for prompt in asked_before} - {5}  # every finished item, kept
    resumed = await engine.resume(failed.run_id)
    assert resumed.status == "succeeded"
    assert resumed.tasks["each"].output == [f"<item {n}>" for n in range(1, 7)]
    asked = Counter(call.messages[-1].content for call in model.calls)
    assert all(asked[f"item {n}"] == 1 for n in saved)  # (trio may run the items in any order)
    assert asked["item 5"] == 2 and sum(asked.values()) == 7
