"""The template sandbox: known escapes and resource attacks fail; ordinary templates render exactly."""

from __future__ import annotations

import re

import pytest

import engine
from engine import Reference, RenderLimits, TemplateError, TemplateLimitError, TemplateRenderer, TemplateSecurityError

SECRET = "s3cr3t-token-0451"


def _function_with_secret_globals() -> str:
    return SECRET


@pytest.fixture
def renderer() -> TemplateRenderer:
    return TemplateRenderer()


def _variables() -> dict[str, object]:
    return {"x": "hello", "f": _function_with_secret_globals, "items": [1, 2], "secret_holder": {"k": SECRET}}


ESCAPES = [
    pytest.param("{{ x.__class__ }}", TemplateSecurityError, id="dunder-class"),
    pytest.param("{{ x.__class__.__mro__[1].__subclasses__() }}", TemplateSecurityError, id="subclasses"),
    pytest.param("{{ f.__globals__ }}", TemplateSecurityError, id="function-globals"),
    pytest.param("{{ f.__globals__['SECRET'] }}", TemplateSecurityError, id="function-globals-item"),
    pytest.param("{{ x|attr('__class__') }}", TemplateSecurityError, id="attr-filter"),
    pytest.param("{{ ''.__class__ }}", TemplateSecurityError, id="literal-class"),
    pytest.param("{{ cycler.__init__.__globals__ }}", TemplateSecurityError, id="cycler-globals"),
    pytest.param("{{ items.append(3) }}", TemplateSecurityError, id="mutation"),
    pytest.param("{{ 'a' * 10**9 }}", TemplateLimitError, id="string-repeat"),
    pytest.param("{{ [1] * 10**9 }}", TemplateLimitError, id="list-repeat"),
    pytest.param("{{ '{:>99999999}'.format(1) }}", TemplateLimitError, id="brace-format-width"),
    pytest.param("{{ '%099999999d' % 1 }}", TemplateLimitError, id="percent-format-width"),
    pytest.param("{{ x|center(10**9) }}", TemplateLimitError, id="center-filter"),
    pytest.param("{{ [1]|batch(10**8, 'x')|list }}", TemplateLimitError, id="batch-filter"),
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        TemplateLimitError, id="nested-loops",
    ),
    pytest.param("{{ 2 ** 10000000 }}", TemplateLimitError, id="huge-power"),
    pytest.param("{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}", TemplateLimitError, id="recursive-macro"),
]

BIG = "y" * 1_000_000
_DOUBLINGS = "".join(f"{{% set s{n + 1} = s{n} ~ s{n} ~ s{n} ~ s{n} %}}" for n in range(16))

# Each is refused before it allocates what it asks for: (template, error, what the message names).
RESOURCE_ATTACKS = [
    pytest.param("{{ (2**64**64**64**64**64**64) > 1 }}", TemplateLimitError, "integer of about", id="power-tower"),
    pytest.param("{% set n = namespace(x=2) %}{% for i in range(6) %}{% set n.x = n.x ** 64 %}{% endfor %}{{ n.x }}",
                 TemplateLimitError, "integer of about", id="power-in-a-loop"),
    pytest.param("{% set n = namespace(x=3) %}{% for i in range(40) %}{% set n.x = n.x * n.x %}{% endfor %}",
                 TemplateLimitError, "integer of about", id="squaring-in-a-loop"),
    pytest.param("{% set s0 = 'xxxxxxxx' %}" + _DOUBLINGS + "{{ s16|length }}", TemplateLimitError, "joining with ~",
                 id="tilde-growth"),
    pytest.param("{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ big %}{% endfor %}",
                 TemplateLimitError, "joining with ~", id="tilde-in-a-loop"),
    pytest.param("{% set ns = namespace(s=[]) %}{% for i in range(100) %}{% set ns.s = ns.s + [big[i:]] %}"
                 "{% endfor %}", TemplateLimitError, "in all", id="many-distinct-big-values"),
    pytest.param("{{ '{0:{1}}'.format('x', 3*10**9) }}", TemplateLimitError, "3000000000", id="nested-format-width"),
    pytest.param("{{ ('{0}' * 100000).format(big) }}", TemplateLimitError, "str.format", id="format-fields"),
    pytest.param("{{ ('%s' * 100000) % ((big,) * 100000) }}", TemplateLimitError, "% formatting",
                 id="percent-fields"),
    pytest.param("{{ ('\t' * 10000).expandtabs(10000) }}", TemplateLimitError, "expandtabs", id="expandtabs"),
    pytest.param("{{ ([big] * 1000000)|join }}", TemplateLimitError, "join", id="join-references"),
    pytest.param("{{ ([big] * 100)|select|join }}", TemplateLimitError, "join", id="join-generator"),
    pytest.param("{{ '-'.join([big] * 100) }}", TemplateLimitError, "join", id="join-method"),
    pytest.param("{{ [big] * 1000000 }}", TemplateLimitError, "rendering", id="render-references"),
    pytest.param("{{ ([big] * 1000000)|tojson }}", TemplateLimitError, "tojson", id="tojson-references"),
    pytest.param("{{ ([big] * 1000000)|upper }}", TemplateLimitError, "upper", id="text-filter-on-a-list"),
    pytest.param("{{ ([big] * 1000000)|map('upper')|join }}", TemplateLimitError, "in all", id="map-churn"),
    pytest.param("{{ 'abc'.translate({97: big}) }}", TemplateSecurityError, "translate", id="translate"),
    pytest.param("{{ 10**5000 }}", TemplateLimitError, "integer of about", id="huge-int"),
]


