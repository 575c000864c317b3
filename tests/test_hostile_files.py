"""Hostile workflow and inputs files: nesting deep enough to overflow a recursive reader.

Every reader of a document (ruamel, ``json``, pydantic, jsonschema, the compiler,
the runtime) recurses once or more per level of nesting, so a deep file must be
refused, with its position, before any of them sees it, and in bounded stack.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine import WorkflowError, load_workflow, parse_workflow
from engine.cli import main
from engine.compiler import compile_workflow
from engine.dsl.source import MAX_DOCUMENT_DEPTH, parse_document

TOO_DEEP = f"nested too deep (more than {MAX_DOCUMENT_DEPTH} levels)"
HEAD = "dsl: orchestrion/v1\nname: deep\nstages: "
JSON_HEAD = '{"dsl": "orchestrion/v1", "name": "deep", "stages": '
# 300 overflowed the readers before the limit; past about 1,000 levels on one line, ruamel's scanner takes
# a second whatever the depth (it looks 1,024 characters ahead for a key).
DEPTHS = [MAX_DOCUMENT_DEPTH + 1, 300, 100_000, 1_000_000]
FIRST_PAST = MAX_DOCUMENT_DEPTH + 1


def flow_yaml(levels: int) -> str:
    """A workflow whose `stages` nests lists so that the document has ``levels`` levels."""
    lists = levels - 1  # the document's mapping is the first level
    return HEAD + "[" * lists + "]" * lists + "\n"


def flow_json(levels: int) -> str:
    lists = levels - 1
    return JSON_HEAD + "[" * lists + "]" * lists + "}\n"


def column(head: str, level: int) -> int:
    """Where the list at ``level`` starts in ``head`` followed by nested lists (the document is level 1)."""
    return len(head.splitlines()[-1]) + 1 + level - 2


def refused(text: str, name: str) -> str:
    """The one problem the loader reports for ``text``, as printed."""
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, name=name)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].code == "too-deep"
    return str(caught.value.problems[0])


def _frames() -> int:
    frame, count = sys._getframe(), 0
    while frame is not None:
        frame, count = frame.f_back, count + 1
    return count


@contextmanager
def frames_to_spare(count: int) -> Iterator[None]:
    """Allow only ``count`` frames more than the caller has: recursing per level fails the test."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(_frames() + count)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


# -- the limit itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("make, name", [(flow_yaml, "flow.yaml"), (flow_json, "flow.json")])
def test_the_limit_is_the_same_for_yaml_and_json(make, name) -> None:
    parse_document(make(MAX_DOCUMENT_DEPTH), name)  # at the limit: read
    assert TOO_DEEP in refused(make(MAX_DOCUMENT_DEPTH + 1), name)


@pytest.mark.parametrize("levels", [FIRST_PAST, 300])
def test_the_position_is_the_first_list_past_the_limit(levels) -> None:
    assert refused(flow_json(levels), "flow.json").startswith(f"flow.json:1:{column(JSON_HEAD, FIRST_PAST)}: ")
    assert refused(flow_yaml(FIRST_PAST), "flow.yaml").startswith(f"flow.yaml:3:{column(HEAD, FIRST_PAST)}: ")
    # deeper, ruamel stops at the first value inside that list
    assert refused(flow_yaml(300), "flow.yaml").startswith(f"flow.yaml:3:{column(HEAD, FIRST_PAST + 1)}: ")


def test_the_limit_leaves_room_for_every_shipped_workflow() -> None:
    root = Path(__file__).resolve().parent.parent
    files = [*root.glob("examples/*.yaml"), *root.glob("examples/*.json"), *root.glob("templates/*.yaml")]
    deepest = max(_depth(parse_document(path.read_text(encoding="utf-8"), str(path)).data) for path in files)
    assert 8 <= deepest <= MAX_DOCUMENT_DEPTH // 4


