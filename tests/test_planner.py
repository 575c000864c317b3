"""The master planner: scripted answers invalid in each way the validator knows, repairs, limits,
``plan:`` tasks, the ``orchestrion plan`` command, and a plan by the real local model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import Engine, ModelRequest, PlanningError, load_workflow
from engine.cli import main
from engine.model.prices import Price
from engine.planner import PlannerLimits, planner_schema
from engine.testing import FakeModel, capture_events

pytestmark = pytest.mark.anyio


def plan(*stages: tuple[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """A planner answer: stages of (type, [(model, prompt)]); the tasks become step1, step2... in order."""
    return {"name": "planned", "description": "A planned workflow",
            "stages": [{"type": kind, "tasks": [{"model": m, "prompt": p} for m, p in tasks]}
                       for kind, tasks in stages]}


GOOD = plan(("linear", [("research_ai", "Facts about {{ request }}"), ("product_ai", "Ideas for {{ request }}")]),
            ("inline", [("aggregator", "Combine {{ step1 }} and {{ step2 }}")]))

INVALID = {
    "not JSON": "Sure! Here is a plan: stage one...",
    "not the planner schema": {"name": "x", "stages": []},
    "a task with an id": {**GOOD, "stages": [{"type": "inline", "tasks": [
        {"id": "a", "model": "fast_ai", "prompt": "Do {{ request }}"}]}]},
    "unknown model alias": plan(("inline", [("gpt_9000", "Do {{ request }}")])),
    "a later task": plan(("inline", [("fast_ai", "Use {{ step2 }} for {{ request }}"),
                                     ("fast_ai", "Then {{ request }}")])),
    "a parallel sibling": plan(("linear", [("fast_ai", "Use {{ step2 }} now"), ("fast_ai", "Other {{ request }}")])),
    "an unknown name": plan(("inline", [("fast_ai", "Research {{ topic }} please")])),
    "its own output": plan(("inline", [("fast_ai", "Improve {{ step1 }} for {{ request }}")])),
    "a template that does not parse": plan(("inline", [("fast_ai", "Broken {{ request ")])),
}


@pytest.mark.parametrize("why", sorted(INVALID))
async def test_an_invalid_answer_is_repaired_with_the_problems_fed_back(why: str) -> None:
    fake = FakeModel({"thinking_ai": [INVALID[why], GOOD]})
    outcome = await Engine(models=fake).plan_outcome("a launch plan")
    assert outcome.workflow is not None and not outcome.valid_first_try
    assert len(outcome.attempts) == 2 and outcome.attempts[0].problems
    repair = fake.calls[1].messages
    assert repair[-2].role == "assistant" and repair[-1].content.startswith("That answer is invalid:")
    assert outcome.attempts[0].problems[0].split(":")[0] in repair[-1].content


async def test_the_planner_is_told_the_dsl_aliases_addons_and_templates() -> None:
    fake = FakeModel({"thinking_ai": GOOD})
    engine = Engine(models=fake)
    workflow = await engine.plan("a launch plan")
    system = fake.calls[0].messages[0].content
    assert "linear" in system and "finance_expert: finance and markets" in system
    assert "blog_writing" in system and "research_report" in system
    assert fake.calls[0].output_schema == planner_schema(engine.catalog, PlannerLimits())
    assert workflow.inputs["request"]["default"] == "a launch plan"
    assert workflow.outputs == {"result": "{{ step3 }}"}


async def test_no_valid_answer_within_the_repairs_is_a_planning_error() -> None:
    fake = FakeModel({"thinking_ai": INVALID["a later task"]})
    with pytest.raises(PlanningError) as caught:
        await Engine(models=fake).plan("a launch plan")
    assert len(caught.value.attempts) == 3 and "'step2' is produced later" in caught.value.attempts[-1][0]


async def test_task_count_and_estimated_cost_are_limited() -> None:
    big = plan(("linear", [("fast_ai", f"Part {i} of {{{{ request }}}}") for i in range(3)]),
               ("linear", [("fast_ai", f"More {i} of {{{{ request }}}}") for i in range(3)]))
    from engine.planner import Planner

    engine = Engine(models=FakeModel())

    async def ask(request: ModelRequest) -> Any:
        return big

    small = Planner(ask, engine.catalog, engine.compile, limits=PlannerLimits(max_tasks=4, max_repairs=0))
    outcome = await small.plan("x")
    assert outcome.workflow is None and "6 tasks is more than the limit of 4" in outcome.attempts[0].problems
    cheap = Planner(ask, engine.catalog, engine.compile, prices={"fast_ai": Price(10.0, 30.0)},
                    limits=PlannerLimits(max_cost_usd=0.01, max_repairs=0))
    outcome = await cheap.plan("x")
    assert outcome.workflow is None and "above the limit of $0.0100" in outcome.attempts[0].problems[0]


async def test_a_plan_task_announces_the_plan_then_runs_it_nested() -> None:
    fake = FakeModel({"thinking_ai": GOOD})
    flow = {"dsl": "orchestrion/v1", "name": "p", "inputs": {"goal": {"type": "string"}},
            "stages": [{"type": "inline", "tasks": [{"id": "work", "plan": "Help me with {{ goal }}"},
                                                     {"id": "done", "call": "orchestrion.identity",
                                                      "with": {"value": "{{ work.result }}"}}]}]}
    engine = Engine(models=fake)
    with capture_events(engine) as events:
        result = await engine.run(flow, {"goal": "the marketing of tea"})  # product_ai fits it: no lint
    assert result.status == "succeeded", result.error
    assert fake.calls[0].messages[-1].content == "Request: Help me with the marketing of tea"
    created = next(e for e in events if e.type == "plan_created")
    assert created.task_id == "work" and created.workflow["name"] == "planned" and created.attempts == 1
    types = [e.type for e in events]
    assert types.index("plan_created") < types.index("task_started", types.index("plan_created"))
    assert result.tasks["done"].output.startswith(
        "[aggregator] Combine [research_ai] Facts about Help me with the marketing of tea")


def test_orchestrion_plan_writes_a_file_that_validates_and_runs(tmp_path, capsys) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake, answers: {thinking_ai: [" + json.dumps(json.dumps(GOOD)) +
                      "]}}\ndefault_provider: dry\n")
    flow = tmp_path / "flow.yaml"
    assert main(["plan", "Create a marketing campaign for eco-friendly water bottles", "-o", str(flow),
                 "--config", str(config)]) == 0
    assert "attempt 1: valid" in capsys.readouterr().err
    text = flow.read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    assert main(["validate", str(flow)]) == 0
    assert main(["run", str(flow), "--dry-run", "-q"]) == 0
    assert load_workflow(flow).inputs["request"]["default"].startswith("Create a marketing campaign")


@pytest.mark.timeout(600)  # the real model plans, then runs its plan: 10 s to 270 s measured, as plans vary
async def test_the_local_model_plans_a_workflow_that_validates_and_runs() -> None:
    engine = Engine()
    outcome = await engine.plan_outcome("Create a marketing campaign for eco-friendly water bottles")
    assert outcome.workflow is not None, [attempt.problems for attempt in outcome.attempts]
    document = dict(outcome.document or {})
    document["defaults"] = {**document.get("defaults", {}), "max_tokens": 16}  # keeps the real run short
    result = await engine.run(document)
    assert result.status == "succeeded", result.error
    assert outcome.mode == "guided" and outcome.choice is not None and outcome.choice.name == "marketing_campaign"
    assert outcome.choice.inputs == {"product": "eco-friendly water bottles"}
    assert set(result.outputs) == {"concept", "posts", "email", "brief", "image", "video"}
    assert all(result.outputs[name] for name in ("concept", "posts", "email", "brief"))
    assert result.outputs["image"] is None and result.outputs["video"] is None  # no image or video model here
