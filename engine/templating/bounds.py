"""What one render may build, and the checks that refuse a value before it is allocated.

Every bound is checked on an estimate made from the operands, before the
operation runs, so that a refused template never holds the memory it asked
for: ``'x' * n`` by length times count, ``a ** b`` by the bits of the result,
``a ~ b`` and ``{{ value }}`` by the text the values would turn into, format
strings by their widths and fields. Sizes of values actually built are also
added up per render (``max_total_chars``), which bounds what a loop can
build piece by piece however each piece is made.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from engine.errors import TemplateLimitError, TemplateSecurityError


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Bounds on one render."""

    max_output_chars: int = 1_000_000
    max_value_chars: int = 1_000_000  # any one string or list built while rendering
    max_total_chars: int = 16_000_000  # all strings and lists built in one render: <= 128 MB of list slots
    max_iterations: int = 100_000  # loop iterations, all loops together
    max_seconds: float = 1.0
    max_width: int = 10_000  # numeric arguments of filters and methods (widths, counts)
    max_int_bits: int = 10_000  # about 3,000 digits, below Python's 4,300-digit limit for str(int)


DEFAULT_LIMITS = RenderLimits()


class RenderBudget:
    """The work and memory one render has used so far."""

    __slots__ = ("built", "deadline", "iterations", "limits")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.iterations = 0
        self.built = 0
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

    def add(self, size: int) -> None:
        self.built += size
        if self.built > self.limits.max_total_chars:
            raise TemplateLimitError(
                f"template built more than {self.limits.max_total_chars} characters in all while rendering")


current_budget: ContextVar[RenderBudget | None] = ContextVar("orchestrion_render_budget", default=None)


def limits() -> RenderLimits:
    budget = current_budget.get()
    return budget.limits if budget is not None else DEFAULT_LIMITS


def check_time() -> None:
    budget = current_budget.get()
    if budget is not None:
        budget.check_time()


def check_size(value: Any) -> Any:
    """A value just built: within the per-value cap, and counted against the render's total."""
    if isinstance(value, str | list | tuple):
        size = len(value)
        if size > limits().max_value_chars:
            raise TemplateLimitError(f"a value built while rendering is longer than {limits().max_value_chars}")
        budget = current_budget.get()
        if budget is not None:
            budget.add(size)
            budget.check_time()
    return value


def check_estimate(size: int, operation: str) -> None:
    if size > limits().max_value_chars:
        raise TemplateLimitError(f"{operation} would build a value above the limit of {limits().max_value_chars}")


def check_width(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limits().max_width:
        raise TemplateLimitError(f"numeric argument {value} is above the limit of {limits().max_width}")


def text_size(value: Any, ceiling: int) -> int:
    """About how many characters ``str(value)`` has, counted without building it.

    Stops counting once past ``ceiling``, so the cost is bounded by the ceiling,
    not by the value (a list of a million references to one long string).
    """
    total, pending = 0, [value]
    while pending and total <= ceiling:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item) + 2  # quotes when inside a container
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() * 30103 // 100000 + 2
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            if total <= ceiling:
                pending.extend(item)
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total <= ceiling:
                pending.extend(item.keys())
                pending.extend(item.values())
        else:
            total += 64  # numbers, and objects whose text is their short repr
    return total


def check_text(value: Any, operation: str) -> None:
    """Refuse to turn a value into text longer than a value may be."""
    ceiling = limits().max_value_chars
    if not isinstance(value, str) and text_size(value, ceiling) > ceiling:
        raise TemplateLimitError(f"{operation} would turn a value into text above the limit of {ceiling}")


def check_product(left: Any, right: Any) -> None:
    """``'x' * n``, ``[x] * n`` and ``a * b`` on integers, before they are computed."""
    for sequence, count in ((left, right), (right, left)):
        sized = isinstance(sequence, str | list | tuple) and isinstance(count, int)
        if sized and len(sequence) * max(count, 0) > limits().max_value_chars:
            raise TemplateLimitError(
                f"repeating a value {count} times exceeds the limit of {limits().max_value_chars}")
    if _is_int(left) and _is_int(right):
        _check_bits(left.bit_length() + right.bit_length(), "multiplying")


def check_sum(left: Any, right: Any) -> None:
    if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
        check_estimate(len(left) + len(right), "adding")


def check_power(base: Any, exponent: Any) -> None:
    """``a ** b`` on integers has about ``bits(a) * b`` bits: a tower of ``**64`` has billions."""
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        _check_bits(power_bits(base, exponent), "raising to a power")


def power_bits(base: int, exponent: int) -> int:
    return (abs(base).bit_length() - (1 if _is_power_of_two(base) else 0)) * exponent + 1


def _is_power_of_two(number: int) -> bool:
    number = abs(number)
    return number & (number - 1) == 0


def _check_bits(bits: int, operation: str) -> None:
    if bits > limits().max_int_bits:
        raise TemplateLimitError(
            f"{operation} would build an integer of about {bits} bits, above the limit of {limits().max_int_bits}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")


def check_percent_format(text: str, arguments: Any) -> None:
    """``text % arguments``: widths within the limit, and the whole result within a value's cap."""
    fields = 0
    width = 0
    for match in _PERCENT_SPEC.finditer(text):
        if match.group(0).endswith("%%"):
            continue
        fields += 1
        for number in match.groups():
            if number == "*":
                raise TemplateSecurityError("'*' widths in % formatting are not allowed")
            if number is not None:
                check_width(int(number))
                width = max(width, int(number))
    if fields:
        widest = _widest_argument(arguments, limits().max_value_chars)
        check_estimate(len(text) + fields * max(width, widest), "% formatting")


def _widest_argument(arguments: Any, ceiling: int) -> int:
    if isinstance(arguments, tuple):
        items: Any = arguments
    elif isinstance(arguments, Mapping):
        items = arguments.values()
    else:
        items = (arguments,)
    return max((text_size(item, ceiling) for item in items), default=0)


def check_format_spec(spec: str) -> None:
    """A ``str.format`` field's spec, with its nested fields already filled in."""
    for number in re.findall(r"\d+", spec):
        check_width(int(number))


def check_brace_format(text: str) -> None:
    """The literal widths of a ``str.format`` template, before its arguments are known."""
    for _, _, spec, _ in string.Formatter().parse(text):
        if spec and "{" not in spec:
            check_format_spec(spec)


def check_expandtabs(text: str, tabsize: Any) -> None:
    size = tabsize if _is_int(tabsize) else 8
    check_estimate(len(text) + text.count("\t") * max(size, 0), "expandtabs")


def check_replace(text: str, old: str, new: str) -> None:
    occurrences = text.count(old) if old else len(text) + 1
    check_estimate(len(text) + occurrences * max(len(new) - len(old), 0), "replace")
