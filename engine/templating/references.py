"""Find, without rendering, the names a template or expression refers to.

The compiler draws the DAG's edges from these references, so they must be
exact: names bound inside the template (``set``, ``for``, macros) are not
references; ``summary.text`` and ``summary['text']`` are a reference to
``summary`` with the path ``("text",)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from jinja2 import meta, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser

from engine.errors import TemplateError
from engine.templating.sandbox import SandboxEnvironment, syntax_message

_PARSER_ENVIRONMENT = SandboxEnvironment()


@dataclass(frozen=True, slots=True, order=True)
class Reference:
    """A name used by a template, with the attribute/item path read from it."""

    name: str
    path: tuple[str | int, ...] = ()

    def __str__(self) -> str:
        return ".".join([self.name, *map(str, self.path)])


def template_references(source: str) -> frozenset[Reference]:
    """References of a ``{{ ... }}`` template; TemplateError if it does not parse."""
    return _references("template", source)


def expression_references(source: str) -> frozenset[Reference]:
    """References of a bare expression (``when``, ``until``, ``for_each``)."""
    return _references("expression", source)


# A template whose only Jinja is ``{{ name }}`` or ``{{ name.attr }}`` is read
# without Jinja's parser (0.3 ms a template, most of the compile time).
_SIMPLE_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}")
_NOT_NAMES = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if",
                        "else"})


def _simple_references(source: str) -> frozenset[Reference] | None:
    """The references of a template made of plain placeholders, else None."""
    found = []
    for match in _SIMPLE_PLACEHOLDER.finditer(source):
        if match.group(1) in _NOT_NAMES:
            return None
        found.append(Reference(match.group(1), tuple(match.group(2).split(".")[1:])))
    rest = _SIMPLE_PLACEHOLDER.sub("", source)
    return None if "{" in rest or "}" in rest else frozenset(found)


@lru_cache(maxsize=8192)
def _references(kind: str, source: str) -> frozenset[Reference]:
    simple = _simple_references(source) if kind == "template" else None
    if simple is not None:
        return simple
    try:
        tree = _parse_template(source) if kind == "template" else _parse_expression(source)
        free = meta.find_undeclared_variables(tree)  # compiles it: unknown filters and tests fail here
    except TemplateSyntaxError as exc:
        where = f" (line {exc.lineno})" if kind == "template" and exc.lineno > 1 else ""
        raise TemplateError(f"{kind} does not parse: {syntax_message(exc)}{where}") from None
    inner: set[int] = set()
    found: set[Reference] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        if id(node) in inner:
            continue
        chain = _chain(node, inner)
        if chain is not None and chain.name in free:
            found.add(chain)
    return frozenset(found)


def _parse_template(source: str) -> nodes.Template:
    return _PARSER_ENVIRONMENT.parse(source)


def _parse_expression(source: str) -> nodes.Template:
    parser = Parser(_PARSER_ENVIRONMENT, source, state="variable")
    expression = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise TemplateSyntaxError(f"unexpected {token.value!r}", token.lineno)
    tree = nodes.Template([nodes.Output([expression])])
    tree.set_environment(_PARSER_ENVIRONMENT)
    return tree


def _chain(node: nodes.Node, inner: set[int]) -> Reference | None:
    """``a.b['c']`` -> Reference("a", ("b", "c")); marks the inner nodes as seen."""
    path: list[str | int] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            path.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str | int):
            path.append(node.arg.value)
        else:
            path.clear()  # a computed key: the reference stops at what precedes it
        node = node.node
        inner.add(id(node))
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return Reference(node.name, tuple(reversed(path)))
    return None
