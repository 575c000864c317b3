"""The published schema is current, and it agrees with the pydantic models on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from engine import load_workflow, workflow_json_schema
from engine.dsl.source import parse_document
from tests.conftest import ROOT

SCHEMA_FILE = ROOT / "schemas" / "workflow.schema.json"
WORKFLOW_FILES = sorted([*ROOT.glob("examples/*.y*ml"), *ROOT.glob("templates/*.y*ml"), *ROOT.glob("templates/*.json")])
DSL_FILES = [path for path in WORKFLOW_FILES if "dsl:" in path.read_text()]


def test_schema_file_is_up_to_date() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == workflow_json_schema(), (
        "schemas/workflow.schema.json is out of date: run `orchestrion schema > schemas/workflow.schema.json`")


def test_schema_is_a_valid_2020_12_schema() -> None:
    schema = workflow_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_field_has_a_description() -> None:
    schema = workflow_json_schema()
    for name, definition in [("Workflow", schema), *schema["$defs"].items()]:
        for field, spec in definition.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"


@pytest.mark.parametrize("path", DSL_FILES, ids=lambda p: p.name)
def test_examples_and_templates_validate_with_both_validators(path: Path) -> None:
    load_workflow(path)
    data = parse_document(path.read_text(), str(path)).data
    errors = list(Draft202012Validator(workflow_json_schema()).iter_errors(data))
    assert errors == []


BROKEN = [
    ({"prompt": "x", "call": "f"}, "two kinds"),
    ({"call": "f", "temperature": 1.0}, "foreign field"),
    ({"prompt": "x", "as": "it"}, "`as` without for_each"),
    ({"prompt": 1}, "wrong type"),
    ({"prompt": "x", "timeout": "10"}, "numeric string"),
    ({"prompt": "x", "bogus": True}, "unknown field"),
    ({"prompt": "x", "retry": {"jitter": "some"}}, "bad enum"),
    ({}, "no kind"),
]


@pytest.mark.parametrize(("fields", "why"), BROKEN, ids=[why for _, why in BROKEN])
def test_both_validators_reject_the_same_broken_tasks(fields: dict[str, object], why: str) -> None:
    document = {"dsl": "orchestrion/v1", "name": "b", "stages": [{"type": "linear", "tasks": [{"id": "a", **fields}]}]}
    assert not Draft202012Validator(workflow_json_schema()).is_valid(document)
    with pytest.raises(Exception, match="problem"):
        load_workflow(document)


def test_jsonschema_errors_on_stage_items_have_exact_paths() -> None:
    document = {"dsl": "orchestrion/v1", "name": "b", "stages": [{"type": "linear", "tasks": [
        {"type": "inline", "tasks": [{"id": "a", "prompt": 3}]}]}]}
    errors = list(Draft202012Validator(workflow_json_schema()).iter_errors(document))
    deepest = max(errors, key=lambda error: len(error.absolute_path))
    assert list(deepest.absolute_path) == ["stages", 0, "tasks", 0, "tasks", 0, "prompt"]
    assert deepest.message.startswith("3 is not")
