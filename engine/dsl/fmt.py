"""``orchestrion fmt``: a workflow file rewritten in the canonical key order and style.

YAML goes through ruamel's round trip, so comments, flow collections, block
scalars and quoting survive; only the order of a workflow's, a stage's and a
task's keys and the indentation change. A comment travels with the key it
follows (ruamel attaches it there). JSON is re-indented with two spaces.
Formatting twice gives the same text.
"""

from __future__ import annotations

import io
import json
from collections.abc import MutableMapping, Sequence
from typing import Any

from engine.dsl.source import MAX_DOCUMENT_BYTES

# The order a reader looks for things in: what the document is, what it takes, what it does, what it gives.
WORKFLOW_KEYS = ("$schema", "dsl", "name", "version", "description", "inputs", "defaults", "limits", "schedule",
                 "stages", "outputs")
STAGE_KEYS = ("type", "name", "description", "repeat", "tasks")
# A task: its name, when and how often it runs, who answers, how, then what it does and returns.
TASK_KEYS = ("id", "description", "when", "for_each", "as", "max_concurrency", "after",
             "model", "system", "critical", "temperature", "max_tokens", "timeout", "retry", "hedge_after", "cache",
             "addons", "prompt", "call", "workflow", "plan", "with", "output")
POLICY_KEYS = TASK_KEYS[TASK_KEYS.index("model"):TASK_KEYS.index("prompt")]


class FormatError(ValueError):
    """The text is not a document fmt can rewrite (it does not parse, or is not a mapping)."""


class NotInTheDslError(FormatError):
    """The document is not written in the DSL (the seed format, or another kind of file)."""


def format_text(text: str, *, json_file: bool) -> str:
    """The canonical form of a workflow document's text."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise FormatError(f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
    return _format_json(text) if json_file else _format_yaml(text)


def _format_json(text: str) -> str:
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise FormatError(f"not valid JSON: {error}") from None
    _check_workflow(document)
    _order_workflow(document)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _yaml() -> Any:
    from ruamel.yaml import YAML  # the loader's library, imported when first needed

    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # a scalar or flow list stays on one line: wrapping would leave trailing spaces
    return yaml


def _format_yaml(text: str) -> str:
    from ruamel.yaml.error import YAMLError

    yaml = _yaml()
    try:
        document = yaml.load(text)
    except (YAMLError, RecursionError) as error:
        raise FormatError(f"not valid YAML: {str(error).splitlines()[0] if str(error) else error}") from None
    _check_workflow(document)
    _order_workflow(document)
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def dump_workflow(document: dict[str, Any], schema_link: str) -> str:
    """A workflow built in code (the planner's) as a file in the canonical form, with a first line
    that tells YAML editors where its schema is."""
    _order_workflow(document)
    out = io.StringIO()
    out.write(f"# yaml-language-server: $schema={schema_link}\n")
    _yaml().dump(document, out)
    return out.getvalue()


def _check_workflow(document: Any) -> None:
    if not isinstance(document, MutableMapping):
        raise FormatError("the document is not a mapping")
    if "dsl" not in document:  # a seed-format document has another shape: its keys are not reordered
        raise NotInTheDslError("not an orchestrion workflow (no `dsl:` key); fmt formats workflows in the DSL")


def _order_workflow(workflow: MutableMapping[str, Any]) -> None:
    _reorder(workflow, WORKFLOW_KEYS)
    if isinstance(workflow.get("defaults"), MutableMapping):
        _reorder(workflow["defaults"], POLICY_KEYS)
    for item in _items(workflow.get("stages")):
        _order_stage(item)


def _order_stage(stage: MutableMapping[str, Any]) -> None:
    _reorder(stage, STAGE_KEYS)
    for item in _items(stage.get("tasks")):
        if "type" in item:  # a nested stage
            _order_stage(item)
        else:
            _reorder(item, TASK_KEYS)


def _items(value: Any) -> list[MutableMapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [item for item in value if isinstance(item, MutableMapping)]


def _reorder(mapping: MutableMapping[str, Any], order: Sequence[str]) -> None:
    """Known keys in ``order``, then unknown ones as they were (the validator names those)."""
    rank = {key: index for index, key in enumerate(order)}
    keys = list(mapping)
    wanted = sorted(keys, key=lambda key: (rank.get(key, len(order)), keys.index(key)))
    if wanted == keys:
        return
    for key in wanted:  # ruamel's CommentedMap is an OrderedDict: its comments are keyed by key
        _move_to_end(mapping, key)


def _move_to_end(mapping: MutableMapping[str, Any], key: str) -> None:
    move = getattr(mapping, "move_to_end", None)
    if move is not None:
        move(key)
    else:
        mapping[key] = mapping.pop(key)