@pytest.mark.parametrize(("source", "expected", "named"), RESOURCE_ATTACKS)
def test_resource_attacks_are_refused_with_the_construct_named(
        renderer: TemplateRenderer, source: str, expected: type[TemplateError], named: str) -> None:
    with pytest.raises(expected, match=re.escape(named)):
        renderer.render(source, {"big": BIG})


@pytest.mark.parametrize(("source", "named"), [
    ("{% include 'x' %}", "{% include %} is not available"),
    ("{% import 'x' as y %}", "{% import %} is not available"),
    ("{% from 'x' import y %}", "{% from ... import %} is not available"),
    ("{% extends 'x' %}", "{% extends %} is not available"),
    ("{{ 2**64**64**64 }}", "integer of about 262145 bits"),
    ("{{ x|uper }}", "no filter named 'uper'; did you mean 'upper'?"),
    ("{{ x is odd_number }}", "no test named 'odd_number'"),
])
def test_what_cannot_run_is_refused_statically_as_well(renderer: TemplateRenderer, source: str, named: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(named)):
        engine.template_references(source)  # what `validate` reads
    with pytest.raises(TemplateError, match=re.escape(named)):
        renderer.render(source, {"x": 1})


@pytest.mark.parametrize(("source", "named"), [
    ("{{ 'a'.upper }}", "without calling it"),
    ("{{ ['a'.upper] }}", "memory address"),
    ("{{ [1, 2]|map('string') }}", "add |list or |join"),
    ("{{ '{0.real}'.format_map({}) }}", "no positional argument"),
    ("{{ '{name}'.format() }}", "field {name} with no argument"),
])
def test_confusing_outputs_are_refused_with_a_reason(renderer: TemplateRenderer, source: str, named: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(named)) as caught:
        renderer.render(source, {})
    assert not re.search(r"0x[0-9a-f]{6,}", str(caught.value))


@pytest.mark.parametrize(("source", "expected"), ESCAPES)
def test_render_refuses_escapes(renderer: TemplateRenderer, source: str, expected: type[TemplateError]) -> None:
    with pytest.raises(expected) as caught:
        renderer.render(source, _variables())
    assert SECRET not in str(caught.value)


EXPRESSION_ESCAPES = [
    pytest.param("x.__class__", TemplateSecurityError, id="dunder-class"),
    pytest.param("f.__globals__", TemplateSecurityError, id="function-globals"),
    pytest.param("x|attr('__class__')", TemplateSecurityError, id="attr-filter"),
    pytest.param("cycler.__init__.__globals__", TemplateSecurityError, id="cycler-globals"),
    pytest.param("items.append(3)", TemplateSecurityError, id="mutation"),
    pytest.param("'a' * 10**9", TemplateLimitError, id="string-repeat"),
    pytest.param("[1] * 10**9", TemplateLimitError, id="list-repeat"),
    pytest.param("'{:>99999999}'.format(1)", TemplateLimitError, id="brace-format-width"),
    pytest.param("'%099999999d' % 1", TemplateLimitError, id="percent-format-width"),
    pytest.param("x|center(10**9)", TemplateLimitError, id="center-filter"),
    pytest.param("2 ** 10000000", TemplateLimitError, id="huge-power"),
]


@pytest.mark.parametrize(("source", "expected"), EXPRESSION_ESCAPES)
def test_evaluate_refuses_escapes(renderer: TemplateRenderer, source: str, expected: type[TemplateError]) -> None:
    with pytest.raises(expected) as caught:
        renderer.evaluate(source, _variables())
    assert SECRET not in str(caught.value)


