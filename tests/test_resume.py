"""Checkpoints and resume through the run store's contract (the in-memory store; the SQL stores'
own contract is tests/test_store.py, the crash of a real process tests/test_crash.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

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


async def test_what_cannot_be_resumed_says_why(tmp_path: Path) -> None:
    store = MemoryStore()
    engine = Engine(models=FakeModel(), store=store)
    with pytest.raises(StoreError, match="no run 'nope' in the run store"):
        await engine.resume("nope")
    done = await engine.run(CHAIN, {"topic": "tea"})
    with pytest.raises(StoreError, match="already succeeded"):
        await engine.resume(done.run_id)
    with pytest.raises(StoreError, match="no run store"):
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
