"""Read the seed systems' workflow format and convert it to the DSL.

The seed format is a document with a top-level ``workflow:`` list of stages
``{type, tasks: [{model, prompt, output_variable, config: {...}}]}`` and a
``variables:`` mapping, with ``{name}`` placeholders in prompts. Placeholders
become Jinja references only for declared names (variables and output
variables); every other piece of text is kept literally, so braces and JSON in
prompts survive. The seed systems used ``str.format``, which reached module
globals: never that.
"""

from __future__ import annotations

import re
from typing import Any

from engine.dsl.models import DSL_VERSION
from engine.errors import Path

PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"))


def is_seed_document(data: dict[str, Any]) -> bool:
    return "dsl" not in data and isinstance(data.get("workflow"), list)


def convert_seed(data: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[Path, Path]]:
    """The DSL form of a seed document, and a map from new path prefixes to old ones."""
    origins: dict[Path, Path] = {("stages",): ("workflow",), ("inputs",): ("variables",)}
    variables = data.get("variables") or {}
    declared = set(variables) if isinstance(variables, dict) else set()
    declared |= {
        task["output_variable"]
        for stage in data["workflow"] if isinstance(stage, dict)
        for task in stage.get("tasks") or [] if isinstance(task, dict) and "output_variable" in task
    }
    converted: dict[str, Any] = {
        "dsl": DSL_VERSION,
        "name": str(data.get("name") or name),
        "description": data.get("description") or "Converted from the seed workflow format.",
        "stages": [
            _convert_stage(stage, index, declared, origins) for index, stage in enumerate(data["workflow"])
        ],
    }
    for key in data.keys() - {"workflow", "variables", "name", "description"}:
        converted[key] = data[key]  # left for the DSL validator to reject by name
    if isinstance(variables, dict) and variables:
        converted["inputs"] = {key: _input_schema(value) for key, value in variables.items()}
    elif variables:
        converted["inputs"] = variables
    return converted, origins


def _convert_stage(stage: Any, index: int, declared: set[str], origins: dict[Path, Path]) -> Any:
    if not isinstance(stage, dict) or not isinstance(stage.get("tasks"), list):
        return stage
    tasks = []
    for position, task in enumerate(stage["tasks"]):
        new, old = ("stages", index, "tasks", position), ("workflow", index, "tasks", position)
        origins[new] = old
        origins[(*new, "id")] = (*old, "output_variable")
        tasks.append(_convert_task(task, f"stage{index + 1}_task{position + 1}", declared))
        for key in (task.get("config") or {}) if isinstance(task, dict) else ():
            origins[(*new, key)] = (*old, "config", key)
    return {**stage, "tasks": tasks}


def _convert_task(task: Any, fallback_id: str, declared: set[str]) -> Any:
    if not isinstance(task, dict):
        return task
    result = {key: value for key, value in task.items() if key not in {"output_variable", "config"}}
    result["id"] = task.get("output_variable", fallback_id)
    if isinstance(result.get("prompt"), str):
        result["prompt"] = placeholders_to_jinja(result["prompt"], declared)
    config = task.get("config") or {}
    if isinstance(config, dict):
        result.update(config)
    return result


def placeholders_to_jinja(text: str, declared: set[str]) -> str:
    """``"Research {topic} {x}"`` -> ``"Research {{ topic }}{{ ' {x}' }}"`` for declared ``topic``.

    Literal text containing braces is emitted as a Jinja string literal, so it
    renders exactly as written whatever it holds.
    """
    parts: list[str] = []
    cursor = 0
    for match in PLACEHOLDER.finditer(text):
        if match.group(1) not in declared:
            continue
        parts.append(_literal(text[cursor:match.start()]))
        parts.append("{{ " + match.group(1) + " }}")
        cursor = match.end()
    parts.append(_literal(text[cursor:]))
    return "".join(parts)


def _literal(text: str) -> str:
    if "{" not in text and "}" not in text:
        return text
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return "{{ '" + escaped + "' }}"


def _input_schema(value: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"default": value}
    for python_type, json_type in _JSON_TYPES:
        if isinstance(value, python_type):
            schema["type"] = json_type
            break
    return schema
