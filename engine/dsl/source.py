"""Parse YAML or JSON text into plain data, remembering where every value stood.

ruamel.yaml (YAML 1.2) is used rather than PyYAML because it rejects duplicate
keys and keeps the line and column of every key and item; YAML 1.2 also keeps
``no`` a string. JSON is YAML 1.2, but ruamel's pure-Python parser is about 500x slower
than ``json``: JSON documents are read with ``json`` (duplicate keys still
refused) and ruamel locates positions only when an error needs one.

Both parsers, and everything that reads their result, recurse once per level
of nesting: a document deeper than ``MAX_DOCUMENT_DEPTH`` is refused, with
its position, before anything recurses that deep (a scan of the brackets for
JSON, ruamel's ``max_depth`` and the alias expansion for YAML).
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any

from engine.depth import json_too_deep_at
from engine.errors import Location, Path, Problem, WorkflowError, format_path

if TYPE_CHECKING:
    from ruamel.yaml.error import YAMLError

MAX_DOCUMENT_BYTES = 5 * 1024 * 1024
MAX_NODES = 200_000  # after alias expansion: stops "billion laughs" documents
# Mappings and lists inside one another. The parsers, pydantic, jsonschema and the compiler recurse once
# or more per level, so a deeper file must be refused before any of them reads it. The deepest shipped
# workflow has 11 levels (a nested stage adds 2); jsonschema, the deepest reader, overflows near 200.
MAX_DOCUMENT_DEPTH = 64
TOO_DEEP = f"nested too deep (more than {MAX_DOCUMENT_DEPTH} levels)"
_TOO_DEEP_HINT = "every mapping and list is a level; a workflow needs about a dozen (a nested stage adds two)"


@dataclass(frozen=True)
class SourceMap:
    """Positions (1-based line, column) of the values of a parsed document.

    For JSON, read with the fast ``json`` module, positions are computed from
    ``text`` only when a problem needs one: valid files never pay for them.
    """

    name: str
    known: Mapping[Path, tuple[int, int]] | None = None
    text: str | None = field(default=None, repr=False)

    @cached_property
    def positions(self) -> Mapping[Path, tuple[int, int]]:
        if self.known is not None:
            return self.known
        if self.text is None:
            return {}
        try:
            return _parse_yaml(self.text, self.name).source.positions
        except WorkflowError:
            return {}

    def locate(self, path: Path) -> Location:
        """The position of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            position = self.positions.get(path[:end])
            if position is not None:
                return Location(self.name, *position)
        return Location(self.name)


@dataclass(frozen=True)
class Origin:
    """Where a loaded workflow came from: its file and the position of each value."""

    source: SourceMap
    file: FilePath | None = None
    # For converted documents: new path prefix -> path in the original document.
    renames: Mapping[Path, Path] = field(default_factory=dict)

    def locate(self, path: Path) -> Location:
        for end in range(len(path), 0, -1):
            old = self.renames.get(path[:end])
            if old is not None:
                return self.source.locate(old + path[end:])
        return self.source.locate(path)


@dataclass(frozen=True)
class ParsedDocument:
    data: dict[str, Any]
    source: SourceMap