def _depth(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max((_depth(child) for child in children), default=0)


# -- refused at any depth, located, in bounded stack --------------------------------------------


@pytest.mark.parametrize("levels", DEPTHS)
@pytest.mark.parametrize("make, name", [(flow_yaml, "flow.yaml"), (flow_json, "flow.json")])
def test_flow_nesting_at_any_depth_is_a_located_error_in_bounded_stack(make, name, levels) -> None:
    text = make(levels)
    parse_document(flow_yaml(2), "warm.yaml")  # imports ruamel, outside the frame budget
    with frames_to_spare(400):  # a reader recursing once per level would need `levels` frames
        problem = refused(text, name)
    line = 3 if name.endswith(".yaml") else 1
    assert problem.startswith(f"{name}:{line}:")
    assert TOO_DEEP in problem


def test_deep_json_in_a_yaml_file_is_read_as_yaml_and_refused() -> None:
    assert refused(flow_json(1_000_000), "flow.yaml").startswith(f"flow.yaml:1:{column(JSON_HEAD, FIRST_PAST + 1)}:")


def test_block_mappings_nested_2000_deep_are_refused_at_the_first_line_too_deep() -> None:
    text = "".join(" " * (2 * level) + "a:\n" for level in range(2000)) + " " * 4000 + "b: 1\n"
    with frames_to_spare(400):
        problem = refused(text, "block.yaml")
    # line N holds the key of the document's Nth mapping
    assert problem.startswith(f"block.yaml:{FIRST_PAST}:{2 * (FIRST_PAST - 1) + 1}: {TOO_DEEP}")


def test_compact_block_sequences_nest_on_one_line_and_are_refused() -> None:
    # `- - - x` is a list in a list in a list, without any indentation
    with frames_to_spare(400):
        problem = refused("stages:\n" + "- " * 100_000 + "x\n", "compact.yaml")
    assert problem.startswith("compact.yaml:2:")


def test_aliases_cannot_stack_short_collections_past_the_limit() -> None:
    # each anchor is 41 levels deep and uses the previous one: no single collection is too deep
    # for the YAML parser, but the values nest 41 levels more at each alias
    lines = ["dsl: orchestrion/v1", "name: deep", "a0: &a0 1"]
    lines += [f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 for i in range(1, 30)]
    with frames_to_spare(400):
        problem = refused("\n".join([*lines, "stages: [*a29]"]) + "\n", "alias.yaml")
    assert problem.startswith("alias.yaml:")
    assert TOO_DEEP in problem


def test_brackets_in_strings_comments_and_block_scalars_are_not_levels() -> None:
    brackets = "[{" * 200
    parse_document(f'{{"a": "{brackets}", "b": "\\"{brackets}"}}', "strings.json")
    parse_document(f"a: '{brackets}'\nb: \"{brackets}\"  # {brackets}\nc: |\n  {brackets}\nd: x{brackets}\n", "s.yaml")


def test_an_unterminated_json_string_keeps_the_scan_linear() -> None:
    text = '{"a": "' + '\\"[' * 1_000_000  # each escaped quote could start a string the scan retries
    started = time.perf_counter()
    with pytest.raises(WorkflowError, match="syntax"):
        parse_document(text, "open.json")
    assert time.perf_counter() - started < 5


def test_a_mapping_given_in_code_has_the_same_limit() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    document = {"dsl": "orchestrion/v1", "name": "deep", "stages": value}
    with frames_to_spare(400), pytest.raises(WorkflowError) as caught:
        load_workflow(document)
    problem = caught.value.problems[0]
    assert problem.code == "too-deep" and problem.path == ("stages", *[0] * (MAX_DOCUMENT_DEPTH - 1))
    assert str(problem).startswith("<dict>: stages[0][0]")


def test_a_mapping_that_refers_to_itself_is_refused_not_walked_forever() -> None:
    loop: dict[str, Any] = {"dsl": "orchestrion/v1", "name": "loop"}
    loop["stages"] = [loop]
    with pytest.raises(WorkflowError, match="nested too deep"):
        load_workflow(loop)
    shared: Any = [1]
    for _ in range(40):  # 2**40 paths through 40 lists
        shared = [shared, shared]
    with pytest.raises(WorkflowError, match="more than 200000 values"):
        load_workflow({"dsl": "orchestrion/v1", "name": "shared", "stages": shared})


# -- what passes the limit is read by everything else without overflowing -----------------------


def _nested_workflow() -> dict[str, Any]:
    """A workflow exactly MAX_DOCUMENT_DEPTH deep: nested stages, then a nested output schema."""
    schema: dict[str, Any] = {"type": "string", "enum": ["x"]}  # 2 levels
    for _ in range(16):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}  # 2 levels each
    item: dict[str, Any] = {"id": "a", "model": "fast_ai", "prompt": "hi", "output": {"schema": schema}}  # 3
    for _ in range(13):
        item = {"type": "inline", "tasks": [item]}  # 2 levels each, under the document and `stages`
    return {"dsl": "orchestrion/v1", "name": "deep", "stages": [item]}


