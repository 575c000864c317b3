"""Check a run's inputs against the workflow's declared inputs, defaults applied."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from engine.depth import value_too_deep
from engine.dsl.models import is_image_input
from engine.dsl.source import MAX_DOCUMENT_DEPTH, TOO_DEEP
from engine.errors import InputError
from engine.suggest import did_you_mean


def validate_inputs(declared: Mapping[str, Mapping[str, Any]], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inputs of a run: ``given`` checked against the JSON Schemas, defaults filled in.

    Raises InputError naming every unknown, missing or invalid input.
    """
    from jsonschema import Draft202012Validator

    given = dict(given or {})
    problems = []
    for name in given.keys() - declared.keys():
        hint = did_you_mean(name, declared) or f"declared: {', '.join(declared) or 'none'}"
        problems.append(f"unknown input {name!r} ({hint})")
    values: dict[str, Any] = {}
    for name, schema in declared.items():
        if name in given:
            values[name] = given[name]
        elif "default" in schema:
            values[name] = copy.deepcopy(schema["default"])
            continue
        else:
            about = f": {schema['description']}" if "description" in schema else ""
            problems.append(f"missing input {name!r}{about}")
            continue
        if is_image_input(schema):
            continue  # read and checked as an image before the run starts (runtime.images)
        if value_too_deep(values[name], MAX_DOCUMENT_DEPTH):  # jsonschema would recurse into every level
            problems.append(f"input {name!r}: {TOO_DEEP}")
            continue
        error = next(iter(Draft202012Validator(dict(schema)).iter_errors(values[name])), None)
        if error is not None:
            where = "".join(f"[{part!r}]" for part in error.absolute_path)
            problems.append(f"input {name!r}{where}: {error.message}")
    if problems:
        raise InputError(sorted(problems))
    return values
