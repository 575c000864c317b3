"""Loading YAML and JSON: positions, duplicate keys, friendly messages, limits."""

from __future__ import annotations

import pytest

from engine import Workflow, WorkflowError, load_workflow, parse_workflow

MINIMAL = """\
dsl: orchestrion/v1
name: minimal
stages:
  - type: linear
    tasks:
      - id: hello
        model: fast_ai
        prompt: "Hello"
"""


def problems(text: str, name: str = "flow.yaml") -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, name=name)
    return [str(problem) for problem in caught.value.problems]


def test_minimal_document_loads_with_defaults() -> None:
    workflow = parse_workflow(MINIMAL)
    assert isinstance(workflow, Workflow)
    assert workflow.version == "0.1.0"
    assert workflow.schedule == "dataflow"
    assert workflow.stages[0].tasks[0].kind == "prompt"  # type: ignore[union-attr]


def test_schema_comment_line_is_accepted() -> None:
    workflow = parse_workflow("# yaml-language-server: $schema=../schemas/workflow.schema.json\n" + MINIMAL)
    assert workflow.name == "minimal"


def test_json_with_dollar_schema_key_is_accepted() -> None:
    text = '{"$schema": "x.json", "dsl": "orchestrion/v1", "name": "j", "stages": [{"type": "inline", ' \
           '"tasks": [{"id": "a", "model": "fast_ai", "prompt": "x"}]}]}'
    assert parse_workflow(text).schema_url == "x.json"


def test_unknown_field_names_line_column_path_and_suggestion() -> None:
    found = problems(MINIMAL.replace('prompt: "Hello"', 'promt: "Hello"'))
    assert found == ["flow.yaml:8:16: stages[0].tasks[0].promt: unknown field 'promt'\n"
                     "    hint: did you mean 'prompt'?"]


def test_a_tasks_field_on_a_stage_says_so_instead_of_suggesting_itself() -> None:
    text = "dsl: orchestrion/v1\nname: x\nstages:\n  - id: s\n    type: linear\n    tasks:\n      - id: a\n" \
           "        prompt: hi there\n"
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text)
    (problem,) = caught.value.problems
    assert problem.message == "unknown field 'id'" and problem.location is not None and problem.location.line == 4
    assert problem.hint is not None and "task's field" in problem.hint and "name:" in problem.hint
    assert "did you mean" not in problem.hint


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = MINIMAL + "      - id: second\n        prompt: 3\n        timeout: '10'\n"
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("flow.yaml:10:17: stages[0].tasks[1].prompt: Input should be a valid string")
    assert found[1].startswith("flow.yaml:11:18: stages[0].tasks[1].timeout: Input should be a valid number")


def test_strict_types_reject_numeric_strings_and_suggest_quoting() -> None:
    found = problems(MINIMAL.replace("name: minimal", "name: 12"))
    assert found[0].startswith("flow.yaml:2:7: name: Input should be a valid string, found int 12")
    assert "quote the value" in found[0]


def test_duplicate_keys_are_errors_with_position() -> None:
    found = problems(MINIMAL.replace('        prompt: "Hello"', '        prompt: "Hello"\n        prompt: "Again"'))
    assert found[0].startswith('flow.yaml:9:9: found duplicate key "prompt"')


def test_duplicate_keys_in_json_are_errors_with_position() -> None:
    found = problems('{"dsl": "orchestrion/v1", "dsl": "orchestrion/v1"}', name="flow.json")
    assert found[0].startswith('flow.json:1:27: found duplicate key "dsl"')
    nested = '{"dsl": "orchestrion/v1", "stages": [\n  {"type": "linear",\n   "type": "inline"}]}'
    assert problems(nested, name="flow.json")[0].startswith('flow.json:3:4: found duplicate key "type"')


def test_yaml_syntax_error_has_line_and_column() -> None:
    found = problems("dsl: orchestrion/v1\nstages: [1\nname: x\n")
    assert found[0].startswith("flow.yaml:3:5:")


def test_json_syntax_error_has_line_and_column() -> None:
    found = problems('{\n  "dsl": "orchestrion/v1",\n  "name": "x",,\n}', name="flow.json")
    assert found[0].startswith("flow.json:3:15:")


def test_kind_rules_point_at_the_foreign_field() -> None:
    text = MINIMAL + "      - id: tool\n        call: tools.fetch\n        temperature: 0.2\n"
    found = problems(text)
    assert found == ["flow.yaml:11:22: stages[0].tasks[1].temperature: `temperature` does not apply to a `call` task"]


def test_task_needs_exactly_one_kind() -> None:
    found = problems(MINIMAL + "      - id: both\n        prompt: a\n        call: f\n")
    assert "exactly one of prompt, call, workflow, plan (found: prompt, call)" in found[0]
    assert found[0].startswith("flow.yaml:9:9: stages[0].tasks[1]:")


def test_input_default_must_match_its_schema() -> None:
    text = MINIMAL + "inputs:\n  count: {type: integer, default: many}\n"
    found = problems(text)
    assert found[0].startswith("flow.yaml:10:35: inputs.count.default: the default does not match")


def test_input_must_be_a_json_schema() -> None:
    found = problems(MINIMAL + "inputs:\n  count: {type: integr}\n")
    assert "inputs.count.type: not a valid JSON Schema" in found[0]


def test_output_schema_must_be_a_json_schema() -> None:
    found = problems(MINIMAL + "        output: {schema: {type: 12}}\n")
    assert "stages[0].tasks[0].output.schema.type: not a valid JSON Schema" in found[0]


