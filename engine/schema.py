"""The published JSON Schema of the DSL, generated from the pydantic models.

``orchestrion schema > schemas/workflow.schema.json`` regenerates the file; a
test fails when it is out of date. pydantic's output is adjusted where
jsonschema would otherwise disagree with pydantic or give vague errors:

- a stage item is a nested stage if it has ``type``, else a task
  (``if``/``then``/``else`` instead of ``oneOf``, for exact error paths);
- a task has exactly one kind key, and no field foreign to its kind;
- an input's ``default`` must match the input's schema: only the models check
  this (a JSON Schema cannot refer to a sibling value as a schema);
- names of inputs and outputs must be identifiers (``propertyNames``);
- ``"default": null`` is dropped: absent means "inherit", null means "off".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.catalog import builtin_dir
from engine.dsl.models import KIND_FIELDS, TASK_KINDS, Workflow

# Stable per DSL version: a file declaring `dsl: orchestrion/v1` validates against this schema
# whatever the release. The same file ships in the package (``installed_schema``).
SCHEMA_ID = "https://orchestrion.dev/schemas/v1/workflow.schema.json"
SCHEMA_FILE = "workflow.schema.json"
META_SCHEMA = "https://json-schema.org/draft/2020-12/schema"


IMAGE_INPUT: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["type"],
    "description": "An image input: a path, a data: or https URL, or bytes (through the API), read as an image.",
    "properties": {"type": {"const": "image", "description": "`image`."},
                   "description": {"type": "string", "description": "What the image is for."},
                   "title": {"type": "string", "description": "A short name for forms."},
                   "default": {"type": "null", "description": "null: the input is optional."}},
}


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a workflow document."""
    schema = Workflow.model_json_schema(by_alias=True)
    definitions = schema["$defs"]
    _stage_items(definitions["Stage"])
    _task_kinds(definitions["Task"])
    for name in ("inputs", "outputs"):
        _identifier_keys(schema["properties"][name])
    schema["properties"]["inputs"]["additionalProperties"] = {
        "if": {"type": "object", "required": ["type"], "properties": {"type": {"const": "image"}}},
        "then": {"$ref": "#/$defs/ImageInput"},
        "else": {"$ref": META_SCHEMA},
    }
    definitions["ImageInput"] = IMAGE_INPUT
    definitions["OutputSpec"]["properties"]["schema"] = {
        "description": definitions["OutputSpec"]["properties"]["schema"]["description"],
        "anyOf": [{"$ref": META_SCHEMA}, {"type": "null"}],
    }
    _drop_null_defaults(schema)
    return {"$schema": META_SCHEMA, "$id": SCHEMA_ID, **schema}


def installed_schema() -> Path | None:
    """The schema file shipped with this installation (in a source checkout, ``schemas/``)."""
    folder = builtin_dir("schemas")
    return folder / SCHEMA_FILE if folder is not None and (folder / SCHEMA_FILE).is_file() else None


def schema_link(document: Path | None) -> str:
    """What a workflow written to ``document`` names as its schema, so that an editor finds it: the
    installed schema relative to the document's folder, or absolute when written elsewhere (stdout,
    another drive), or the ``$id`` when no schema is installed."""
    schema = installed_schema()
    if schema is None:
        return SCHEMA_ID
    if document is None:
        return schema.as_posix()
    try:
        return Path(os.path.relpath(schema, document.resolve().parent)).as_posix()
    except ValueError:  # another drive, on Windows
        return schema.as_posix()


def _stage_items(stage: dict[str, Any]) -> None:
    stage["properties"]["tasks"]["items"] = {
        "if": {"type": "object", "required": ["type"]},
        "then": {"$ref": "#/$defs/Stage"},
        "else": {"$ref": "#/$defs/Task"},
    }


def _task_kinds(task: dict[str, Any]) -> None:
    # A kind key set to null does not give the task its kind (as in the model). A `prompt` with
    # `generate` is the generate kind: the prompt describes the media.
    given = {kind: {"required": [kind], "properties": {kind: {"type": "string"}}} for kind in TASK_KINDS}
    task["anyOf"] = list(given.values())
    conditions = {**given, "generate": {"required": ["prompt", "generate"],
                                        "properties": {"prompt": {"type": "string"}, "generate": {"type": "string"}}}}
    conditions["prompt"] = {"required": ["prompt"], "properties": {"prompt": {"type": "string"},
                                                                   "generate": {"type": "null"}}}
    rules = []
    for kind, condition in conditions.items():
        keys = TASK_KINDS if kind != "generate" else tuple(other for other in TASK_KINDS if other != "prompt")
        foreign: dict[str, Any] = {other: {"type": "null"} for other in keys if other != kind}
        foreign |= {field.rstrip("_"): False for field, kinds in KIND_FIELDS.items() if kind not in kinds}
        if kind not in ("prompt", "generate"):
            foreign["generate"] = {"type": "null"}
        rules.append({"if": condition, "then": {"properties": dict(sorted(foreign.items()))}})
    rules.append({
        "if": {"anyOf": [{"required": ["as"]}, {"required": ["max_concurrency"]}]},
        "then": {"required": ["for_each"]},
    })
    for media, fields in (("video", ("count", "size")), ("image", ("aspect_ratio", "seconds"))):
        rules.append({"if": {"required": ["generate"], "properties": {"generate": {"const": media}}},
                      "then": {"properties": dict.fromkeys(fields, False)}})
    task["allOf"] = rules


def _identifier_keys(mapping: dict[str, Any]) -> None:
    patterns = mapping.pop("patternProperties")
    (pattern, values), = patterns.items()
    mapping["propertyNames"] = {**mapping.get("propertyNames", {}), "pattern": pattern}
    mapping["additionalProperties"] = values


def _drop_null_defaults(node: Any) -> None:
    if isinstance(node, dict):
        if "default" in node and node["default"] is None:
            del node["default"]
        for value in node.values():
            _drop_null_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)
