"""The seed systems' workflow format loads as is and converts to the DSL."""

from __future__ import annotations

import json
import re

import pytest

from engine import Catalog, TemplateRenderer, WorkflowError, compile_workflow, load_workflow, parse_workflow, to_mermaid
from engine.dsl.seed import placeholders_to_jinja
from tests.conftest import ROOT

SEED = ('{"workflow": [{"type": "linear", "tasks": [{"model": "thinking_ai", "prompt": "Research {topic}", '
        '"output_variable": "research", "config": {"temperature": 0.7, "addons": ["research"]}}]}, '
        '{"type": "inline", "tasks": [{"model": "thinking_ai", "prompt": "Write an article about: {research}", '
        '"output_variable": "article"}]}], "variables": {"topic": "renewable energy"}}')


def test_the_issue_example_loads_validates_and_graphs() -> None:
    workflow = parse_workflow(SEED, name="seed.json")
    assert workflow.inputs == {"topic": {"default": "renewable energy", "type": "string"}}
    research, article = workflow.stages[0].tasks[0], workflow.stages[1].tasks[0]
    assert (research.id, research.prompt, research.temperature, research.addons) == (  # type: ignore[union-attr]
        "research", "Research {{ topic }}", 0.7, ["research"])
    assert article.prompt == "Write an article about: {{ research }}"  # type: ignore[union-attr]
    plan = compile_workflow(workflow, Catalog.default())
    assert sorted(plan.nodes["article"].depends_on) == ["research"]
    assert "research --> article" in to_mermaid(plan)


def test_the_shipped_example_file_is_the_issue_example() -> None:
    assert json.loads((ROOT / "examples" / "seed_article.json").read_text()) == json.loads(SEED)


@pytest.mark.parametrize("text", [
    'Return JSON like {"name": "x", "tags": []} for {topic}',
    "Keep {undeclared} and {{topic}} and { topic } literal; use {topic}",
    "Jinja-looking text {% raw %} {{ 1 + 1 }} {# c #} stays, quote ' and backslash \\ too: {topic}",
    "Ends with a brace {",
    "}{topic}{",
])
def test_placeholders_become_jinja_and_everything_else_survives(text: str) -> None:
    converted = placeholders_to_jinja(text, {"topic"})
    rendered = TemplateRenderer().render(converted, {"topic": "SOLAR"})
    assert rendered == re.sub(r"(?<!\{)\{topic\}(?!\})", "SOLAR", text)


def test_seed_errors_point_at_the_original_keys(write) -> None:
    data = json.loads(SEED)
    data["workflow"][1]["tasks"][0]["config"] = {"temperature": "hot"}
    path = write(json.dumps(data, indent=2), "seed.json")
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    (problem,) = caught.value.problems
    assert problem.path == ("stages", 1, "tasks", 0, "temperature")
    assert problem.location is not None
    line = path.read_text().splitlines()[problem.location.line - 1]  # type: ignore[operator]
    assert '"temperature": "hot"' in line


def test_seed_reference_errors_point_at_the_prompt(write) -> None:
    data = json.loads(SEED)
    data["workflow"][0]["tasks"][0]["prompt"] = "Research {topic} after {article}"
    path = write(json.dumps(data, indent=2), "seed.json")
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(load_workflow(path), Catalog.default())
    (problem,) = caught.value.problems
    assert problem.code == "not-yet-produced"
    line = path.read_text().splitlines()[problem.location.line - 1]  # type: ignore[union-attr, operator]
    assert '"prompt": "Research {topic} after {article}"' in line


def test_missing_output_variable_gets_a_generated_id() -> None:
    workflow = load_workflow({"workflow": [{"type": "inline", "tasks": [{"model": "fast_ai", "prompt": "x"}]}]})
    assert workflow.stages[0].tasks[0].id == "stage1_task1"  # type: ignore[union-attr]