def test_a_workflow_at_the_limit_validates_compiles_and_runs(tmp_path, capsys) -> None:
    document = _nested_workflow()
    assert _depth(document) == MAX_DOCUMENT_DEPTH
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    compile_workflow(parse_workflow(path.read_text(encoding="utf-8"), str(path)))
    assert main(["run", str(path), "--dry-run", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"


# -- the command line: exit 1 with the located problem, never a traceback ----------------------


@pytest.mark.parametrize("make, name", [(flow_yaml, "deep.yaml"), (flow_json, "deep.json")])
def test_validate_reports_a_deep_file_like_any_other_problem(make, name, write, capsys) -> None:
    path = write(make(1_000_000), name)
    assert main(["validate", str(path)]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith(f"{path}:") and TOO_DEEP in printed


def test_run_reports_a_deep_workflow_without_running(write, capsys) -> None:
    path = write(flow_yaml(300), "deep.yaml")
    assert main(["run", str(path), "--dry-run"]) == 1
    assert f"{path}:3:" in capsys.readouterr().err


@pytest.mark.parametrize("name, text", [("inputs.yaml", "n:\n" + "- " * 300 + "x\n"),
                                        ("inputs.json", '{"n": ' + "[" * 1_000_000 + "]" * 1_000_000 + "}")])
def test_run_reports_a_deep_inputs_file_with_its_position(name, text, write, capsys) -> None:
    flow = write("dsl: orchestrion/v1\nname: f\ninputs:\n  n: {}\nstages:\n  - type: inline\n    tasks:\n"
                 "      - {id: a, model: fast_ai, prompt: '{{ n }}'}\n")
    inputs = write(text, name)
    assert main(["run", str(flow), "--dry-run", "-q", "--inputs-file", str(inputs)]) == 1
    printed = capsys.readouterr().err
    line = 1 if name.endswith(".json") else 2
    assert printed.startswith(f"{inputs}:{line}:") and TOO_DEEP in printed


def test_run_refuses_a_deep_input_value(write, capsys) -> None:
    flow = write("dsl: orchestrion/v1\nname: f\ninputs:\n  n: {}\nstages:\n  - type: inline\n    tasks:\n"
                 "      - {id: a, model: fast_ai, prompt: '{{ n }}'}\n")
    deep = "[" * 50_000 + "]" * 50_000  # a command-line argument holds 128 KiB at most
    assert main(["run", str(flow), "--dry-run", "-q", "-i", f"n={deep}"]) == 1
    assert f"--input n: {TOO_DEEP}" in capsys.readouterr().err
    shallow = "[" * MAX_DOCUMENT_DEPTH + "]" * MAX_DOCUMENT_DEPTH
    assert main(["run", str(flow), "--dry-run", "-q", "-i", f"n={shallow}"]) == 0


def test_the_console_script_prints_no_traceback_for_a_deep_file(write) -> None:
    path = write(flow_json(1_000_000), "deep.json")
    result = subprocess.run([sys.executable, "-m", "engine", "validate", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.startswith(f"{path}:1:{column(JSON_HEAD, FIRST_PAST)}: {TOO_DEEP}")


# -- untrusted JSON that is not a file: model answers, provider bodies, inputs given in code --------


def test_depth_scans_stop_at_the_first_bracket_past_the_limit() -> None:
    from engine.depth import json_too_deep_at, value_too_deep

    assert json_too_deep_at('["[[[[", [[1]]]', 3) is None  # brackets in strings are not levels
    assert json_too_deep_at("[[[[1]]]]", 3) == 3
    nested: list[Any] = []
    innermost = nested
    for _ in range(100_000):
        innermost.append([])
        innermost = innermost[0]
    with frames_to_spare(50):
        assert value_too_deep(nested, 64) and not value_too_deep([[1], {"a": [2]}], 3)


def test_a_deep_model_answer_is_invalid_output_not_a_recursion_error() -> None:
    from engine.errors import InvalidOutputError
    from engine.model.output import parse_output

    with frames_to_spare(100), pytest.raises(InvalidOutputError, match="nested too deep"):
        parse_output("[" * 100_000 + "]" * 100_000, {"type": "array"})
    assert parse_output("[[1]]", {"type": "array"}) == [[1]]


def test_a_deep_input_given_in_code_is_an_input_error() -> None:
    from engine.errors import InputError
    from engine.runtime.inputs import validate_inputs

    deep: list[Any] = []
    innermost = deep
    for _ in range(10_000):
        innermost.append([])
        innermost = innermost[0]
    with pytest.raises(InputError, match=re.escape(f"input 'x': {TOO_DEEP}")):
        validate_inputs({"x": {"type": "array"}}, {"x": deep})
    assert validate_inputs({"x": {"type": "array"}}, {"x": [[1]]}) == {"x": [[1]]}