def test_escape_returns_nothing_even_as_undefined(renderer: TemplateRenderer) -> None:
    # An unsafe attribute must not quietly render as empty either.
    with pytest.raises(TemplateSecurityError):
        renderer.render("{{ x.__class__ ~ '' }}", _variables())


def test_errors_are_template_errors() -> None:
    assert issubclass(TemplateSecurityError, TemplateError)
    assert issubclass(TemplateLimitError, TemplateError)
    assert issubclass(TemplateError, engine.OrchestrionError)


def test_lipsum_is_removed(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateError) as caught:
        renderer.render("{{ lipsum(10**6) }}", {})
    assert "lipsum" in str(caught.value)


def test_output_cap() -> None:
    small = TemplateRenderer(RenderLimits(max_output_chars=100))
    with pytest.raises(TemplateLimitError):
        small.render("{% for i in range(1000) %}x{% endfor %}", {})
    with pytest.raises(TemplateLimitError):
        small.render("{{ x }}", {"x": "y" * 1000})
    assert small.render("{% for i in range(100) %}x{% endfor %}", {}) == "x" * 100


def test_undefined_names_are_errors_that_name_them(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateError) as caught:
        renderer.render("Hello {{ missing_name }}", {})
    assert "missing_name" in str(caught.value)
    with pytest.raises(TemplateError) as caught:
        renderer.evaluate("other_missing > 1", {})
    assert "other_missing" in str(caught.value)


def test_evaluate_bare_undefined_name_raises(renderer: TemplateRenderer) -> None:
    # A bare name must raise, not hand back a StrictUndefined that explodes later outside the error tree.
    with pytest.raises(TemplateError) as caught:
        renderer.evaluate("missing_name", {})
    assert "missing_name" in str(caught.value)


def test_syntax_errors_are_template_errors(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateError, match="syntax"):
        renderer.render("{{ a + }}", {"a": 1})
    with pytest.raises(TemplateError, match="syntax"):
        renderer.evaluate("a b", {"a": 1})


# --------------------------------------------------------------------------- ordinary templates


@pytest.mark.parametrize(("source", "variables", "expected"), [
    ("Hello {{ name }}!", {"name": "Ada"}, "Hello Ada!"),
    ("{% for i in items %}[{{ i }}]{% endfor %}", {"items": [1, 2, 3]}, "[1][2][3]"),
    ("{{ items|join(', ') }}", {"items": ["a", "b"]}, "a, b"),
    ("{{ name|upper }}", {"name": "ada"}, "ADA"),
    ("{{ data|tojson }}", {"data": {"a": [1, "b"]}}, '{"a": [1, "b"]}'),
    ("{% set n = items|length %}{{ n * 2 }}", {"items": [1, 2, 3]}, "6"),
    ("{{ summary.text }} / {{ a['b'][0] }}", {"summary": {"text": "S"}, "a": {"b": [7]}}, "S / 7"),
    ("{{ '%05d'|format(42) }} {{ '{:>4}'.format(7) }}", {}, "00042    7"),
    ("{{ 'ab' * 3 }} {{ 2 ** 10 }}", {}, "ababab 1024"),
    ("{{ 2 ** 64 }} {{ 3 * 10 ** 9 }} {{ x ~ 1 ~ none }}", {"x": "a"}, "18446744073709551616 3000000000 a1None"),
    ("{{ '{0:>{1}}|{k}'.format('x', 3, k=2) }} {{ '{a}'.format_map({'a': 1}) }}", {}, "  x|2 1"),
    ("{{ 'a\tb'.expandtabs(4) }} {{ ['x', 'y']|join('-') }} {{ '-'.join(['p', 'q']) }}", {}, "a   b x-y p-q"),
    ("{{ items|select('odd')|join(',') }} {{ items|map('string')|list }}", {"items": [1, 2, 3]},
     "1,3 ['1', '2', '3']"),
    ("line\n", {}, "line\n"),
])
def test_render_exact(renderer: TemplateRenderer, source: str, variables: dict[str, object], expected: str) -> None:
    assert renderer.render(source, variables) == expected


def test_evaluate_draws_a_generator_into_a_list(renderer: TemplateRenderer) -> None:
    assert renderer.evaluate("items|select('odd')", {"items": [1, 2, 3]}) == [1, 3]  # for_each over a filter


def test_evaluate(renderer: TemplateRenderer) -> None:
    assert renderer.evaluate("a.b > 1 and c", {"a": {"b": 2}, "c": True}) is True
    assert renderer.evaluate("a.b > 1 and c", {"a": {"b": 1}, "c": True}) is False
    assert renderer.evaluate("items|length", {"items": [1, 2, 3]}) == 3
    assert renderer.evaluate("loop.round >= 2", {"loop": {"round": 2}}) is True


