"""Load a workflow from a file, a string or a dict, with errors that point at the source."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any, get_args

from pydantic import ValidationError

from engine.depth import TooManyValuesError, first_too_deep
from engine.dsl import models
from engine.dsl.models import FieldError, Workflow
from engine.dsl.seed import convert_seed, is_seed_document
from engine.dsl.source import MAX_DOCUMENT_DEPTH, MAX_NODES, Origin, SourceMap, parse_document, too_deep
from engine.errors import Location, Path, Problem, WorkflowError
from engine.suggest import did_you_mean

WorkflowSource = str | os.PathLike[str] | Mapping[str, Any] | Workflow
_IDENTIFIER_PATTERN: str = get_args(models.Identifier)[1].pattern
# What each pattern allows, said in words; other patterns are quoted as they are.
_PATTERN_RULES = {
    _IDENTIFIER_PATTERN: "ids and names are ASCII letters, digits and _, and do not start with a digit",
}


def load_workflow(source: WorkflowSource) -> Workflow:
    """Load and validate a workflow from a path, a mapping, or a Workflow.

    Raises WorkflowError listing every problem, each with file:line:column.
    """
    if isinstance(source, Workflow):
        return source
    if isinstance(source, Mapping):
        origin = Origin(SourceMap("<dict>"))
        _check_depth(source, origin)
        return _validate(dict(source), origin)
    path = FilePath(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        looks_like_text = isinstance(source, str) and "\n" in source
        hint = "to load YAML or JSON text, call parse_workflow(text)" if looks_like_text else None
        where = Location("<string>" if looks_like_text else str(path))
        raise WorkflowError([Problem("unreadable", f"cannot read the file: {reason}", hint=hint,
                                     location=where)]) from None
    return parse_workflow(text, name=str(path), file=path)


def parse_workflow(text: str, name: str = "<string>", file: FilePath | None = None) -> Workflow:
    """Load and validate a workflow from YAML or JSON text."""
    document = parse_document(text, name)
    return _validate(document.data, Origin(document.source, file))


def _validate(data: dict[str, Any], origin: Origin) -> Workflow:
    if is_seed_document(data):
        stem = FilePath(origin.source.name).stem if origin.file else "seed_workflow"
        data, renames = convert_seed(data, _safe_name(stem))
        origin = Origin(origin.source, origin.file, renames)
    try:
        workflow = Workflow.model_validate(data)
    except ValidationError as exc:
        found = [_problem(error, origin) for error in exc.errors()]
        raise WorkflowError(sorted(found, key=Problem.sort_key)) from None
    workflow._origin = origin
    return workflow


def _check_depth(data: Mapping[str, Any], origin: Origin) -> None:
    """The text scan's limit for a mapping built in code or by the planner, walked without recursing:
    pydantic, jsonschema and the compiler recurse once or more per level."""
    try:
        path = first_too_deep(data, MAX_DOCUMENT_DEPTH, MAX_NODES)
    except TooManyValuesError:
        problem = Problem("too-large", f"the mapping holds more than {MAX_NODES} values",
                          hint="a list or dict found in many places counts each time", location=origin.locate(()))
        raise WorkflowError([problem]) from None
    if path is not None:
        raise too_deep(origin.locate(path), path)


def _safe_name(stem: str) -> str:
    cleaned = "".join(char if (char.isascii() and char.isalnum()) or char in "_.-" else "_" for char in stem)
    return cleaned.lstrip(".-") or "seed_workflow"


def _problem(error: Any, origin: Origin) -> Problem:
    path = _clean_loc(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        path += cause.path
    message, hint = _describe(error, cause, path)
    return Problem("schema", message, path, hint, origin.locate(path))


def _clean_loc(loc: tuple[Any, ...]) -> Path:
    """Drop the union tags pydantic inserts (``tasks[0].task.prompt``)."""
    cleaned: list[str | int] = []
    for index, part in enumerate(loc):
        after_item = index > 0 and isinstance(loc[index - 1], int)
        if after_item and part in ("task", "stage") and len(loc) > 2 and loc[index - 2] == "tasks":
            continue
        if isinstance(part, str) and part.startswith(("function-after[", "function-before[")):
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _describe(error: Any, cause: object, path: Path) -> tuple[str, str | None]:
    kind = error["type"]
    if isinstance(cause, Exception):
        return str(cause), None
    if kind == "extra_forbidden":
        key = str(path[-1])
        known = _known_fields(path)
        if key in known:  # a stage item's field on a task, or a task's on a stage: no spelling to suggest
            return f"unknown field {key!r}", _other_kind(key)
        return f"unknown field {key!r}", did_you_mean(key, known)
    if kind in {"string_type", "int_type", "float_type", "bool_type", "dict_type", "list_type"}:
        found = type(error["input"]).__name__ if error["input"] is not None else "null"
        quotable = kind == "string_type" and isinstance(error["input"], int | float | bool)
        hint = "quote the value to make it a string" if quotable else None
        return f"{error['msg']}, found {found} {error['input']!r}"[:300], hint
    return _message(error, path), None


def _message(error: Any, path: Path) -> str:
    """The message of an error that needs no hint."""
    kind = error["type"]
    if kind == "missing":
        return f"missing required field {str(path[-1])!r}"
    if kind == "literal_error":
        return f"{error['msg']}, found {error['input']!r}"
    if kind == "string_pattern_mismatch":
        return _pattern_mismatch(error["input"], error["ctx"]["pattern"], path)
    return str(error["msg"])


def _pattern_mismatch(value: str, pattern: str, path: Path) -> str:
    """Names the first character the pattern refuses: a regex alone hides a space or a U+200B."""
    rule = _PATTERN_RULES.get(pattern, f"the value must match '{pattern}'")
    shown = f"{_field(path)} {_shown(value)}".lstrip()
    found = _first_refused(value, pattern)
    if found is None:  # each character is allowed, not their order (`a..b`), or the value is empty
        return f"{shown}: {rule}"
    index, char = found
    return f"{shown} has {_character(char)} at position {index + 1}; {rule}"


def _first_refused(value: str, pattern: str) -> tuple[int, str] | None:
    """The first character of ``value`` outside the character classes of ``pattern``, which must start
    ``^[...]`` (that class is the first character's); None if there is none."""
    classes = re.findall(r"\[[^\]]*\]", pattern)
    if not pattern.startswith("^[") or not classes:
        return None
    first, later = re.compile(classes[0]), re.compile("|".join(classes))
    for index, char in enumerate(value):
        if not (first if index == 0 else later).fullmatch(char):
            return index, char
    return None


def _field(path: Path) -> str:
    """What a message calls the value: its field (``id``), ``name`` for a key, else nothing (a list item)."""
    last = path[-1] if path else ""
    if last == "[key]":
        return "name"
    return last if isinstance(last, str) and last.isidentifier() else ""


def _shown(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _character(char: str) -> str:
    """``U+200B ZERO WIDTH SPACE``: seen whatever the character and the terminal."""
    return f"U+{ord(char):04X} {unicodedata.name(char, '')}".rstrip()


def _known_fields(path: Path) -> list[str]:
    parent = path[:-1]
    if not parent:
        return _aliases(models.Workflow)
    owner = {"defaults": models.Policies, "limits": models.Limits, "retry": models.RetryPolicy,
             "repeat": models.Repeat, "output": models.OutputSpec}.get(str(parent[-1]))
    if owner is not None:
        return _aliases(owner)
    return _aliases(models.Task) + _aliases(models.Stage)


def _other_kind(key: str) -> str:
    """Why a field of tasks or of stages is unknown here: it belongs to the other kind of item."""
    if key in _aliases(models.Stage):
        return f"{key!r} is a stage's field; a task has none (a stage is an item with `tasks:`)"
    return f"{key!r} is a task's field; a stage has none (a stage is named with `name:`)"


def _aliases(model: type[Any]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]
