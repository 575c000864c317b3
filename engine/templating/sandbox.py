"""Jinja in an immutable sandbox, with bounded output and work.

Templates come from workflow files and from an LLM (the planner), so they are
untrusted. The immutable sandbox blocks private attributes (``__class__``,
``__globals__``), ``|attr`` escapes and mutation; it does not bound
resources, so this module adds (with the checks of ``bounds``):

- a size estimate before every operation, filter or method that can build a
  long string, list or integer (``'a' * 10**9``, ``a ~ a``, ``2**64**64``,
  ``'{0:{1}}'.format(x, 10**9)``, ``x|center(10**9)``), and a running total
  of what a render has built;
- a work budget: every ``for`` loop draws from an iteration budget and checks
  a deadline (the AST is rewritten so loops iterate through a counter);
- a cap on the rendered output, enforced while rendering;
- refusals with a reason for what the sandbox cannot offer: ``include``,
  ``import`` and ``extends`` (templates read no files), and output of a
  method, function or generator (whose text is a memory address).

Undefined names are errors (StrictUndefined); compiled templates are cached.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.visitor import NodeTransformer

from engine.errors import TemplateError, TemplateLimitError, TemplateSecurityError
from engine.suggest import did_you_mean
from engine.templating import bounds
from engine.templating.bounds import (
    DEFAULT_LIMITS,
    RenderBudget,
    RenderLimits,
    check_estimate,
    check_size,
    check_text,
    check_width,
    current_budget,
)

__all__ = ["RenderLimits", "SandboxEnvironment", "TemplateRenderer"]

_LOOP_GUARD = "__orchestrion_bounded_iter"
_CONCAT_GUARD = "__orchestrion_bounded_concat"
_SLICE_GUARD = "__orchestrion_bounded_slice"
_PLAIN_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NOT_PLAIN = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if",
                        "else", "range", "dict", "cycler", "joiner", "namespace"})
_SINGLE_EXPRESSION = re.compile(r"\s*\{\{(.*)\}\}\s*", re.S)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_REFUSED_METHODS = {"translate": "its table can turn each character into a long string",
                    "maketrans": "it builds tables for translate, which is not available"}
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Filters that reshape or measure a value without turning it into text: no text estimate needed.
_SHAPE_FILTERS = frozenset({
    "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float", "groupby", "int", "items",
    "last", "length", "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "round",
    "select", "selectattr", "slice", "sort", "sum", "unique",
})
# The Jinja tags that read another template: there are no template files to read.
_LOADING_TAGS: dict[type[nodes.Node], str] = {
    nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from ... import", nodes.Extends: "extends",
}


def _bounded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = current_budget.get()
    for item in iterable:
        if budget is not None:
            budget.tick()
        yield item


def _bounded_concat(*pieces: Any) -> str:
    """``a ~ b``: the pieces' text is estimated before it is built."""
    ceiling = bounds.limits().max_value_chars
    check_estimate(sum(len(piece) if isinstance(piece, str) else bounds.text_size(piece, ceiling)
                       for piece in pieces), "joining with ~")
    text: str = check_size("".join(piece if isinstance(piece, str) else _text_of(piece) for piece in pieces))
    return text


def _bounded_slice(value: Any, start: Any, stop: Any, step: Any) -> Any:
    if isinstance(value, Undefined):
        return value
    return check_size(value[start:stop:step])


def _text_of(value: Any) -> str:
    """The text ``{{ value }}`` renders, refused when it would be a memory address."""
    if isinstance(value, Undefined):
        return str(value)  # StrictUndefined raises the recorded error
    if callable(value) and not isinstance(value, type):
        raise TemplateError("a method or function is output without calling it: add () to call it")
    if isinstance(value, Iterator):
        raise TemplateError("a generator is output as is: add |list or |join to render its items")
    check_text(value, "rendering")
    text = str(value)
    if _MEMORY_ADDRESS.search(text):
        raise TemplateError("a value renders as a Python object's memory address: output its fields instead")
    return text


