"""Jinja in an immutable sandbox, with bounded output and work.

Templates come from workflow files and from an LLM (the planner), so they are
untrusted. The immutable sandbox blocks private attributes (``__class__``,
``__globals__``), ``|attr`` escapes and mutation; it does not bound
resources, so this module adds:

- a cap on every string or list an operator, filter or method builds
  (``'a' * 10**9``, ``'{:>999999999}'.format(1)``, ``x|center(10**9)``);
- a work budget: every ``for`` loop draws from an iteration budget and checks
  a deadline (the AST is rewritten so loops iterate through a counter);
- a cap on the rendered output, enforced while rendering.

Undefined names are errors (StrictUndefined); compiled templates are cached.
"""

from __future__ import annotations

import inspect
import re
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import TemplateError, TemplateLimitError, TemplateSecurityError


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Bounds on one render."""

    max_output_chars: int = 1_000_000
    max_value_chars: int = 1_000_000  # any one string or list built while rendering
    max_iterations: int = 100_000  # loop iterations, all loops together
    max_seconds: float = 1.0
    max_width: int = 10_000  # numeric arguments of filters (widths, counts)


class _Budget:
    __slots__ = ("deadline", "iterations", "limits")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.iterations = 0
        self.deadline = time.monotonic() + limits.max_seconds

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_iterations:
            raise TemplateLimitError(f"template loops ran more than {self.limits.max_iterations} iterations")
        if self.iterations % 256 == 0:
            self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"template took longer than {self.limits.max_seconds} s to render")


_budget: ContextVar[_Budget | None] = ContextVar("orchestrion_render_budget", default=None)
_DEFAULT_LIMITS = RenderLimits()
_LOOP_GUARD = "__orchestrion_bounded_iter"
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_PLAIN_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NOT_PLAIN = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if",
                        "else", "range", "dict", "cycler", "joiner", "namespace"})
_SINGLE_EXPRESSION = re.compile(r"\s*\{\{(.*)\}\}\s*", re.S)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _limits() -> RenderLimits:
    budget = _budget.get()
    return budget.limits if budget is not None else _DEFAULT_LIMITS


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple) and len(value) > _limits().max_value_chars:
        raise TemplateLimitError(f"a value built while rendering is longer than {_limits().max_value_chars}")
    return value


def _check_width(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _limits().max_width:
        raise TemplateLimitError(f"numeric argument {value} is above the limit of {_limits().max_width}")


def _check_percent_format(text: str) -> None:
    for match in _PERCENT_SPEC.finditer(text):
        for number in match.groups():
            if number == "*":
                raise TemplateSecurityError("'*' widths in % formatting are not allowed")
            if number is not None:
                _check_width(int(number))


def _check_brace_format(text: str) -> None:
    for _, _, spec, _ in string.Formatter().parse(text):
        for number in re.findall(r"\d+", spec or ""):
            _check_width(int(number))


def _estimate_product(left: Any, right: Any) -> None:
    for sequence, count in ((left, right), (right, left)):
        sized = isinstance(sequence, str | list | tuple) and isinstance(count, int)
        if sized and len(sequence) * max(count, 0) > _limits().max_value_chars:
            raise TemplateLimitError(
                f"repeating a value {count} times exceeds the limit of {_limits().max_value_chars}"
            )


def _bounded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _budget.get()
    for item in iterable:
        if budget is not None:
            budget.tick()
        yield item


def _check_format_filter(arguments: dict[str, Any]) -> None:
    _check_percent_format(str(arguments.get("value", "")))


def _check_replace_filter(arguments: dict[str, Any]) -> None:
    _estimate_replace(str(arguments.get("s", "")), str(arguments.get("old", "")), str(arguments.get("new", "")))


def _check_wordwrap_filter(arguments: dict[str, Any]) -> None:
    text, width = str(arguments.get("s", "")), arguments.get("width", 79)
    breaks = len(text) // max(width if isinstance(width, int) else 1, 1) + 1
    _check_estimate(len(text) + breaks * len(arguments.get("wrapstring") or "\n"), "wordwrap")


def _check_indent_filter(arguments: dict[str, Any]) -> None:
    text, width = str(arguments.get("s", "")), arguments.get("width", 4)
    if isinstance(width, str):
        _check_estimate(len(text) + (text.count("\n") + 1) * len(width), "indent")


def _check_join_filter(arguments: dict[str, Any]) -> None:
    value, separator = arguments.get("value"), str(arguments.get("d", ""))
    if isinstance(value, list | tuple):
        _check_estimate(len(value) * len(separator), "join")
    elif len(separator) > 1000:  # a lazy sequence: its length is unknown before joining
        raise TemplateSecurityError("join's separator is limited to 1000 characters for generated sequences")


def _check_urlize_filter(arguments: dict[str, Any]) -> None:
    for name in ("target", "rel"):
        if len(str(arguments.get(name) or "")) > 100:
            raise TemplateSecurityError(f"urlize's {name} is limited to 100 characters")


def _check_estimate(size: int, operation: str) -> None:
    if size > _limits().max_value_chars:
        raise TemplateLimitError(f"{operation} would build a value above the limit of {_limits().max_value_chars}")


# Filters whose output can be far larger than their input, checked before they run.
_FILTER_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "do_format": _check_format_filter,
    "do_replace": _check_replace_filter,
    "do_wordwrap": _check_wordwrap_filter,
    "do_indent": _check_indent_filter,
    "do_join": _check_join_filter,
    "do_urlize": _check_urlize_filter,
}


def _bounded_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(function.__name__)
    signature = inspect.signature(function) if check is not None else None

    def bounded(*args: Any, **kwargs: Any) -> Any:
        for argument in (*args[1:], *kwargs.values()):
            _check_width(argument)  # widths and counts: center(10**9), batch(10**8)
        if check is not None and signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check(bound.arguments)
        return _check_size(function(*args, **kwargs))

    if hasattr(function, "jinja_pass_arg"):  # keep the pass_context/pass_eval_context marker
        bounded.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    bounded.__name__ = function.__name__
    return bounded


def _estimate_replace(text: str, old: str, new: str) -> None:
    occurrences = text.count(old) if old else len(text) + 1
    _check_estimate(len(text) + occurrences * max(len(new) - len(old), 0), "replace")


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with resource bounds (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.globals.pop("lipsum", None)  # lipsum(n) generates n paragraphs
        self.globals[_LOOP_GUARD] = _bounded_iter
        self.filters = {name: _bounded_filter(f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _estimate_product(left, right)
        elif operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise TemplateLimitError("exponents above 64 are not allowed in templates")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _WIDTH_METHODS:
                for argument in (*args, *kwargs.values()):
                    _check_width(argument)
            elif name == "replace" and len(args) >= 2:
                _estimate_replace(owner, str(args[0]), str(args[1]))
            elif name == "join" and args:
                items = list(args[0])
                _check_size(owner * max(len(items) - 1, 0))
                args = (items, *args[1:])
        budget = _budget.get()
        if budget is not None:
            budget.check_time()
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # str.format is wrapped at attribute access, not in call(): check its widths here.
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_brace_format(value.__self__)
        return wrapped

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name(_LOOP_GUARD, "load"), [loop.iter], [], None, None)
        return tree


class TemplateRenderer:
    """Compiles templates and expressions once, renders them within limits."""

    def __init__(self, limits: RenderLimits = _DEFAULT_LIMITS, cache_size: int = 4096) -> None:
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
                out.append(value if isinstance(value, str) else str(value))
            else:
                raise TemplateError(f"undefined name: {piece[0]!r} is undefined")
        text = "".join(out)
        if len(text) > self.limits.max_output_chars:
            raise TemplateLimitError(f"output is longer than {self.limits.max_output_chars} characters")
        return text

    def _render_jinja(self, source: str, variables: Mapping[str, Any]) -> str:
        template = self._compiled("template", source)
        token = _budget.set(_Budget(self.limits))
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
            _budget.reset(token)

    def evaluate(self, expression: str, variables: Mapping[str, Any]) -> Any:
        """Evaluate a bare expression (``when``, ``until``, ``for_each``)."""
        compiled = self._compiled("expression", expression)
        token = _budget.set(_Budget(self.limits))
        try:
            return _defined(compiled(**variables))
        except TemplateError:
            raise
        except Exception as exc:
            raise _template_error(exc) from None
        finally:
            _budget.reset(token)

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
            raise TemplateError(f"syntax error in {kind}: {exc.message} (line {exc.lineno})") from None
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
    if isinstance(exc, RecursionError | MemoryError | OverflowError):
        return TemplateLimitError(f"template exceeded a resource limit: {type(exc).__name__}")
    return TemplateError(f"{type(exc).__name__}: {exc}")
