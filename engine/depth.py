"""How deep a JSON text or a Python value nests, found without recursing.

``json``, ruamel's composer, pydantic and jsonschema all recurse once or more
per level of nesting, so untrusted text (workflow files, inputs, model answers,
provider bodies) is measured here first, in a loop, and refused past a limit
instead of ending in RecursionError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# A JSON string (skipped whole, even unterminated, so the scan stays linear) or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.?[^"\\]*)*"?|[\[{]|[\]}]', re.DOTALL)


def json_too_deep_at(text: str, limit: int) -> int | None:
    """The offset of the first ``[`` or ``{`` of JSON ``text`` nested deeper than ``limit``, or None."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > limit:
                return token.start()
        elif bracket in ("]", "}"):
            depth -= 1
    return None


class TooManyValuesError(ValueError):
    """A value walked past ``max_nodes`` values: too large to tell how deep it nests."""


def first_too_deep(value: Any, limit: int, max_nodes: int = 1_000_000) -> tuple[str | int, ...] | None:
    """The path (keys and indexes) to the first dict or list nested deeper than ``limit`` in ``value``
    (``value`` itself at depth 0), or None. TooManyValuesError after ``max_nodes`` values: a list shared in
    many places counts each time, and a cycle would never end."""
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    for _ in range(max_nodes):
        if not pending:
            return None
        item, path = pending.pop()
        if isinstance(item, Mapping):
            children: Any = ((str(key), child) for key, child in item.items())
        elif isinstance(item, list | tuple):
            children = enumerate(item)
        else:
            continue
        if len(path) >= limit:
            return path
        pending.extend((child, (*path, key)) for key, child in children)
    raise TooManyValuesError(f"more than {max_nodes} values")


def value_too_deep(value: Any, limit: int, max_nodes: int = 1_000_000) -> bool:
    """Whether dicts and lists nest deeper than ``limit`` in ``value`` (too many values to tell counts
    as too deep: as unsafe to recurse into)."""
    try:
        return first_too_deep(value, limit, max_nodes) is not None
    except TooManyValuesError:
        return True