def _finalize(value: Any) -> Any:
    return value if isinstance(value, str) else _text_of(value)


def _check_format_filter(arguments: dict[str, Any]) -> dict[str, Any]:
    bounds.check_percent_format(str(arguments.get("value", "")), tuple(arguments.get("args", ())) or
                                arguments.get("kwargs", {}))
    return arguments


def _check_replace_filter(arguments: dict[str, Any]) -> dict[str, Any]:
    bounds.check_replace(str(arguments.get("s", "")), str(arguments.get("old", "")), str(arguments.get("new", "")))
    return arguments


def _check_wordwrap_filter(arguments: dict[str, Any]) -> dict[str, Any]:
    text, width = str(arguments.get("s", "")), arguments.get("width", 79)
    breaks = len(text) // max(width if isinstance(width, int) else 1, 1) + 1
    check_estimate(len(text) + breaks * len(arguments.get("wrapstring") or "\n"), "wordwrap")
    return arguments


def _check_indent_filter(arguments: dict[str, Any]) -> dict[str, Any]:
    text, width = str(arguments.get("s", "")), arguments.get("width", 4)
    if isinstance(width, str):
        check_estimate(len(text) + (text.count("\n") + 1) * len(width), "indent")
    return arguments


def _check_join_filter(arguments: dict[str, Any]) -> dict[str, Any]:
    items = arguments.get("value")
    if not isinstance(items, list | tuple):  # a generator: its items are counted only once drawn
        items = arguments["value"] = list(_bounded_iter(items if isinstance(items, Iterable) else ()))
    _check_join(items, str(arguments.get("d", "")))
    return arguments


def _check_join(items: Sequence[Any], separator: str) -> None:
    ceiling = bounds.limits().max_value_chars
    size = len(separator) * max(len(items) - 1, 0)
    for item in items:
        size += len(item) if isinstance(item, str) else bounds.text_size(item, ceiling)
        if size > ceiling:
            break
    check_estimate(size, "join")


def _check_sum_filter(arguments: dict[str, Any]) -> dict[str, Any]:
    """``lists|sum(start=[])`` adds lists one by one, copying the total each time: estimated first,
    then joined in one pass."""
    start = arguments.get("start")
    if not isinstance(start, list | tuple) or arguments.get("attribute") is not None:
        return arguments  # numbers; or attributes, which Python adds as it finds them
    items = list(_bounded_iter(arguments.get("iterable") or ()))
    sized = [item for item in items if isinstance(item, list | tuple)]
    check_estimate(len(start) + sum(len(item) for item in sized), "sum")
    if len(sized) == len(items) and all(type(item) is type(start) for item in items):
        joined = [element for item in items for element in item]
        items = [type(start)(joined)]
    return {**arguments, "iterable": items}


def _check_urlize_filter(arguments: dict[str, Any]) -> dict[str, Any]:
    for name in ("target", "rel"):
        if len(str(arguments.get(name) or "")) > 100:
            raise TemplateSecurityError(f"urlize's {name} is limited to 100 characters")
    return arguments


