"""Plan lints (engine.planner.lints): each lint on a workflow that has the fault and on a close one that
has not, the outside check's bad plan and a good one for the same request, and the shipped templates."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.planner import ALIAS_ROLES
from engine.planner.lints import (
    LINT_CODES,
    Lint,
    alias_domains,
    classify,
    fits_model,
    fitting_addons,
    lint_plan,
)
from tests.support.catalogs import able_catalog

CATALOG = able_catalog()  # the media templates' models can do what they ask
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
CAMPAIGN = "Create a marketing campaign for eco-friendly water bottles"


def task(model: str, prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, **fields}


def document(*stages: tuple[str, list[dict[str, Any]]], request: str = CAMPAIGN,
             outputs: dict[str, str] | None = None) -> dict[str, Any]:
    """A workflow as the planner writes one: tasks step1, step2... in reading order, the request as an
    input, the last task as the output unless ``outputs`` are given."""
    number, built = 0, []
    for kind, tasks in stages:
        named = []
        for item in tasks:
            number += 1
            named.append({"id": f"step{number}", **item})
        built.append({"type": kind, "tasks": named})
    return {"dsl": "orchestrion/v1", "name": "planned", "version": "0.1.0", "description": request,
            "inputs": {"request": {"type": "string", "default": request}}, "stages": built,
            "outputs": outputs if outputs is not None else {"result": "{{ step" + str(number) + " }}"}}


def lints(doc: dict[str, Any], request: str = CAMPAIGN, catalog: engine.Catalog = CATALOG) -> list[Lint]:
    workflow = engine.load_workflow(doc)
    return lint_plan(workflow, engine.compile_workflow(workflow, catalog), catalog, request)


def found(result: list[Lint], code: str) -> list[Lint]:
    return [lint for lint in result if lint.code == code]


RESEARCH = task("research_ai", "Research the market for {{ request }}: competitors, buyers and what they care about.")
DRAFT = task("product_ai", "Write three short ad variants for {{ request }} based on this research: {{ step1 }}",
             addons=["ad_copy"])
REVIEW = task("medium_ai", "Review these ad variants for clarity and persuasion, and give the improved final "
                           "versions only: {{ step2 }}")
GOOD = document(("inline", [RESEARCH, DRAFT, REVIEW]))


# -- the lint record ------------------------------------------------------------------------------------------

def test_a_lint_is_frozen_and_reads_as_its_message_hint_and_code() -> None:
    lint = Lint("unread-output", "step1", "Nothing reads step1.", "Use it later.")
    assert str(lint) == "Nothing reads step1. Use it later. [unread-output]"
    with pytest.raises(dataclasses.FrozenInstanceError):
        lint.code = "other"  # type: ignore[misc]
    assert list(LINT_CODES) == ["identifier-prompt", "duplicate-prompt", "unread-output", "ignores-earlier",
                                "model-misfit", "addon-misfit"]


def test_a_good_plan_has_no_lints() -> None:
    assert lints(GOOD) == []


# -- identifier-prompt ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["create_marketing_campaign_for_eco_water_bottles",
                                    "createMarketingCampaign", "write-ad-copy-now", "`ad_copy_step`: {{ request }}"])
def test_an_identifier_prompt_is_found(prompt: str) -> None:
    [lint] = found(lints(document(("inline", [task("medium_ai", prompt)]))), "identifier-prompt")
    assert lint.task_id == "step1" and "identifier" in lint.message and "not an instruction" in lint.message
    assert "full sentence" in lint.hint


def test_a_label_of_a_few_words_is_found() -> None:
    doc = document(("inline", [RESEARCH, task("medium_ai", "Summary: {{ step1 }}")]))
    [lint] = found(lints(doc), "identifier-prompt")
    assert lint.task_id == "step2" and "1 word of its own" in lint.message and "label" in lint.message


def test_a_sentence_and_a_request_handed_through_are_instructions() -> None:
    doc = document(("inline", [RESEARCH, task("medium_ai", "Summarise these notes for a busy reader: {{ step1 }}")]))
    assert found(lints(doc), "identifier-prompt") == []
    # a short instruction about the values it reads: each value counts as a word
    doc = document(("linear", [RESEARCH, task("product_ai", "Write three short ad variants for {{ request }}.")]),
                   ("inline", [task("aggregator", "Combine {{ step1 }} and {{ step2 }}")]))
    assert lints(doc) == []
    # the request is the instruction: the prompt hands it to the model with a few words around it
    assert lints(document(("inline", [task("medium_ai", "{{ request }}")]))) == []
    assert lints(document(("inline", [task("medium_ai", "Answer: {{ request }}")]))) == []


# -- duplicate-prompt -----------------------------------------------------------------------------------------

def test_the_same_prompt_twice_is_found_whatever_its_spacing_and_case() -> None:
    prompt = "Write a slogan for {{ request }} that fits on a bottle."
    doc = document(("linear", [task("product_ai", prompt), task("medium_ai", "  WRITE a slogan for\n{{ request }} "
                                                                             "that fits on a bottle.")]),
                   ("inline", [task("medium_ai", "Pick the better slogan of these two: {{ step1 }} {{ step2 }}")]))
    [lint] = found(lints(doc), "duplicate-prompt")
    assert lint.task_id == "step2" and "the same prompt as step1" in lint.message
    assert "twice" in lint.message and "job of its own" in lint.hint


def test_the_same_prompt_apart_from_its_values_is_found() -> None:
    doc = document(("inline", [RESEARCH, task("medium_ai", "Write a short post for buyers about {{ step1 }}"),
                               task("medium_ai", "Write a short post for buyers about {{ step2 }}")]))
    [lint] = found(lints(doc), "duplicate-prompt")
    assert lint.task_id == "step3" and "apart from the values it reads, as step2" in lint.message


def test_different_prompts_and_alternatives_under_other_conditions_are_not_duplicates() -> None:
    doc = document(("linear", [task("product_ai", "Write a slogan for {{ request }} that fits on a bottle."),
                               task("product_ai", "Write a tagline for {{ request }} for a billboard.")]),
                   ("inline", [task("medium_ai", "Pick the better line of these two: {{ step1 }} {{ step2 }}")]))
    assert lints(doc) == []
    prompt = "Answer this request in a few clear sentences: {{ request }}"
    alternatives = document(("linear", [task("fast_ai", prompt, when="request | length < 50"),
                                        task("thinking_ai", prompt, when="request | length >= 50")]),
                            outputs={"answer": "{{ step1 or step2 }}"})
    assert found(lints(alternatives), "duplicate-prompt") == []


# -- unread-output --------------------------------------------------------------------------------------------

def test_an_output_nothing_reads_is_found() -> None:
    doc = document(("inline", [RESEARCH, task("product_ai", "Write three short ad variants for {{ request }}.",
                                              addons=["ad_copy"])]))
    [lint] = found(lints(doc), "unread-output")
    assert lint.task_id == "step1" and "Nothing reads the output of step1" in lint.message
    assert "{{ step1 }}" in lint.hint


def test_an_output_read_by_a_task_or_by_the_workflow_outputs_is_used() -> None:
    assert found(lints(GOOD), "unread-output") == []
    both = document(("linear", [RESEARCH, task("product_ai", "Write three short ad variants for {{ request }}.")]),
                    outputs={"research": "{{ step1 }}", "ads": "{{ step2 }}"})
    assert lints(both) == []


def test_without_declared_outputs_every_unread_task_is_found() -> None:
    doc = document(("inline", [RESEARCH, DRAFT]), outputs={})
    [lint] = found(lints(doc), "unread-output")
    assert lint.task_id == "step2" and "declares no outputs" in lint.message


# -- ignores-earlier ------------------------------------------------------------------------------------------

def test_a_later_task_that_reads_no_earlier_output_is_found() -> None:
    doc = document(("linear", [RESEARCH, task("product_ai", "Write three short ad variants for {{ request }}.")]),
                   ("inline", [task("medium_ai", "Write the final campaign plan for {{ request }}.")]))
    result = lints(doc)
    [lint] = found(result, "ignores-earlier")
    assert lint.task_id == "step3" and "runs after step1, step2 but reads none of their outputs" in lint.message
    assert "(only the inputs)" in lint.message
    assert "{{ step2 }}" in lint.hint
    assert {lint.task_id for lint in found(result, "unread-output")} == {"step1", "step2"}


def test_a_later_task_in_an_inline_stage_must_read_too_and_a_first_task_need_not() -> None:
    doc = document(("inline", [RESEARCH, task("product_ai", "Write three short ad variants for {{ request }}.")]),
                   outputs={"research": "{{ step1 }}", "ads": "{{ step2 }}"})
    assert [(lint.code, lint.task_id) for lint in lints(doc)] == [("ignores-earlier", "step2")]
    # the same tasks in parallel: nothing runs before either
    parallel = document(("linear", [RESEARCH, task("product_ai", "Write three short ad variants for {{ request }}.")]),
                        outputs={"research": "{{ step1 }}", "ads": "{{ step2 }}"})
    assert lints(parallel) == []


def test_reading_an_earlier_output_in_a_condition_counts() -> None:
    doc = document(("inline", [RESEARCH, task("medium_ai", "Write a short plan for the launch of {{ request }}.",
                                              when="step1 | length > 10")]),
                   outputs={"research": "{{ step1 }}", "plan": "{{ step2 }}"})
    assert lints(doc) == []


# -- model-misfit ---------------------------------------------------------------------------------------------

def test_a_specialist_outside_its_domain_is_found() -> None:
    doc = document(("inline", [task("code_ai", "Write three short ad variants for {{ request }}.")]))
    [lint] = found(lints(doc), "model-misfit")
    assert lint.task_id == "step1" and "code_ai (writing and reviewing code), which does not fit" in lint.message
    assert lint.message.endswith("are about marketing.") and "product_ai" in lint.hint


def test_each_model_of_a_fallback_chain_is_checked() -> None:
    ads = "Write three short ad variants for {{ request }}."
    doc = document(("inline", [task(["product_ai", "finance_expert"], ads)]))
    [lint] = found(lints(doc), "model-misfit")
    assert "finance_expert" in lint.message


def test_a_specialist_in_its_domain_and_generalists_fit() -> None:
    code = document(("inline", [task("code_ai", "Write a Python function that parses {{ request }} as dates.")]),
                    request="a date parser")
    assert lints(code, request="a date parser") == []
    for alias in ("fast_ai", "medium_ai", "thinking_ai", "general_expert"):
        assert lints(document(("inline", [task(alias, "Write three short ad variants for {{ request }}.")]))) == []


def test_the_aggregator_fits_a_task_that_merges_and_no_other() -> None:
    merge = document(("linear", [RESEARCH, task("product_ai", "Write three short ad variants for {{ request }}.")]),
                     ("inline", [task("aggregator", "Turn this research and these ads into one campaign plan:\n"
                                                    "{{ step1 }}\n\n{{ step2 }}")]))
    assert lints(merge) == []
    alone = document(("inline", [task("aggregator", "Write three short ad variants for {{ request }}.")]))
    assert [lint.code for lint in lints(alone)] == ["model-misfit"]


def test_fits_model_follows_the_alias_roles() -> None:
    assert alias_domains() == {
        "categorizer_ai": {"classify"}, "router": {"classify"}, "code_ai": {"code"}, "research_ai": {"research"},
        "product_ai": {"marketing"}, "image_analysis_ai": {"image"}, "finance_expert": {"finance"},
        "technical_expert": {"technical"}, "aggregator": {"merge"},
        "fast_ai": None, "medium_ai": None, "thinking_ai": None, "general_expert": None,
    }
    assert set(alias_domains()) == set(ALIAS_ROLES)
    assert fits_model("code_ai", "Fix the bug in this Python function")
    assert not fits_model("code_ai", CAMPAIGN) and not fits_model("finance_expert", CAMPAIGN)
    assert fits_model("product_ai", CAMPAIGN) and fits_model("thinking_ai", CAMPAIGN)
    assert fits_model("finance_expert", f"{CAMPAIGN}, with a budget for each channel")
    assert fits_model("technical_expert", "Review this code")  # code is technology
    assert not fits_model("image_analysis_ai", CAMPAIGN) and fits_model("image_analysis_ai", "Describe this photo")
    assert fits_model("router", "Route this question to the right team") and not fits_model("router", CAMPAIGN)
    assert fits_model("research_ai", "Check the facts in this article")
    assert fits_model("my_local_model", CAMPAIGN)  # an alias without a role is not judged


def test_an_alias_without_a_role_is_not_judged() -> None:
    catalog = engine.Catalog.default(models=["my_local_model"])
    doc = document(("inline", [task("my_local_model", "Write three short ad variants for {{ request }}.")]))
    assert lints(doc, catalog=catalog) == []


# -- addon-misfit ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("addon", ["api_design", "sql", "unit_tests", "lesson_plan"])
def test_an_addon_outside_the_task_domain_is_found(addon: str) -> None:
    doc = document(("inline", [task("product_ai", "Write three short ad variants for {{ request }}.", addons=[addon])]))
    [lint] = found(lints(doc), "addon-misfit")
    assert lint.task_id == "step1" and f"the addon {addon}" in lint.message and "nothing to do with it" in lint.message
    assert lint.hint.startswith(f"Remove {addon}, or use an addon that fits, such as ad_copy")


@pytest.mark.parametrize("addon", ["ad_copy", "seo", "instagram", "concise", "tone_polite", "storytelling",
                                   "customer_persona"])
def test_an_addon_of_the_domain_or_a_general_one_fits(addon: str) -> None:
    doc = document(("inline", [task("product_ai", "Write three short ad variants for {{ request }}.", addons=[addon])]))
    assert lints(doc) == []


def test_an_addon_named_by_the_prompt_fits() -> None:
    doc = document(("inline", [task("medium_ai", "Write the SQL query that counts {{ request }} per month.",
                                    addons=["sql"])]), request="orders")
    assert lints(doc, request="orders") == []


def test_fitting_addons_are_ranked_best_first() -> None:
    assert fitting_addons("Write ad copy for eco-friendly water bottles", CATALOG)[0] == "ad_copy"
    assert fitting_addons("Write the SQL that lists last month's orders", CATALOG)[0] == "sql"
    assert fitting_addons("Review this Python code for bugs", CATALOG)[0] == "code_review"
    assert fitting_addons("Write an executive summary of this report", CATALOG)[0] == "executive_summary"
    assert "concise" in fitting_addons("Make this concise", CATALOG)
    campaign = fitting_addons(CAMPAIGN, CATALOG)
    assert "api_design" not in campaign and "sql" not in campaign and "concise" not in campaign
    assert fitting_addons("Say hello", CATALOG) == []


def test_the_classifier_splits_identifiers_and_reads_keywords() -> None:
    assert classify("create_marketing_campaign") == {"marketing"}
    assert classify("debugTheParser") == {"code"}
    assert classify("Say hello") == frozenset()
    assert classify("stock markets and inflation") == {"finance"}


# -- the outside check's plans ----------------------------------------------------------------------------

BAD_PROMPT = "create_marketing_campaign_for_eco_water_bottle_campaign"
BAD = document(
    ("linear", [task("code_ai", BAD_PROMPT, addons=["api_design"]), task("finance_expert", BAD_PROMPT),
                task("product_ai", BAD_PROMPT)]),
    ("inline", [task("medium_ai", "final_campaign_summary")]),
)


def test_the_bad_plan_of_a_small_model_gets_every_lint() -> None:
    result = lints(BAD)
    by_code = {code: sorted(lint.task_id or "" for lint in result if lint.code == code) for code in LINT_CODES}
    assert by_code == {
        "identifier-prompt": ["step1", "step2", "step3", "step4"],
        "duplicate-prompt": ["step2", "step3"],
        "unread-output": ["step1", "step2", "step3"],
        "ignores-earlier": ["step4"],
        "model-misfit": ["step1", "step2"],
        "addon-misfit": ["step1"],
    }
    assert [lint.task_id for lint in result] == sorted(lint.task_id or "" for lint in result)  # by task, in order
    for lint in result:
        assert lint.message.endswith(".") and lint.hint.endswith(".") and lint.task_id in lint.message


# -- the shipped templates ------------------------------------------------------------------------------------

# What the lints say about the human-written templates, with the request made from each description.
EXPECTED: dict[str, list[tuple[str, str]]] = {
    # `ack` is a progress line shown to the user through the run's events while the planner works; nothing in
    # the workflow reads it and it is not an output, which is what the lint reports. Listing it in the
    # template's outputs would silence it.
    "chat": [("unread-output", "ack")],
}


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.yaml")), ids=lambda path: path.stem)
def test_the_shipped_templates_are_clean(path: Path) -> None:
    workflow = engine.load_workflow(path)
    plan = engine.compile_workflow(workflow, CATALOG)
    result = lint_plan(workflow, plan, CATALOG, workflow.description or workflow.name)
    assert [(lint.code, lint.task_id) for lint in result] == EXPECTED.get(path.stem, [])
