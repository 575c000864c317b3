"""The shipped templates: each validates, draws, runs, and takes the branches it documents.

Parallel tasks call the fake model in an order that differs between asyncio and trio, so
where tasks run in parallel on one alias, answers are chosen by the prompt, never by order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

import engine
from engine import Engine, ModelError, ModelRequest, RunResult
from engine.testing import FakeModel
from tests.support.catalogs import GENERATORS, VISION, able_catalog

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE_FILES = sorted(path for path in TEMPLATES.iterdir() if path.suffix in (".yaml", ".yml", ".json"))
EXPECTED = {"research_report", "marketing_campaign", "code_project", "experts", "critique_refine", "phased"}


def template(name: str) -> Path:
    return TEMPLATES / f"{name}.yaml"


async def no_sleep(seconds: float) -> None:
    """Retries back off without waiting."""




def make_engine(script: Mapping[str, Any] | None = None, artifacts: Path | None = None) -> tuple[Engine, FakeModel]:
    fake = FakeModel(script, vision=VISION, generates=GENERATORS)
    return Engine(models=fake, sleep=no_sleep, artifacts=artifacts), fake


def by_prompt(*pairs: tuple[str, Any]) -> Callable[[ModelRequest], Any]:
    """An answer chosen by the first marker found in the prompt (an exception is raised)."""

    def answer(request: ModelRequest) -> Any:
        for marker, value in pairs:
            if marker in request.prompt:
                return value
        raise AssertionError(f"no scripted answer for the prompt {request.prompt[:80]!r}")

    return answer


def statuses(result: RunResult, *task_ids: str) -> dict[str, str]:
    return {task_id: result.tasks[task_id].status for task_id in task_ids}


# -- every template ------------------------------------------------------------------------------

def test_the_expected_templates_are_there() -> None:
    assert {path.stem for path in TEMPLATE_FILES} >= EXPECTED


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda path: path.stem)
def test_template_validates_and_graphs_every_node(path: Path) -> None:
    workflow = engine.load_workflow(path)
    assert workflow.name == path.stem and workflow.description
    for name, schema in workflow.inputs.items():
        assert schema.get("description") or "default" in schema, f"input {name!r} needs a description"
    plan = engine.compile_workflow(workflow, able_catalog())
    mermaid = engine.to_mermaid(plan)
    assert mermaid.startswith("flowchart TD")
    for node_id in plan.nodes:
        safe = re.sub(r"[^A-Za-z0-9_]", "_", node_id)
        assert re.search(rf"^    {re.escape(safe)}\S*[\[{{]", mermaid, re.MULTILINE), node_id


@pytest.mark.anyio
@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda path: path.stem)
async def test_template_runs_on_the_echo_model(path: Path, tmp_path: Path) -> None:
    from engine.providers.fake import solid_png

    workflow = engine.load_workflow(path)
    inputs = {name: solid_png(4, 4, (1, 2, 3)) if schema.get("type") == "image" else "x"
              for name, schema in workflow.inputs.items() if "default" not in schema}
    result = await make_engine(artifacts=tmp_path)[0].run(path, inputs)
    assert result.status == "succeeded", result.error
    assert set(result.outputs) == set(workflow.outputs)


# -- research_report -----------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize(("confidence", "outlook"), [(0.3, "skipped"), (0.9, "succeeded")])
async def test_research_report_outlook_depends_on_confidence(confidence: float, outlook: str) -> None:
    run, fake = make_engine({
        "thinking_ai": ["notes", {"text": "Solar is growing.", "confidence": confidence}, "Bright."],
        "fast_ai": "Acme, Sunco"})
    result = await run.run(template("research_report"), {"topic": "solar"})
    assert result.status == "succeeded"
    assert result.tasks["outlook"].status == outlook
    assert result.outputs["confidence"] == confidence
    expected = "Solar is growing.\n\nBright." if outlook == "succeeded" else "Solar is growing.\n\n"
    assert result.outputs["report"] == expected
    summary_prompt = fake.calls_to("thinking_ai")[1].prompt
    assert "notes" in summary_prompt and "Acme, Sunco" in summary_prompt


# -- marketing_campaign --------------------------------------------------------------------------

@pytest.mark.anyio
async def test_marketing_campaign_produces_every_output() -> None:
    copy = by_prompt(("Instagram post", "IG: shine on"), ("Facebook post", "FB: a story"),
                     ("email template", "Subject: shine"))
    run, fake = make_engine({"product_ai": "CONCEPT: Shine", "medium_ai": copy, "fast_ai": "Tweet: shine #glow",
                             "thinking_ai": "THE BRIEF"})
    result = await run.run(template("marketing_campaign"), {"product": "a lamp"})
    assert result.status == "succeeded", result.error
    assert result.outputs == {
        "concept": "CONCEPT: Shine",
        "posts": {"instagram": "IG: shine on", "twitter": "Tweet: shine #glow", "facebook": "FB: a story"},
        "email": "Subject: shine",
        "brief": "THE BRIEF",
        "image": None,
        "video": None,
    }
    assert all("CONCEPT: Shine" in call.prompt for call in fake.calls_to("medium_ai"))
    assert "young professionals" in fake.calls_to("fast_ai")[0].prompt  # the audience's default
    (brief,) = fake.calls_to("thinking_ai")
    for text in ("IG: shine on", "Tweet: shine #glow", "FB: a story", "Subject: shine"):
        assert text in brief.prompt


# -- code_project --------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_code_project_produces_every_output() -> None:
    run, fake = make_engine({"thinking_ai": "DESIGN", "code_ai": ["def add(a, b): ...", "def test_add(): ..."],
                             "medium_ai": ["DOCS", "# README"]})
    result = await run.run(template("code_project"), {"spec": "add two numbers", "language": "rust"})
    assert result.status == "succeeded", result.error
    assert result.outputs == {"design": "DESIGN", "code": "def add(a, b): ...", "tests": "def test_add(): ...",
                              "docs": "DOCS", "readme": "# README"}
    implementation, tests = fake.calls_to("code_ai")
    assert "DESIGN" in implementation.prompt and "rust" in implementation.prompt
    assert "def add(a, b)" in tests.prompt
    readme = fake.calls_to("medium_ai")[1].prompt
    assert "DOCS" in readme and "def test_add" in readme and "DESIGN" in readme


# -- experts -------------------------------------------------------------------------------------

EXPERTS = ("finance", "technical", "general")
EXPERT_ANSWERS = {"finance_expert": "FINANCE ANSWER", "technical_expert": "TECHNICAL ANSWER",
                  "general_expert": "GENERAL ANSWER"}


def aggregate(request: ModelRequest) -> str:
    for answer in EXPERT_ANSWERS.values():
        if answer in request.prompt:
            return f"enhanced {answer}"
    return "alone"


@pytest.mark.anyio
@pytest.mark.parametrize("category", EXPERTS)
async def test_experts_route_by_a_confident_model(category: str) -> None:
    run, fake = make_engine({"router": {"category": category, "confidence": 0.9}, **EXPERT_ANSWERS,
                             "aggregator": aggregate})
    result = await run.run(template("experts"), {"question": "What should I do next?"})
    assert result.status == "succeeded", result.error
    assert statuses(result, *EXPERTS) == {name: "succeeded" if name == category else "skipped" for name in EXPERTS}
    assert result.outputs["category"] == category and result.outputs["routed_by"] == "model"
    assert result.outputs["mode"] == "multi-expert"
    assert result.outputs["answer"] == f"enhanced {category.upper()} ANSWER"
    assert [call.model for call in fake.calls] == ["router", f"{category}_expert", "aggregator"]


@pytest.mark.anyio
@pytest.mark.parametrize(("question", "category", "routed_by"), [
    ("Should I invest in stocks or bonds?", "finance", "keywords"),
    ("My Python code has a bug", "technical", "keywords"),
    ("Tell me about the history of Rome", "general", "default"),
])
@pytest.mark.parametrize("router", [ModelError("server_error", "down"), {"category": "finance", "confidence": 0.2}],
                         ids=["router-fails", "router-unsure"])
async def test_experts_route_by_keywords_when_the_router_fails_or_is_unsure(
        question: str, category: str, routed_by: str, router: Any) -> None:
    run, _ = make_engine({"router": router, **EXPERT_ANSWERS, "aggregator": aggregate})
    result = await run.run(template("experts"), {"question": question})
    assert result.status == "succeeded", result.error
    assert result.tasks["guess"].status == ("failed" if isinstance(router, ModelError) else "succeeded")
    assert (result.outputs["category"], result.outputs["routed_by"]) == (category, routed_by)
    assert statuses(result, *EXPERTS) == {name: "succeeded" if name == category else "skipped" for name in EXPERTS}
    assert result.outputs["mode"] == "multi-expert"
    assert result.outputs["answer"] == f"enhanced {category.upper()} ANSWER"


@pytest.mark.anyio
async def test_experts_fall_back_to_a_single_model_when_the_expert_fails() -> None:
    run, fake = make_engine({"router": {"category": "technical", "confidence": 0.95},
                             "technical_expert": ModelError("server_error", "down"), "aggregator": aggregate})
    result = await run.run(template("experts"), {"question": "Why is my server slow?"})
    assert result.status == "succeeded", result.error
    assert statuses(result, *EXPERTS) == {"finance": "skipped", "technical": "failed", "general": "skipped"}
    assert result.outputs["mode"] == "single-model fallback"
    assert result.outputs["answer"] == "[single-model fallback: the expert failed] alone"
    (alone,) = fake.calls_to("aggregator")
    assert "unavailable" in alone.prompt and "single model" in alone.prompt
    assert not fake.calls_to("general_expert")


@pytest.mark.anyio
async def test_experts_fallback_still_answers_when_the_aggregator_fails_too() -> None:
    run, _ = make_engine({"router": ModelError("auth", "bad key"), "finance_expert": ModelError("auth", "bad key"),
                          "aggregator": ModelError("auth", "bad key"), "general_expert": "from general"})
    result = await run.run(template("experts"), {"question": "Is the stock market up?"})
    assert result.status == "succeeded", result.error
    assert result.tasks["finance"].status == "failed" and result.tasks["answer"].model == "general_expert"
    assert result.outputs["mode"] == "single-model fallback"
    assert result.outputs["answer"] == "[single-model fallback: the expert failed] from general"


@pytest.mark.anyio
async def test_experts_enhancement_can_fall_back_to_general_expert() -> None:
    run, _ = make_engine({"router": {"category": "finance", "confidence": 0.9}, "finance_expert": "FINANCE ANSWER",
                          "aggregator": ModelError("auth", "bad key"), "general_expert": aggregate})
    result = await run.run(template("experts"), {"question": "Buy or rent?"})
    assert result.status == "succeeded", result.error
    assert result.tasks["answer"].model == "general_expert"
    assert result.outputs["mode"] == "multi-expert" and result.outputs["answer"] == "enhanced FINANCE ANSWER"


# -- critique_refine -----------------------------------------------------------------------------

async def run_critique(scores: list[float], threshold: float | None = None) -> tuple[RunResult, FakeModel]:
    drafts = [f"draft {n}" for n in range(1, 11)]
    run, fake = make_engine({
        "thinking_ai": drafts,
        "research_ai": [{"score": n, "critique": f"facts {n}"} for n in range(1, 11)],
        "medium_ai": [{"score": n, "critique": f"style {n}"} for n in range(1, 11)],
        "fast_ai": [{"value": value} for value in scores],
    })
    inputs: dict[str, Any] = {"task": "a poem about rivers"}
    if threshold is not None:
        inputs["threshold"] = threshold
    return await run.run(template("critique_refine"), inputs), fake


def rounds_run(result: RunResult) -> list[int]:
    return [n for n in range(1, 11) if result.tasks[f"draft@{n}"].status == "succeeded"]


@pytest.mark.anyio
async def test_critique_refine_stops_at_the_threshold() -> None:
    result, fake = await run_critique([5, 7, 9, 10])
    assert result.status == "succeeded", result.error
    assert rounds_run(result) == [1, 2, 3] and result.tasks["draft@4"].status == "skipped"
    assert result.outputs == {"draft": "draft 3", "score": 9, "scores": [5, 7, 9]}
    first, second, _ = fake.calls_to("thinking_ai")
    assert "first draft" in first.prompt and "a poem about rivers" in first.prompt
    assert "draft 1" in second.prompt and "facts 1" in second.prompt and "style 1" in second.prompt
    assert result.tasks["previous@1"].output is None and result.tasks["previous@2"].output == {"value": 5}


@pytest.mark.anyio
async def test_critique_refine_threshold_is_an_input() -> None:
    result, _ = await run_critique([5, 7, 9], threshold=6)
    assert rounds_run(result) == [1, 2] and result.outputs["scores"] == [5, 7]


@pytest.mark.anyio
@pytest.mark.parametrize("scores", [[5, 7, 6], [4, 4], [3, 6, 6.5, 2]], ids=["worse", "equal", "later"])
async def test_critique_refine_stops_when_the_score_stops_improving(scores: list[float]) -> None:
    result, _ = await run_critique([*scores, 9])  # the 9 would pass the threshold, but no round asks for it
    assert result.status == "succeeded", result.error
    assert rounds_run(result) == list(range(1, len(scores) + 1))
    assert result.outputs == {"draft": f"draft {len(scores)}", "score": scores[-1], "scores": scores}


@pytest.mark.anyio
async def test_critique_refine_stops_after_ten_rounds() -> None:
    climbing = [1, 2, 3, 4, 5, 6, 7, 7.5, 7.7, 7.9]
    result, fake = await run_critique(climbing)
    assert result.status == "succeeded", result.error
    assert rounds_run(result) == list(range(1, 11)) and "draft@11" not in result.tasks
    assert result.outputs == {"draft": "draft 10", "score": 7.9, "scores": climbing}
    assert len(fake.calls_to("fast_ai")) == 10


@pytest.mark.anyio
async def test_critique_refine_goes_on_without_a_critique() -> None:
    scores = iter([{"value": 5}, {"value": 9}])

    def judge(request: ModelRequest) -> Any:  # also the style critic's fallback, which fails too
        return ModelError("auth", "no") if "Critique the style" in request.prompt else next(scores)

    run, fake = make_engine({"thinking_ai": ["draft 1", "draft 2"], "research_ai": ModelError("auth", "no"),
                             "medium_ai": ModelError("auth", "no"), "fast_ai": judge})
    result = await run.run(template("critique_refine"), {"task": "a poem"})
    assert result.status == "succeeded", result.error
    assert statuses(result, "accuracy@1", "style@1", "score@1") == {
        "accuracy@1": "failed", "style@1": "failed", "score@1": "succeeded"}
    assert result.outputs["scores"] == [5, 9]
    assert "Critique on substance (score n/a)" in fake.calls_to("thinking_ai")[1].prompt
    assert "Substance: null" in fake.calls_to("fast_ai")[-1].prompt


# -- phased --------------------------------------------------------------------------------------

PHASES = ("planning", "research", "generation", "review", "refinement", "validation")
PHASE_ALIASES = ("thinking_ai", "medium_ai", "research_ai", "fast_ai")


def phased_engine(failing: Mapping[str, BaseException] | None = None) -> tuple[Engine, FakeModel]:
    answers = {"planning": "THE PLAN", "research": "THE FACTS", "generation": "FIRST VERSION",
               "review": "THE REVIEW", "refinement": "FINAL VERSION", "validation": {"passed": True, "issues": []}}
    answers.update(failing or {})
    answer = by_prompt(*((f"{phase.upper()}.", answers[phase]) for phase in PHASES))
    return make_engine(dict.fromkeys(PHASE_ALIASES, answer))


def prompt_of(fake: FakeModel, phase: str) -> str:
    return next(call.prompt for call in fake.calls if call.prompt.startswith(f"{phase.upper()}."))


@pytest.mark.anyio
async def test_phased_runs_every_phase() -> None:
    run, fake = phased_engine()
    result = await run.run(template("phased"), {"goal": "a product launch plan"})
    assert result.status == "succeeded", result.error
    assert statuses(result, *PHASES) == dict.fromkeys(PHASES, "succeeded")
    assert result.outputs == {"text": "FINAL VERSION", "plan": "THE PLAN", "refined": True, "validated": True,
                              "issues": [], "failed_phases": []}
    assert "THE FACTS" in prompt_of(fake, "generation") and "THE REVIEW" in prompt_of(fake, "refinement")
    assert "FINAL VERSION" in prompt_of(fake, "validation")
    assert [call.model for call in fake.calls] == [
        "thinking_ai", "research_ai", "thinking_ai", "medium_ai", "thinking_ai", "fast_ai"]


@pytest.mark.anyio
async def test_phased_falls_back_to_the_next_model_of_a_phase() -> None:
    run, _ = make_engine({"research_ai": ModelError("auth", "bad key")})
    result = await run.run(template("phased"), {"goal": "a plan"})
    assert result.status == "succeeded" and result.tasks["research"].model == "medium_ai"
    assert result.outputs["failed_phases"] == []


@pytest.mark.anyio
@pytest.mark.parametrize("phase", ["research", "review", "refinement", "validation"])
async def test_phased_goes_on_when_an_optional_phase_fails(phase: str) -> None:
    run, fake = phased_engine({phase: ModelError("server_error", "down")})
    result = await run.run(template("phased"), {"goal": "a product launch plan"})
    assert result.status == "succeeded", result.error
    assert statuses(result, *PHASES) == {name: "failed" if name == phase else "succeeded" for name in PHASES}
    assert result.outputs["failed_phases"] == [phase]
    assert result.outputs["text"] == ("FIRST VERSION" if phase == "refinement" else "FINAL VERSION")
    assert result.outputs["refined"] is (phase != "refinement")
    assert result.outputs["validated"] is (None if phase == "validation" else True)
    if phase == "research":
        assert "no research available" in prompt_of(fake, "generation")
    if phase == "review":
        assert "no review available" in prompt_of(fake, "refinement")
    if phase == "refinement":
        assert "FIRST VERSION" in prompt_of(fake, "validation")


@pytest.mark.anyio
async def test_phased_reports_every_failed_optional_phase() -> None:
    down = ModelError("bad_request", "no")
    run, _ = phased_engine({"research": down, "review": down, "refinement": down, "validation": down})
    result = await run.run(template("phased"), {"goal": "a plan"})
    assert result.status == "succeeded", result.error
    assert result.outputs["failed_phases"] == ["research", "review", "refinement", "validation"]
    assert result.outputs["text"] == "FIRST VERSION" and result.outputs["validated"] is None


@pytest.mark.anyio
@pytest.mark.parametrize("phase", ["planning", "generation"])
async def test_phased_fails_when_a_critical_phase_fails(phase: str) -> None:
    run, fake = phased_engine({phase: ModelError("bad_request", "refused")})
    result = await run.run(template("phased"), {"goal": "a plan"})
    assert result.status == "failed" and result.failed_task == phase
    assert result.outputs == {}
    assert result.tasks[phase].status == "failed"
    later = PHASES[PHASES.index(phase) + 1:]
    assert all(result.tasks[name].status == "cancelled" for name in later)
    assert {call.model for call in fake.calls if call.prompt.startswith(f"{phase.upper()}.")} == {
        "thinking_ai", "medium_ai"}  # the whole fallback chain was tried