# Filters whose output can be far larger than their input, checked (and their arguments
# possibly materialised) before they run.
_FILTER_CHECKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "format": _check_format_filter,
    "replace": _check_replace_filter,
    "wordwrap": _check_wordwrap_filter,
    "indent": _check_indent_filter,
    "join": _check_join_filter,
    "urlize": _check_urlize_filter,
    "sum": _check_sum_filter,
}


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)
    signature = inspect.signature(function) if check is not None else None
    passes = getattr(function, "jinja_pass_arg", None)
    value_at = 0 if passes is None else 1  # the filtered value follows a context argument, if any
    reads_text = name not in _SHAPE_FILTERS and check is None

    def bounded(*args: Any, **kwargs: Any) -> Any:
        for argument in (*args[value_at + 1:], *kwargs.values()):
            check_width(argument)  # widths and counts: center(10**9), batch(10**8)
        if reads_text and len(args) > value_at:
            check_text(args[value_at], f"the {name} filter")
        if check is not None and signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            bound.arguments.update(check(dict(bound.arguments)))
            args, kwargs = bound.args, bound.kwargs
        bounds.check_time()
        return check_size(function(*args, **kwargs))

    if passes is not None:  # keep the pass_context/pass_eval_context marker
        bounded.jinja_pass_arg = passes  # type: ignore[attr-defined]
    bounded.__name__ = function.__name__
    return bounded


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` that checks each field's spec and text, and the total, before building them."""

    def __init__(self, environment: ImmutableSandboxedEnvironment) -> None:
        super().__init__(environment)
        self._total = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        bounds.check_format_spec(format_spec)  # nested fields are filled in: '{0:{1}}'
        width = max((int(number) for number in re.findall(r"\d+", format_spec)), default=0)
        self._total += max(width, bounds.text_size(value, bounds.limits().max_value_chars))
        check_estimate(self._total, "str.format")
        return super().format_field(value, format_spec)


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with resource bounds (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                         finalize=_finalize)
        self.globals.pop("lipsum", None)  # lipsum(n) generates n paragraphs
        self.globals[_LOOP_GUARD] = _bounded_iter
        self.globals[_CONCAT_GUARD] = _bounded_concat
        self.globals[_SLICE_GUARD] = _bounded_slice
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            bounds.check_product(left, right)
        elif operator == "+":
            bounds.check_sum(left, right)
        elif operator == "**":
            bounds.check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            bounds.check_percent_format(left, right)
        return check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            args = _checked_str_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
        bounds.check_time()
        return check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # str.format is wrapped at attribute access, not in call(): bound it here.
        if not callable(value) or getattr(value, "__name__", "") not in ("format", "format_map"):
            return None
        text = getattr(value, "__self__", None)
        if not isinstance(text, str):
            return None
        bounds.check_brace_format(text)
        is_map = value.__name__ == "format_map"

        def formatted(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1 or not isinstance(args[0], Mapping):
                    raise TemplateError("format_map takes one mapping")
                kwargs = dict(args[0])
            try:
                return str(_BoundedFormatter(self).vformat(text, () if is_map else args, kwargs))
            except IndexError:
                raise TemplateError("str.format has a field {N} with no positional argument N") from None
            except KeyError as missing:
                raise TemplateError(f"str.format has a field {{{missing.args[0]}}} with no argument of that name") \
                    from None

        return formatted

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        _refuse_loading(tree)
        _refuse_constant_powers(tree)
        guarded = _Guards().visit(tree)
        assert isinstance(guarded, nodes.Template)
        return guarded


class _Guards(NodeTransformer):
    """Loops iterate through the iteration budget; ``a ~ b`` goes through the size estimate."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 (Jinja's visitor names)
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name(_LOOP_GUARD, "load"), [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Call(nodes.Name(_CONCAT_GUARD, "load"), node.nodes, [], None, None, lineno=node.lineno)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        if not isinstance(node.arg, nodes.Slice):
            return node
        # Jinja compiles a slice to plain Python, which no sandbox hook sees: a slice is a copy
        # (``big[i:]`` in a loop), so it is counted like any other value built.
        parts = [part if part is not None else nodes.Const(None) for part in
                 (node.arg.start, node.arg.stop, node.arg.step)]
        return nodes.Call(nodes.Name(_SLICE_GUARD, "load"), [node.node, *parts], [], None, None,
                          lineno=node.lineno)


def _checked_str_method(owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a string method call that would build more than a value may hold."""
    if name in _REFUSED_METHODS:
        raise TemplateSecurityError(f"str.{name} is not available in templates: {_REFUSED_METHODS[name]}")
    if name in _WIDTH_METHODS:
        for argument in (*args, *kwargs.values()):
            check_width(argument)
        if name == "expandtabs":
            bounds.check_expandtabs(owner, args[0] if args else kwargs.get("tabsize", 8))
    elif name == "replace" and len(args) >= 2:
        bounds.check_replace(owner, str(args[0]), str(args[1]))
    elif name == "join" and args:
        items = list(_bounded_iter(args[0]))
        _check_join(items, owner)
        args = (items, *args[1:])
    return args


_UNKNOWN_NAME = re.compile(r"No (filter|test) named '([^']*)'")


def syntax_message(error: TemplateSyntaxError) -> str:
    """Jinja's message, with the closest known name when a filter or test is unknown."""
    message = error.message or "invalid syntax"
    unknown = _UNKNOWN_NAME.search(message)
    if unknown is None:
        return message
    kind, name = unknown.groups()
    known = _known_names()[kind]
    hint = did_you_mean(name, known)
    return f"no {kind} named {name!r}" + (f"; {hint}" if hint else "")


@functools.cache
def _known_names() -> dict[str, frozenset[str]]:
    """The sandbox's filter and test names: built when a message first needs them, not at import."""
    environment = SandboxEnvironment()
    return {"filter": frozenset(environment.filters), "test": frozenset(environment.tests)}


def _refuse_loading(tree: nodes.Template) -> None:
    for tag, word in _LOADING_TAGS.items():
        for node in tree.find_all(tag):
            raise TemplateSecurityError(
                f"{{% {word} %}} is not available (line {node.lineno}): templates cannot read other templates; "
                "put the text in a variable or an addon")


def _refuse_constant_powers(tree: nodes.Template) -> None:
    """``2**64**64**64`` written out is refused when the template is checked, not when it runs."""
    for power in tree.find_all(nodes.Pow):
        try:
            _constant_int(power)
        except TemplateLimitError as exc:
            raise TemplateLimitError(f"{exc} (line {power.lineno})") from None


def _constant_int(node: nodes.Node) -> int | None:
    """The value of an integer expression of literals, powers and products, with the bounds checked."""
    if isinstance(node, nodes.Const):
        return node.value if isinstance(node.value, int) and not isinstance(node.value, bool) else None
    if isinstance(node, nodes.Pow | nodes.Mul):
        left, right = _constant_int(node.left), _constant_int(node.right)
        if left is None or right is None:
            return None
        if isinstance(node, nodes.Pow):
            bounds.check_power(left, right)
            return int(left**right) if right >= 0 else None
        bounds.check_product(left, right)
        return left * right
    return None


class TemplateRenderer:
    """Compiles templates and expressions once, renders them within limits."""

    def __init__(self, limits: RenderLimits = DEFAULT_LIMITS, cache_size: int = 4096) -> None:
        self.limits = limits
        self.environment = SandboxEnvironment()
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = cache_size

    def render(self, source: str, variables: Mapping[str, Any]) -> str:
        """Render a template; raise TemplateError for any failure."""
        if "{" not in source:
            return source  # no Jinja at all
        pieces = self._plain_pieces(source)
        if pieces is not None:
            return self._substitute(pieces, variables)
        return self._render_jinja(source, variables)

    def render_native(self, source: str, variables: Mapping[str, Any]) -> Any:
        """Like ``render``, but a template that is one ``{{ expression }}`` gives its value, not its text.

        So ``with: {items: "{{ questions }}"}`` passes the list itself.
        """
        single = _SINGLE_EXPRESSION.fullmatch(source)
        if single is not None and "{{" not in single.group(1) and "}}" not in single.group(1):
            return self.evaluate(single.group(1), variables)
        return self.render(source, variables)

    def _plain_pieces(self, source: str) -> tuple[str | tuple[str], ...] | None:
        """``"a {{ x }} b"`` -> ``("a ", ("x",), " b")`` if plain names are its only Jinja, else None."""
        key = ("plain", source)
        if key in self._cache:
            cached: tuple[str | tuple[str], ...] | None = self._cache[key]
            return cached
        pieces: list[str | tuple[str]] = []
        cursor = 0
        for match in _PLAIN_NAME.finditer(source):
            pieces += [source[cursor:match.start()], (match.group(1),)]
            cursor = match.end()
        pieces.append(source[cursor:])
        literal = "".join(piece for piece in pieces if isinstance(piece, str))
        plain = "{" not in literal and "}" not in literal and not any(
            isinstance(piece, tuple) and piece[0] in _NOT_PLAIN for piece in pieces)
        result = tuple(piece for piece in pieces if piece != "") if plain else None
        self._remember(key, result)
        return result

    def _substitute(self, pieces: tuple[str | tuple[str], ...], variables: Mapping[str, Any]) -> str:
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif piece[0] in variables:
                value = variables[piece[0]]
                out.append(value if isinstance(value, str) else self._text(value))
            else:
                raise TemplateError(f"undefined name: {piece[0]!r} is undefined")
        text = "".join(out)
        if len(text) > self.limits.max_output_chars:
            raise TemplateLimitError(f"output is longer than {self.limits.max_output_chars} characters")
        return text

    def _text(self, value: Any) -> str:
        """``{{ name }}`` of a value that is not text, bounded as Jinja's output is."""
        token = current_budget.set(RenderBudget(self.limits))
        try:
            return _text_of(value)
        finally:
            current_budget.reset(token)

    def _render_jinja(self, source: str, variables: Mapping[str, Any]) -> str:
        template = self._compiled("template", source)
        token = current_budget.set(RenderBudget(self.limits))
        try:
            pieces: list[str] = []
            size = 0
            for piece in template.generate(variables):
                size += len(piece)
                if size > self.limits.max_output_chars:
                    raise TemplateLimitError(f"output is longer than {self.limits.max_output_chars} characters")
                pieces.append(piece)
            return "".join(pieces)
        except TemplateError:
            raise
        except Exception as exc:
            raise _template_error(exc) from None
        finally:
            current_budget.reset(token)

    def evaluate(self, expression: str, variables: Mapping[str, Any]) -> Any:
        """Evaluate a bare expression (``when``, ``until``, ``for_each``)."""
        compiled = self._compiled("expression", expression)
        token = current_budget.set(RenderBudget(self.limits))
        try:
            value = compiled(**variables)
            if isinstance(value, Iterator):  # items|select(...): the items, drawn within the budget
                value = check_size(list(_bounded_iter(value)))
            return _defined(value)
        except TemplateError:
            raise
        except Exception as exc:
            raise _template_error(exc) from None
        finally:
            current_budget.reset(token)

    def _compiled(self, kind: str, source: str) -> Any:
        key = (kind, source)
        compiled = self._cache.get(key)
        if compiled is not None:
            self._cache.move_to_end(key)
            return compiled
        try:
            if kind == "template":
                compiled = self.environment.from_string(source)
            else:
                compiled = self.environment.compile_expression(source, undefined_to_none=False)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"syntax error in {kind}: {syntax_message(exc)} (line {exc.lineno})") from None
        self._remember(key, compiled)
        return compiled

    def _remember(self, key: tuple[str, str], value: Any) -> None:
        self._cache[key] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _defined(value: Any) -> Any:
    """Raise, rather than return, an undefined value (a missing name, or one the sandbox refused)."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises the recorded error: UndefinedError or SecurityError
        raise UndefinedError("undefined value")
    if callable(value):
        _text_of(value)  # raises: a method or function is not a value
    if isinstance(value, list | tuple):
        for item in value:
            _defined(item)
    elif isinstance(value, dict):
        for item in value.values():
            _defined(item)
    return value


def _template_error(exc: Exception) -> TemplateError:
    if isinstance(exc, SecurityError):
        return TemplateSecurityError(f"refused by the sandbox: {exc}")
    if isinstance(exc, UndefinedError):
        return TemplateError(f"undefined name: {exc.message}")
    if isinstance(exc, RecursionError):
        return TemplateLimitError("template calls nested too deep (a macro that calls itself without end?)")
    if isinstance(exc, MemoryError | OverflowError):
        return TemplateLimitError(f"template exceeded a resource limit: {type(exc).__name__}")
    if isinstance(exc, ValueError) and "int_max_str_digits" in str(exc):
        return TemplateLimitError("an integer with more than 4300 digits cannot be turned into text")
    return TemplateError(f"{type(exc).__name__}: {exc}")