def test_variables_are_not_mutated(renderer: TemplateRenderer) -> None:
    items = [1, 2]
    with pytest.raises(TemplateSecurityError):
        renderer.render("{{ items.append(3) }}", {"items": items})
    assert items == [1, 2]


def test_compiled_templates_are_cached(renderer: TemplateRenderer) -> None:
    source = "{{ a }}-{{ b }}"
    first = renderer._compiled("template", source)
    assert renderer._compiled("template", source) is first
    assert renderer._compiled("template", source + " ") is not first
    assert renderer._compiled("expression", "a > 1") is renderer._compiled("expression", "a > 1")
    assert renderer.render(source, {"a": 1, "b": 2}) == "1-2"
    assert renderer._compiled("template", source) is first


def test_cache_is_bounded() -> None:
    small = TemplateRenderer(cache_size=2)
    for index in range(5):
        assert small.render(f"{{{{ a }}}}{index}", {"a": "x"}) == f"x{index}"
    assert len(small._cache) == 2


def test_limits_reset_between_renders() -> None:
    # The iteration budget is per render, not cumulative across renders.
    limited = TemplateRenderer(RenderLimits(max_iterations=100))
    for _ in range(5):
        assert limited.render("{% for i in range(80) %}.{% endfor %}", {}) == "." * 80
    with pytest.raises(TemplateLimitError):
        limited.render("{% for i in range(101) %}.{% endfor %}", {})


# --------------------------------------------------------------------------- static references


def test_template_references_paths() -> None:
    assert engine.template_references("{{ summary.text }}") == {Reference("summary", ("text",))}
    assert engine.template_references("{{ a['b'][0] }}") == {Reference("a", ("b", 0))}
    assert engine.template_references("{{ topic }} and {{ research|upper }}") == {
        Reference("topic"), Reference("research"),
    }
    assert engine.template_references("{{ a[key].c }}") == {Reference("a"), Reference("key")}


def test_expression_references_paths() -> None:
    assert engine.expression_references("score.value >= 8 and done") == {
        Reference("score", ("value",)), Reference("done"),
    }
    assert engine.expression_references("a['b'][0] > 1") == {Reference("a", ("b", 0))}


def test_bound_names_are_not_references() -> None:
    source = "{% set total = items|length %}{% for item in items %}{{ item.name }}{{ total }}{% endfor %}"
    assert engine.template_references(source) == {Reference("items")}
    assert engine.template_references("{% macro m(p) %}{{ p }}{% endmacro %}{{ m(x) }}") == {Reference("x")}
    assert engine.template_references("{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}") == {
        Reference("d", ("items",)),
    }


@pytest.mark.parametrize("source", ["{{ a + }}", "{% for x in %}", "{{ a", "{% endfor %}"])
def test_template_reference_syntax_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        engine.template_references(source)


@pytest.mark.parametrize("source", ["a b", "a +", "(a", "{{ a }}"])
def test_expression_reference_syntax_errors(source: str) -> None:
    with pytest.raises(TemplateError):
        engine.expression_references(source)


@pytest.mark.parametrize("source", [
    "{{ ('a ' * 100000)|wordwrap(3, True, 'y' * 1000) }}",  # wrapstring given by position
    "{{ ('a\n' * 10000)|indent('y' * 1000) }}",  # indent by a string
    "{{ (['a'] * 1000)|join('x' * 10000) }}",
    "{{ range(10000)|map('string')|join('x' * 100000) }}",
    "{{ 'see http://x.org'|urlize(target='t' * 1000) }}",
])
def test_amplifying_filters_are_refused_before_they_run(source: str) -> None:
    with pytest.raises((engine.TemplateLimitError, engine.TemplateSecurityError)):
        engine.TemplateRenderer().render(source, {})


def test_amplifying_filters_still_work_within_limits() -> None:
    renderer = engine.TemplateRenderer()
    assert renderer.render("{{ 'hello world foo'|wordwrap(5) }}", {}) == "hello\nworld\nfoo"
    assert renderer.render("{{ 'a\nb'|indent(2, true) }}", {}) == "  a\n  b"
    assert renderer.render("{{ [1, 2]|join(', ') }}|{{ 'abc'|replace('b', 'X') }}", {}) == "1, 2|aXc"
    assert renderer.render("{{ '%s-%d'|format('a', 3) }}", {}) == "a-3"