def test_nested_stage_errors_have_exact_paths() -> None:
    text = MINIMAL + "      - type: inline\n        tasks:\n          - id: inner\n            prompt: 1\n"
    found = problems(text)
    assert found[0].startswith("flow.yaml:12:21: stages[0].tasks[1].tasks[0].prompt:")


def test_not_a_mapping() -> None:
    assert "must be a mapping, found a list" in problems("- 1\n- 2\n")[0]
    assert "found an empty document" in problems("")[0]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    found = problems("\n".join(lines) + "\n")
    assert "expands to more than" in found[0]


def test_load_from_dict_and_workflow_passthrough() -> None:
    data = {"dsl": "orchestrion/v1", "name": "d", "stages": [{"type": "inline", "tasks": [
        {"id": "a", "model": "fast_ai", "prompt": "x"}]}]}
    workflow = load_workflow(data)
    assert load_workflow(workflow) is workflow
    with pytest.raises(WorkflowError) as caught:
        load_workflow({**data, "name": None})
    assert str(caught.value.problems[0]).startswith("<dict>: name: Input should be a valid string")


def test_missing_file_is_a_workflow_error(tmp_path) -> None:
    with pytest.raises(WorkflowError) as caught:
        load_workflow(tmp_path / "absent.yaml")
    assert "cannot read the file" in str(caught.value)


def test_yaml_1_2_keeps_no_as_a_string(write) -> None:
    path = write(MINIMAL.replace('prompt: "Hello"', "prompt: no"))
    assert load_workflow(path).stages[0].tasks[0].prompt == "no"  # type: ignore[union-attr]


def test_policies_record_what_was_given_explicitly() -> None:
    workflow = parse_workflow(MINIMAL.replace('prompt: "Hello"', 'prompt: "Hello"\n        retry: null'))
    task = workflow.stages[0].tasks[0]
    assert "retry" in task.model_fields_set and task.retry is None  # type: ignore[union-attr]
    assert "timeout" not in task.model_fields_set


def test_text_passed_as_a_path_gets_a_hint() -> None:
    with pytest.raises(WorkflowError) as caught:
        load_workflow(MINIMAL)
    assert caught.value.problems[0].hint == "to load YAML or JSON text, call parse_workflow(text)"


def test_seed_file_names_become_valid_workflow_names(write) -> None:
    path = write('{"workflow": [{"type": "inline", "tasks": [{"model": "fast_ai", "prompt": "x", '
                 '"output_variable": "a"}]}]}', "mon flux été.json")
    assert load_workflow(path).name == "mon_flux__t_"


def test_yaml_library_warnings_never_escape_the_loader() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = problems("dsl: &x orchestrion/v1\nname: &x reused\n")  # a reused anchor: ruamel warns
    assert any("stages" in problem for problem in found)


IDS = MINIMAL.replace("id: hello", "id: ID")
RULE = "ids and names are ASCII letters, digits and _, and do not start with a digit"


@pytest.mark.parametrize("written, shown, character, position", [
    ('"draft\\u200b"', "'draft\\u200b'", "U+200B ZERO WIDTH SPACE", 6),
    ('"my task"', "'my task'", "U+0020 SPACE", 3),
    ("9lives", "'9lives'", "U+0039 DIGIT NINE", 1),
    ("café", "'café'", "U+00E9 LATIN SMALL LETTER E WITH ACUTE", 4),
    ("my-task", "'my-task'", "U+002D HYPHEN-MINUS", 3),
])
def test_a_bad_id_names_its_first_bad_character(written, shown, character, position) -> None:
    assert problems(IDS.replace("ID", written)) == [
        f"flow.yaml:6:13: stages[0].tasks[0].id: id {shown} has {character} at position {position}; {RULE}"]


def test_bad_names_in_keys_and_lists_name_the_character_too() -> None:
    text = MINIMAL.replace("stages:", "inputs:\n  my input: {type: string}\nstages:") + "        after: [a b]\n"
    assert problems(text) == [
        f"flow.yaml:4:3: inputs.my input.[key]: name 'my input' has U+0020 SPACE at position 3; {RULE}",
        f"flow.yaml:11:17: stages[0].tasks[0].after[0]: 'a b' has U+0020 SPACE at position 2; {RULE}",
    ]


def test_other_patterns_name_the_character_and_quote_the_pattern() -> None:
    found = problems(MINIMAL.replace("name: minimal", "name: my flow"))
    assert found == ["flow.yaml:2:7: name: name 'my flow' has U+0020 SPACE at position 3; "
                     "the value must match '^[A-Za-z0-9_][A-Za-z0-9_.-]*$'"]
    found = problems(MINIMAL.replace("model: fast_ai\n        prompt: \"Hello\"", "call: a..b"))
    assert found == ["flow.yaml:7:15: stages[0].tasks[0].call: call 'a..b': the value must match "
                     "'^[A-Za-z_][A-Za-z0-9_]*([.:][A-Za-z_][A-Za-z0-9_]*)*$'"]


def test_a_text_the_yaml_parser_itself_fails_on_is_a_workflow_error_not_a_traceback() -> None:
    """ruamel's YAML 1.2 resolver takes `._` for a float, then float() refuses it (found by hypothesis)."""
    with pytest.raises(WorkflowError) as caught:
        parse_workflow("dsl: orchestrion/v1\nname: ._\n")
    problem, = caught.value.problems
    assert problem.code == "syntax" and "could not read this text" in problem.message and "`._`" in (problem.hint or "")
