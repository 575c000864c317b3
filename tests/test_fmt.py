"""``orchestrion fmt``: canonical key order, comments and styles kept, idempotent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.dsl.fmt import FormatError, format_text
from engine.dsl.loader import parse_workflow
from tests.conftest import ROOT

SHIPPED = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("templates/*.yaml")])


def comments(text: str) -> list[str]:
    return [match.group(0).strip() for match in re.finditer(r"(^|\s)#.*$", text, re.MULTILINE)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_shipped_workflows_are_formatted(path: Path) -> None:
    text = path.read_text()
    assert format_text(text, json_file=False) == text, "run `orchestrion fmt` on it"


MESSY = """\
# yaml-language-server: $schema=../schemas/workflow.schema.json
# A workflow whose keys are out of order.
stages:   # what it does
  - tasks:
      - prompt: |
          Summarise {{ text }}
          in two lines.
        model: fast_ai      # the cheap one
        id: summary
    type: linear
name: messy
inputs:
  text: {type: string, description: "What to summarise, in full"}
dsl: orchestrion/v1
outputs: {summary: "{{ summary }}"}
"""


def test_keys_are_put_in_order_and_comments_travel_with_their_keys() -> None:
    formatted = format_text(MESSY, json_file=False)
    assert formatted.splitlines()[:5] == [
        "# yaml-language-server: $schema=../schemas/workflow.schema.json",
        "# A workflow whose keys are out of order.",
        "dsl: orchestrion/v1",
        "name: messy",
        "inputs:",
    ]
    assert "        model: fast_ai      # the cheap one" in formatted
    assert "stages:   # what it does\n  - type: linear\n    tasks:\n      - id: summary\n" in formatted
    assert sorted(comments(formatted)) == sorted(comments(MESSY))
    assert "          Summarise {{ text }}\n          in two lines.\n" in formatted  # the block scalar as it was
    assert '{type: string, description: "What to summarise, in full"}' in formatted  # flow style and quotes
    assert parse_workflow(formatted).model_dump() == parse_workflow(MESSY).model_dump()  # the same workflow
    assert format_text(formatted, json_file=False) == formatted


def test_json_is_indented_in_key_order() -> None:
    document = {"stages": [{"tasks": [{"prompt": "hi", "id": "a", "model": "fast_ai"}], "type": "linear"}],
                "name": "j", "dsl": "orchestrion/v1"}
    formatted = format_text(json.dumps(document), json_file=True)
    assert list(json.loads(formatted)) == ["dsl", "name", "stages"]
    assert list(json.loads(formatted)["stages"][0]["tasks"][0]) == ["id", "model", "prompt"]
    assert formatted.startswith('{\n  "dsl": "orchestrion/v1",\n') and formatted.endswith("}\n")
    assert format_text(formatted, json_file=True) == formatted


def test_unknown_keys_keep_their_place_after_the_known_ones() -> None:
    text = "dsl: orchestrion/v1\nzeta: 1\nname: x\nalpha: 2\nstages: []\n"
    assert format_text(text, json_file=False) == "dsl: orchestrion/v1\nname: x\nstages: []\nzeta: 1\nalpha: 2\n"


@pytest.mark.parametrize(("text", "json_file", "message"), [
    ("a: [1, 2", False, "not valid YAML"),
    ('{"a": ', True, "not valid JSON"),
    ("- a\n- b\n", False, "not a mapping"),
    ('{"workflow": [], "variables": {}}', True, "no `dsl:` key"),
])
def test_what_is_not_a_workflow_is_refused(text: str, json_file: bool, message: str) -> None:
    with pytest.raises(FormatError, match=re.escape(message)):
        format_text(text, json_file=json_file)