def parse_document(text: str, name: str = "<string>") -> ParsedDocument:
    """Parse ``text`` (YAML or JSON); raise WorkflowError naming line and column."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise _error(name, "too-large", f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
    if text.lstrip().startswith("{"):
        try:
            return _parse_json(text, name)
        except WorkflowError:
            if name.endswith(".json"):
                raise
    return _parse_yaml(text, name)


def _parse_yaml(text: str, name: str) -> ParsedDocument:
    from ruamel.yaml import YAML  # imported on first use: it is the slowest import of the loader
    from ruamel.yaml.composer import MaxDepthExceededError
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError, YAMLWarning

    yaml = YAML(typ="rt", pure=True)
    # ruamel's scanner and parser loop, its composer recurses: it stops at the limit, however deep the
    # text goes. It counts the scalar at the bottom as a level too.
    yaml.max_depth = MAX_DOCUMENT_DEPTH + 1
    try:
        with warnings.catch_warnings():
            # ruamel warns (ReusedAnchorWarning...) about valid YAML: the loader reports, it never prints.
            warnings.simplefilter("ignore", YAMLWarning)
            raw = yaml.load(text)
    except MaxDepthExceededError as exc:
        mark = exc.problem_mark  # the first value inside the first collection past the limit
        raise too_deep(Location(name, mark.line + 1, mark.column + 1) if mark else Location(name)) from None
    except DuplicateKeyError as exc:
        raise _yaml_error(name, exc, "duplicate-key", "remove or rename one of the two keys") from None
    except YAMLError as exc:
        raise _yaml_error(name, exc, "syntax", "fix the YAML syntax at that position") from None
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        # ruamel's own failures on some odd texts (its float resolver takes `._` for a number, then
        # float() refuses it; a mark past the end of the text): reported, never a traceback.
        raise _error(name, "syntax", f"the YAML parser could not read this text ({type(exc).__name__}: {exc})"[:300],
                     hint="quote a value that looks like a number but is not one, such as `._`") from None
    plainer = _Plainer(name)
    data = plainer.convert(raw, ())
    if not isinstance(data, dict):
        found = "an empty document" if data is None else f"a {type(data).__name__}"
        raise _error(name, "not-a-mapping", f"the document must be a mapping, found {found}",
                     hint="start the file with `dsl: orchestrion/v1`")
    return ParsedDocument(data, SourceMap(name, plainer.positions))


class _Plainer:
    """Turns ruamel's round-trip nodes into plain data, recording positions."""

    def __init__(self, name: str) -> None:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        self.mapping, self.sequence = CommentedMap, CommentedSeq
        self.name = name
        self.positions: dict[Path, tuple[int, int]] = {}
        self.count = 0

    def convert(self, node: Any, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _error(self.name, "too-large", f"document expands to more than {MAX_NODES} values",
                         hint="YAML aliases that repeat large blocks multiply the document's size")
        if isinstance(node, self.mapping | self.sequence) and len(path) >= MAX_DOCUMENT_DEPTH:
            # Only aliases get here: `*a` inside a collection nests `&a`'s levels below it.
            raise too_deep(self.locate(path))
        if isinstance(node, self.mapping):
            result: dict[str, Any] = {}
            for key, value in node.items():
                child = (*path, str(key))
                is_collection = isinstance(value, self.mapping | self.sequence)
                line, col = node.lc.key(key) if is_collection else node.lc.value(key)
                self.positions[child] = (line + 1, col + 1)
                result[str(key)] = self.convert(value, child)
            return result
        if isinstance(node, self.sequence):
            items = []
            for index, value in enumerate(node):
                line, col = node.lc.item(index)
                self.positions[(*path, index)] = (line + 1, col + 1)
                items.append(self.convert(value, (*path, index)))
            return items
        return _scalar(node)

    def locate(self, path: Path) -> Location:
        position = self.positions.get(path)
        return Location(self.name) if position is None else Location(self.name, *position)


def _scalar(node: Any) -> Any:
    """ruamel's scalar subclasses -> the plain JSON types."""
    if node is None or isinstance(node, bool):
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, dt.date | dt.datetime):
        return node.isoformat()  # JSON has no dates: keep what the author wrote
    return str(node)


def _parse_json(text: str, name: str) -> ParsedDocument:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise _error(name, "duplicate-key", f"duplicate key {duplicated[0]!r}",
                         hint="remove or rename one of the two keys")
        return dict(pairs)

    _check_json_depth(text, name)
    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except WorkflowError as exc:
        if exc.problems[0].code == "duplicate-key":
            _parse_yaml(text, name)  # JSON is YAML 1.2: ruamel finds the same key again, with its line and column
        raise
    except json.JSONDecodeError as exc:
        problem = Problem("syntax", exc.msg, location=Location(name, exc.lineno, exc.colno),
                          hint="fix the JSON syntax at that position")
        raise WorkflowError([problem]) from None
    if not isinstance(data, dict):
        raise _error(name, "not-a-mapping", "the document must be a JSON object")
    return ParsedDocument(data, SourceMap(name, text=text))


def _check_json_depth(text: str, name: str) -> None:
    """Refuse JSON nested deeper than MAX_DOCUMENT_DEPTH in one linear scan: ``json`` recurses per level."""
    offset = json_too_deep_at(text, MAX_DOCUMENT_DEPTH)
    if offset is not None:
        line = text.count("\n", 0, offset) + 1
        column = offset - text.rfind("\n", 0, offset)  # 1-based, as `json` counts
        raise too_deep(Location(name, line, column))


def _yaml_error(name: str, exc: YAMLError, code: str, hint: str) -> WorkflowError:
    from ruamel.yaml.error import MarkedYAMLError

    location = Location(name)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            location = Location(name, mark.line + 1, mark.column + 1)
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        if code == "duplicate-key":
            message = (exc.problem or "duplicate key").split(" with value")[0]
    return WorkflowError([Problem(code, message, location=location, hint=hint)])


def too_deep(location: Location, path: Path = ()) -> WorkflowError:
    """The error for a document nested deeper than MAX_DOCUMENT_DEPTH."""
    return WorkflowError([Problem("too-deep", TOO_DEEP, path, _TOO_DEEP_HINT, location)])


def _error(name: str, code: str, message: str, hint: str | None = None) -> WorkflowError:
    return WorkflowError([Problem(code, message, location=Location(name), hint=hint)])


def read_document(path: FilePath, error: type[Exception], what: str) -> ParsedDocument:
    """Parse a YAML/JSON file that is not a workflow (a configuration, an addon); ``error`` says why not."""
    try:
        return parse_document(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}") from None
    except WorkflowError as exc:
        raise error(str(exc.problems[0])) from None


def located_errors(errors: list[Any], source: SourceMap, clean: Callable[[Path], Path] = lambda loc: loc) -> str:
    """pydantic's errors as ``file:line:column: path: message`` lines (values are never echoed: keys)."""
    lines = []
    for error in errors:
        loc = clean(tuple(error["loc"]))
        lines.append(f"{source.locate(loc)}: {format_path(loc)}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
