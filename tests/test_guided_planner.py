"""The planner a small model can drive: templates matched and filled, patterns with prompts from skeletons,
the model's constrained choice, models and addons by fit, plan lints fed back as repairs, and the mode
chosen by where the planner's model runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine import Catalog, Engine, EngineConfig, compile_workflow, load_workflow
from engine.cli import main
from engine.config import PlannerConfig
from engine.planner import PlannerLimits
from engine.planner.guided import PATTERNS, GuidedChoice, match_template, pattern_document, subject_of
from engine.planner.lints import lint_plan
from engine.providers.settings import FakeProviderConfig, LlamaCppProviderConfig
from engine.testing import FakeModel

pytestmark = pytest.mark.anyio


def guided(model: FakeModel | None = None, *, choose_with_model: bool = False, **options: Any) -> Engine:
    planner = PlannerConfig(mode="guided", choose_with_model=choose_with_model)
    return Engine(EngineConfig(planner=planner), models=model or FakeModel(), **options)


@pytest.mark.parametrize(("request_text", "keyword", "subject"), [
    ("Create a marketing campaign for eco-friendly water bottles", "marketing campaign", "eco-friendly water bottles"),
    ("Please write a research report on the electric scooter market", "research report",
     "the electric scooter market"),
    ("Market research about plant-based milk", "market research", "plant-based milk"),
    ("tea", None, "tea"),
])
def test_the_subject_is_what_follows_the_ask(request_text: str, keyword: str | None, subject: str) -> None:
    assert subject_of(request_text, keyword) == subject


async def test_a_request_that_names_a_template_gets_it_with_its_input_filled() -> None:
    model = FakeModel()
    engine = guided(model)
    outcome = await engine.plan_outcome("Create a marketing campaign for eco-friendly water bottles")
    assert outcome.mode == "guided" and outcome.choice is not None
    assert (outcome.choice.kind, outcome.choice.name) == ("template", "marketing_campaign")
    assert outcome.workflow is not None
    assert outcome.workflow.inputs["product"]["default"] == "eco-friendly water bottles"
    assert {stage.name for stage in outcome.workflow.stages} == {"concept", "copy", "brief"}  # the template itself
    assert outcome.attempts[0].lints == [] and model.calls == []  # planned without asking the model
    result = await engine.run(outcome.workflow)
    assert result.status == "succeeded" and "eco-friendly water bottles" in result.outputs["concept"]


async def test_a_user_template_is_matched_by_the_words_of_its_name(tmp_path: Path) -> None:
    (tmp_path / "sales_email.yaml").write_text(
        "dsl: orchestrion/v1\nname: sales_email\ninputs:\n  product: {type: string}\nstages:\n"
        "  - type: inline\n    tasks:\n      - {id: email, model: fast_ai, "
        "prompt: 'Write a friendly sales email that presents {{ product }} to a new customer.'}\n"
        "outputs:\n  email: '{{ email }}'\n")
    engine = guided(template_dirs=[tmp_path])
    outcome = await engine.plan_outcome("Write a sales email for our solar roof tiles")
    assert outcome.choice == GuidedChoice("template", "sales_email", "the request says 'sales email'",
                                          {"product": "our solar roof tiles"})
    assert match_template("Write an email to my aunt", {"sales_email": engine.catalog.load_workflow("sales_email")},
                          frozenset()) is None  # every word of the name, not one


@pytest.mark.parametrize("pattern", [pattern.name for pattern in PATTERNS])
def test_every_pattern_makes_a_lint_clean_plan_whose_later_steps_read_the_earlier(pattern: str) -> None:
    catalog = Catalog.default()
    request = "Write a Python script that sorts photos by date"
    document = pattern_document(GuidedChoice("pattern", pattern, "test", {}), request, catalog)
    workflow = load_workflow(document)
    plan = compile_workflow(workflow, catalog)
    assert lint_plan(workflow, plan, catalog, request) == []
    tasks = [task for stage in workflow.stages for task in stage.tasks]
    prompts = [task.prompt or "" for task in tasks]
    assert all(len(prompt.split()) >= 5 for prompt in prompts)  # sentences, not identifiers
    assert len(set(prompts)) == len(prompts)
    assert "{{ request }}" in prompts[0] and workflow.inputs["request"]["default"] == request
    if len(tasks) > 1:
        assert "{{ step" in prompts[-1]  # the last step builds on what came before
    assert any("code_ai" in (task.model if isinstance(task.model, list) else [task.model]) for task in tasks) \
        or pattern == "experts"  # a code request gets the code model where someone writes


@pytest.fixture
def chooser() -> tuple[FakeModel, Engine]:
    """A guided planner whose model answers a choice (built outside the event loop: it reads the addons)."""
    model = FakeModel({"thinking_ai": {"choice": "phased"}})
    return model, guided(model, choose_with_model=True)


@pytest.fixture
def rambler() -> Engine:
    return guided(FakeModel({"thinking_ai": "I think the best is probably a phased one"}), choose_with_model=True)


@pytest.fixture
def by_rule() -> tuple[FakeModel, Engine]:
    model = FakeModel({"thinking_ai": {"choice": "phased"}})
    return model, guided(model)


async def test_without_a_keyword_the_model_chooses_the_pattern_from_an_enum(
        chooser: tuple[FakeModel, Engine], rambler: Engine) -> None:
    model, engine = chooser
    outcome = await engine.plan_outcome("Sort out our family holiday")
    assert outcome.choice is not None and (outcome.choice.name, outcome.choice.reason) == \
        ("phased", "the planner model chose it")
    schema = model.calls[0].output_schema
    assert schema is not None and schema["properties"]["choice"]["enum"] == [p.name for p in PATTERNS]
    fallback = await rambler.plan_outcome("Sort out our family holiday")  # the answer is no choice: the rule
    assert fallback.choice is not None and fallback.choice.name == "research_draft_review"
    assert fallback.workflow is not None


async def test_by_default_no_keyword_means_a_fixed_rule_not_the_model(by_rule: tuple[FakeModel, Engine]) -> None:
    model, engine = by_rule
    question = await engine.plan_outcome("Is our family holiday sorted?")
    errand = await engine.plan_outcome("Sort out our family holiday")
    assert question.choice is not None and question.choice.name == "single"
    assert errand.choice is not None and errand.choice.name == "research_draft_review" and model.calls == []


async def test_keywords_decide_before_the_model_is_asked(chooser: tuple[FakeModel, Engine]) -> None:
    model, engine = chooser
    outcome = await engine.plan_outcome("What is the capital of Australia?")
    assert outcome.choice is not None and outcome.choice.name == "single" and model.calls == []


def test_orchestrion_plan_v_says_how_the_plan_was_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake}\ndefault_provider: dry\nplanner: {mode: guided}\n")
    flow = tmp_path / "flow.yaml"
    assert main(["plan", "-v", "Write a research report on tidal energy", "-o", str(flow),
                 "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "planned (guided) from the template 'research_report': the request says 'research report'" in err
    assert "input topic = 'tidal energy'" in err and "attempt 1: valid" in err
    assert load_workflow(flow).inputs["topic"]["default"] == "tidal energy"


# -- the free mode: lints fed back as repairs -----------------------------------------------------------------

POOR = {"name": "poor", "description": "A poor plan", "stages": [
    {"type": "linear", "tasks": [{"model": "fast_ai", "prompt": "create_marketing_campaign_now"},
                                 {"model": "fast_ai", "prompt": "create_marketing_campaign_now"}]},
    {"type": "inline", "tasks": [{"model": "fast_ai", "prompt": "Write the final campaign for {{ request }}"}]}]}
BETTER = {"name": "better", "description": "A better plan", "stages": [
    {"type": "inline", "tasks": [
        {"model": "product_ai", "prompt": "Write three campaign ideas for {{ request }}, one line each."},
        {"model": "medium_ai", "prompt": "Pick the strongest of these ideas and write it out:\n{{ step1 }}"}]}]}


async def test_in_free_mode_lint_findings_are_fed_back_and_the_better_plan_is_kept() -> None:
    model = FakeModel({"thinking_ai": [POOR, BETTER]})
    engine = Engine(models=model)
    outcome = await engine.plan_outcome("a marketing campaign for tea")
    assert outcome.mode == "free" and len(outcome.attempts) == 2
    first = outcome.attempts[0]
    assert first.problems == [] and any("[identifier-prompt]" in lint for lint in first.lints)
    assert any("[duplicate-prompt]" in lint for lint in first.lints)
    assert "[duplicate-prompt]" in model.calls[1].messages[-1].content  # the repair says what to fix
    assert outcome.workflow is not None and outcome.workflow.name == "better" and outcome.attempts[1].lints == []


async def test_when_repairs_run_out_the_valid_plan_with_the_fewest_findings_is_kept() -> None:
    engine = Engine(models=FakeModel({"thinking_ai": [POOR]}), planner_limits=PlannerLimits(max_repairs=1))
    outcome = await engine.plan_outcome("a marketing campaign for tea")
    assert len(outcome.attempts) == 2 and outcome.workflow is not None and outcome.workflow.name == "poor"
    assert outcome.attempts[-1].lints  # kept, with its findings


def test_auto_mode_is_guided_for_a_model_in_process_and_free_otherwise() -> None:
    local = Engine(EngineConfig(providers={"local": LlamaCppProviderConfig(kind="llama_cpp")},
                                default_provider="local"))
    fake = Engine(EngineConfig(providers={"dry": FakeProviderConfig(kind="fake")}, default_provider="dry"))
    free = Engine(EngineConfig(providers={"local": LlamaCppProviderConfig(kind="llama_cpp")},
                               default_provider="local", planner=PlannerConfig(mode="free")))
    assert [engine._planner_mode("thinking_ai") for engine in (local, fake, free)] == ["guided", "free", "free"]
    assert json.loads(json.dumps(PlannerConfig().model_dump())) == {"mode": "auto", "choose_with_model": False}
