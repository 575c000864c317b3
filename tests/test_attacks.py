"""Resource attacks on the template sandbox and the workflow loader, run where they cannot hurt.

Every case runs in a child process capped in memory and CPU (tests/support/attack_runner.py)
and must end in a result or a refusal of the engine's own: a TemplateError for templates, a
located WorkflowError for documents, within 2 s, without MemoryError, RecursionError in the
loader, a crash, a traceback or a memory address in what it says.

The generated properties collect their examples first (derandomised, no database, no
shrinking) and send them to one child, so a run costs a few seconds and names every failing
case, not one shrunk example; the regression table at the end is the attacks found so far.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from tests.support.attack_runner import CASE_SECONDS, MEMORY_ADDRESS, TRACEBACK, Case, Result, run_cases

# Backstop only: the runner kills a case that has given no answer after 3 s.
pytestmark = pytest.mark.timeout(300)

TEMPLATE_EXAMPLES = 400
EXPRESSION_EXAMPLES = 150
DOCUMENT_EXAMPLES = 40

MILLION_X = {"$text": ["x", 1_000_000]}
# What every generated template may use: short values, a 100,000-char text with tabs and newlines,
# a 1,000,000-char one, and a list of 1,000 references to it.
VARIABLES: dict[str, Any] = {
    "s": "ab\tc d\n", "n": 7, "items": [1, 2, 3], "mapping": {"a": "b"},
    "big": {"$text": ["xy\t z\n", 16_667]}, "huge": MILLION_X, "many": {"$list": [MILLION_X, 1_000]},
}


# --------------------------------------------------------------------------- the contract


def violations(result: Result) -> list[str]:
    """What is wrong with how a case ended; empty if it ended well."""
    document = result.case.kind == "workflow_text"
    wanted = "WorkflowError" if document else "TemplateError"
    found: list[str] = []
    if result.outcome == "killed":
        found.append(result.detail)
    elif result.outcome == "error" or (result.outcome == "refused" and wanted not in result.error_classes):
        found.append(f"raised {result.error_class}, not a {wanted}")
    if result.seconds > CASE_SECONDS and result.outcome != "killed":
        found.append(f"took {result.seconds:.2f} s (limit {CASE_SECONDS} s)")
    if "MemoryError" in (*result.via, result.error_class) or "MemoryError" in result.message:
        found.append("ran out of memory under the address-space limit")
    if document and "RecursionError" in (*result.via, result.error_class):
        found.append("hit Python's recursion limit")
    if result.outcome == "refused":
        if TRACEBACK.search(result.message):
            found.append("the refusal holds a traceback")
        if MEMORY_ADDRESS.search(result.message):
            found.append("the refusal shows a memory address")
        if document and not result.located:
            found.append("a problem without file:line")
    if result.address_in_output:
        found.append(f"the {'value' if result.case.kind == 'expression' else 'output'} shows a memory address")
    return found


def describe(result: Result, problems: Sequence[str]) -> str:
    """The case, what is wrong, what happened, and the traceback or stack if there is one."""
    text = f"- {result.case}\n    {'; '.join(problems)}\n    {result.summary()}"
    more = {"error": result.detail, "killed": result.stderr}.get(result.outcome, "").strip()
    return text + ("\n    " + more.replace("\n", "\n    ") if more else "")


def report(results: Sequence[Result]) -> str:
    failing = [(result, violations(result)) for result in results]
    failing = [(result, problems) for result, problems in failing if problems]
    return "\n".join([f"{len(failing)} of {len(results)} cases failed:"]
                     + [describe(result, problems) for result, problems in failing])


def assert_all_end_well(results: Sequence[Result]) -> None:
    assert not any(violations(result) for result in results), report(results)


def collect(strategy: st.SearchStrategy[Case], count: int) -> list[Case]:
    """``count`` examples of ``strategy``, the same on every run, without duplicates."""
    found: dict[tuple[str, str], Case] = {}

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(case: Case) -> None:
        found.setdefault((case.kind, case.source), case)

    draw()
    return list(found.values())


# --------------------------------------------------------------------------- a grammar of large templates

BIG_INTS = [64, 65, 100, 1000, 4300, 9999, 10_000, 10_001, 65_536, 100_000, 999_999, 10**6]
int_literals = st.one_of(st.integers(0, 10), st.integers(0, 10**6), st.sampled_from(BIG_INTS)).map(str)
power_towers = st.lists(st.sampled_from(["2", "9", "10", "64", "99", "(-2)", "1.5"]), min_size=2, max_size=7).map(
    "**".join)
str_literals = st.sampled_from([
    "'x'", "'ab\\t'", "'\\t'", "'\\n'", "'a b'", "''", "'{0:{1}}'", "'{}{}'", "'{0.__class__}'", "'{a}'",
    "'%s'", "'%s%s'", "'%(a)s'", "'%-10000s'", "'%.9999f'", "'http://a.b'",
])
str_names = st.sampled_from(["s", "s", "big", "huge", "mapping.a"])
PERCENT_WIDTHS = st.sampled_from(["%10000s", "%09999d", "%-9999s", "%99999s", "%.10000s", "%*s", "%10000.10000f"])

Expr = st.SearchStrategy[str]


def _op(template: str, *parts: Expr) -> Expr:
    return st.tuples(*parts).map(lambda values: template.format(*values))


@cache
def ints(depth: int) -> Expr:
    leaves = st.one_of(int_literals, int_literals, power_towers, st.sampled_from(["n", "items|length", "3*10**9"]))
    if depth == 0:
        return leaves
    i, s, lst = ints(depth - 1), strs(depth - 1), lists(depth - 1)
    return st.one_of(
        leaves,
        _op("({} ** {})", i, i), _op("({} * {})", i, i), _op("({} + {})", i, i),
        _op("({})|length", s), _op("({})|length", lst), _op("({})|sum", lst), _op("({})|int", s),
    )


@cache
def strs(depth: int) -> Expr:
    leaves = st.one_of(str_literals, str_names, _op("({})|string", ints(0)))
    if depth == 0:
        return leaves
    i, s, lst = ints(depth - 1), strs(depth - 1), lists(depth - 1)
    methods = st.sampled_from(["center", "ljust", "rjust", "zfill", "expandtabs"])
    filters = st.sampled_from(["center", "indent", "wordwrap", "truncate"])
    return st.one_of(
        leaves,
        _op("({} * {})", s, i), _op("({} ~ {})", s, s), _op("({} + {})", s, s),
        _op("({}).{}({})", s, methods, i), _op("({}).replace({}, {})", s, s, s), _op("({}).join({})", s, lst),
        _op("({}).translate({{{}: {}}})", s, st.sampled_from(["9", "120", "32"]), s), _op("({}).encode()", s),
        _op("({}).format_map({{'a': {}}})", s, s), _op("({}).format({}, {})", s, s, i),
        _op("'{{0:{{1}}}}'.format({}, {})", s, i), _op("'{{0:{{1}}.{{2}}}}'.format({}, {}, {})", s, i, i),
        _op("'{}' % {}", PERCENT_WIDTHS, s), _op("(('%s' * {}) % (({},) * {}))", i, s, i),
        _op("'{{0.__class__}}'.format({})", s), _op("(({}).upper ~ '')", s), _op("({}).upper", s),
        _op("({})|{}({})", s, filters, i), _op("({})|indent({})", s, s), _op("({})|replace({}, {})", s, s, s),
        _op("({})|join({})", lst, s), _op("({})|string", lst), _op("({})|tojson", lst), _op("({})|format({})", s, s),
        _op("({})|urlize", s), _op("({})|default({})", s, s), _op("({})|string", i),
        _op("({})|wordwrap(1, true, {})", s, s),
        _op("{{'a': {}, 'b': {}}}|tojson", s, lst),
    )


@cache
def lists(depth: int) -> Expr:
    leaves = st.sampled_from(["items", "[1, 2, 3]", "[]", "many", "mapping|list"])
    if depth == 0:
        return leaves
    i, s, lst = ints(depth - 1), strs(depth - 1), lists(depth - 1)
    return st.one_of(
        leaves,
        _op("[{}, {}]", s, s), _op("([{}] * {})", s, i), _op("({} * {})", lst, i), _op("({} + {})", lst, lst),
        _op("range({})|list", i), _op("({})|batch({})|list", lst, i), _op("({})|slice({})|list", lst, i),
        _op("({})|map('string')|list", lst), _op("({})|select|list", lst), _op("({})|list", s),
        _op("[{}]|sum(start=[])", lst), _op("({} * {})|sum(start=[])", st.just("[[1] * 1000]"), i),
        _op("{{'k': {}}}.items()|list", s), _op("({})|unique|list", lst), _op("({}).split()", s),
    )


def expressions(depth: int) -> Expr:
    return st.one_of(strs(depth), ints(depth), lists(depth))


@cache
def statements(depth: int) -> Expr:
    e, s, i = expressions(depth), strs(depth), ints(depth)
    leaves = st.one_of(
        _op("{{{{ {} }}}}", e), _op("{{{{ {} }}}}", e),
        st.tuples(s, st.sampled_from(["~", "+"]), st.integers(1, 40)).map(
            lambda p: f"{{% set v = {p[0]} %}}" + f"{{% set v = v {p[1]} v %}}" * p[2] + "{{ v|length }}"),
        _op("{{% set ns = namespace(s={}) %}}{{% for i in range({}) %}}{{% set ns.s = ns.s ~ {} %}}"
            "{{% endfor %}}{{{{ ns.s|length }}}}", s, i, s),
        _op("{{% macro m(k) %}}{{% if k > 0 %}}{{{{ m(k - 1) }}}}{{{{ m(k - 1) }}}}{{% endif %}}{}"
            "{{% endmacro %}}{{{{ m({}) }}}}", s, i),
        _op("{{% macro m(k) %}}{{{{ {} ~ m(k + 1) }}}}{{% endmacro %}}{{{{ m(0) }}}}", s),
        _op("{{{{ {{'a': {}, 'b': {}}} }}}}", s, i),
        _op("{{% with w = {} %}}{{{{ w ~ w }}}}{{% endwith %}}", s),
    )
    if depth == 0:
        return leaves
    body = statements(depth - 1)
    return st.one_of(
        leaves,
        _op("{{% for i in range({}) %}}{}{{% endfor %}}", i, body),
        _op("{{% for i in {} %}}{}{{% endfor %}}", lists(depth), body),
        _op("{{% if {} > 1 %}}{}{{% else %}}{}{{% endif %}}", i, body, body),
        _op("{{% filter center({}) %}}{}{{% endfilter %}}", i, body),
        _op("{{% set t %}}{}{{% endset %}}{{{{ t ~ t }}}}", body),
    )


# A template that reads another is refused as a whole: one such tag is a template of its own.
reading_tags = st.one_of(
    _op("{{% include {} %}}", strs(1)),
    st.sampled_from(["{% import 'x' as y %}", "{% extends 'x' %}", "{% from 'x' import y %}",
                     "{% include ['a', 'b'] ignore missing %}", "{% extends s %}{% block b %}x{% endblock %}"]),
)
statement_runs = st.lists(statements(2), min_size=1, max_size=2).map("".join)
templates = st.sampled_from([statement_runs] * 9 + [reading_tags]).flatmap(lambda chosen: chosen).map(
    lambda source: Case("template", source, VARIABLES))
template_expressions = expressions(3).map(lambda source: Case("expression", source, VARIABLES))


@pytest.mark.parametrize(("strategy", "count"), [
    pytest.param(templates, TEMPLATE_EXAMPLES, id="templates"),
    pytest.param(template_expressions, EXPRESSION_EXAMPLES, id="expressions"),
])
def test_generated_templates_end_in_a_result_or_a_template_error(
    strategy: st.SearchStrategy[Case], count: int,
) -> None:
    assert_all_end_well(run_cases(collect(strategy, count)))


# --------------------------------------------------------------------------- deeply nested documents

DEPTHS = st.one_of(st.sampled_from([1, 2, 32, 64, 65, 100, 255, 256, 1000, 1001, 5000, 100_000]),
                   st.integers(1, 100_000))
MAX_BLOCK_MAP_DEPTH = 3_000  # indented one space a level, the text grows as depth²/2: 4.5 MB at 3,000


def _flow(depth: int, shape: str, closed: bool, quote: str) -> str:
    key = f"{quote}k{quote}"
    opening = {"list": ["["], "map": [f"{{{key}: "], "mixed": ["[", f"{{{key}: "]}[shape]
    closing = {"[": "]"}
    opened = [opening[level % len(opening)] for level in range(depth)]
    inner = "".join(opened) + "1"
    if not closed:
        return inner
    return inner + "".join(closing.get(token, "}") for token in reversed(opened))


def _block(depth: int, shape: str) -> str:
    if shape == "list":
        return "\n  " + "- " * depth + "x"  # compact nested sequences, all on one line
    lines = [" " * level + f"k{level}:" for level in range(depth)]
    return "\n" + "\n".join(lines) + " x"


def _embed(value: str, slot: str, json_style: bool) -> str:
    """A nested value where a workflow has room for it: a call's arguments, an input's default, the stages."""
    if json_style:
        return {
            "with": '{"dsl": "orchestrion/v1", "name": "w", "stages": [{"type": "linear", "tasks": '
                    '[{"id": "a", "call": "f", "with": {"v": %s}}]}]}',
            "default": '{"dsl": "orchestrion/v1", "name": "w", "inputs": {"x": {"default": %s}}, "stages": []}',
            "stages": '{"dsl": "orchestrion/v1", "name": "w", "stages": %s}',
        }[slot] % value
    indented = value.replace("\n", "\n" + " " * {"with": 10, "default": 6, "stages": 2}[slot])
    return {
        "with": "dsl: orchestrion/v1\nname: w\nstages:\n  - type: linear\n    tasks:\n      - id: a\n"
                "        call: f\n        with:\n          v: %s\n",
        "default": "dsl: orchestrion/v1\nname: w\ninputs:\n  x:\n    default: %s\nstages: []\n",
        "stages": "dsl: orchestrion/v1\nname: w\nstages: %s\n",
    }[slot] % indented


@st.composite
def nested_documents(draw: st.DrawFn) -> Case:
    style = draw(st.sampled_from(["json", "yaml-flow", "yaml-block"]))
    depth, slot = draw(DEPTHS), draw(st.sampled_from(["with", "default", "stages"]))
    if style == "yaml-block":
        shape = draw(st.sampled_from(["list", "map"]))
        depth = depth if shape == "list" else min(depth, MAX_BLOCK_MAP_DEPTH)
        text = _embed(_block(depth, shape), slot, json_style=False)
    else:
        shape = draw(st.sampled_from(["list", "map", "mixed"]))
        closed = draw(st.sampled_from([True, True, True, False]))
        value = _flow(depth, shape, closed, '"' if style == "json" else draw(st.sampled_from(["", "'", '"'])))
        text = _embed(value, slot, json_style=style == "json")
    return Case("workflow_text", text, label=f"{style} {shape} depth {depth} in {slot}")


def test_nested_documents_end_in_a_workflow_or_a_located_error() -> None:
    assert_all_end_well(run_cases(collect(nested_documents(), DOCUMENT_EXAMPLES)))


# --------------------------------------------------------------------------- known attacks

LIMIT = r"limit|longer than|larger than|more than|above|exceed"
DOUBLINGS = "{% set s = 'x' * 1000 %}" + "{% set s = s ~ s %}" * 22 + "{{ s|length }}"  # 4.2 billion chars
NAMESPACE_LOOP = ("{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ big %}"
                  "{% endfor %}{{ ns.s|length }}")


def _known(name: str, source: str, names: str, kind: str = "template", **variables: Any) -> Any:
    """An attack that must be refused with a message matching ``names`` (what it did, or the limit it hit)."""
    case = Case(kind, source, variables, label=name)
    return pytest.param(case, names, id=name)


KNOWN = [
    _known("power-tower", "{{ (2**64**64**64**64**64**64) > 1 }}", rf"\*\*|power|exponent|{LIMIT}"),
    _known("power-tower-expression", "(2**64**64**64**64**64**64) > 1", rf"\*\*|power|exponent|{LIMIT}",
           kind="expression"),
    _known("set-doubling", DOUBLINGS, rf"~|concat|{LIMIT}"),
    _known("nested-width-format", "{{ '{0:{1}}'.format('x', 3*10**9) }}", rf"format|width|{LIMIT}"),
    _known("nested-width-format-expression", "'{0:{1}}'.format('x', 3*10**9)", rf"format|width|{LIMIT}",
           kind="expression"),
    _known("expandtabs-many", "{{ ('\t' * 10000).expandtabs(10000) }}", rf"expandtabs|tab|width|{LIMIT}"),
    _known("expandtabs-huge", "{{ '\t\t'.expandtabs(10**9) }}", rf"expandtabs|tab|width|{LIMIT}"),
    _known("include", "{% include 'x' %}", r"include"),
    _known("import", "{% import 'x' as y %}", r"import"),
    _known("from-import", "{% from 'x' import y %}", r"import"),
    _known("extends", "{% extends 'x' %}", r"extends"),
    _known("int-max-str-digits", "{{ 10**5000 }}", rf"digit|integer|\*\*|power|{LIMIT}"),
    _known("format-map-dunder", "{{ '{0.__class__}'.format_map({}) }}", r"format|__class__|attribute|unsafe"),
    _known("format-dunder", "{{ '{0.__class__}'.format(x) }}", r"__class__|attribute|unsafe", x="s"),
    _known("method-without-call", "{{ 'a'.upper }}", r"method|call|upper"),
    _known("method-without-call-expression", "'a'.upper", r"method|call|upper", kind="expression"),
    _known("join-filter-million", "{{ ([x] * 1000000)|join }}", rf"join|{LIMIT}", x=MILLION_X),
    _known("join-method-million", "{{ ''.join([x] * 1000000) }}", rf"join|{LIMIT}", x=MILLION_X),
    _known("million-refs-rendered", "{{ big_list }}", rf"output|{LIMIT}",
           big_list={"$list": [MILLION_X, 1_000_000]}),
    _known("million-refs-string-filter", "{{ big_list|string }}", rf"string|{LIMIT}",
           big_list={"$list": [MILLION_X, 1_000_000]}),
    _known("sum-of-lists", "{{ ([[1] * 1000] * 10001)|sum(start=[]) }}", rf"sum|{LIMIT}"),  # quadratic
    _known("percent-many-fields", "{{ ('%s' * 100000) % ((x,) * 100000) }}", rf"%|format|{LIMIT}", x=MILLION_X),
    _known("namespace-loop", NAMESPACE_LOOP, rf"~|concat|iteration|took longer|{LIMIT}", big=MILLION_X),
    _known("recursive-macro", "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
           r"macro|recurs|depth|nest"),
    _known("exponential-macro",
           "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(40) }}",
           rf"macro|recurs|call|took longer|time|{LIMIT}"),
    _known("json-100k-deep", _embed(_flow(100_000, "list", True, '"'), "stages", json_style=True),
           r"nest|deep|depth", kind="workflow_text"),
    _known("yaml-flow-100k-deep", _embed(_flow(100_000, "mixed", True, ""), "with", json_style=False),
           r"nest|deep|depth", kind="workflow_text"),
    _known("yaml-block-100k-deep", _embed(_block(100_000, "list"), "stages", json_style=False),
           r"nest|deep|depth", kind="workflow_text"),
    _known("yaml-block-map-3000-deep", _embed(_block(3_000, "map"), "default", json_style=False),
           r"nest|deep|depth", kind="workflow_text"),
]


@pytest.fixture(scope="module")
def known_results() -> dict[str, Result]:
    cases = [param.values[0] for param in KNOWN]
    results = {result.case.label: result for result in run_cases(cases)}
    assert len(results) == len(cases), "two known attacks share a name"
    return results


@pytest.mark.parametrize(("case", "names"), KNOWN)
def test_known_attack_is_refused(case: Case, names: str, known_results: dict[str, Result]) -> None:
    result = known_results[case.label]
    problems = violations(result)
    if result.outcome != "refused":
        problems.append("not refused")
    elif not re.search(names, result.message, re.IGNORECASE):
        problems.append(f"the refusal does not name the construct or the limit ({names})")
    assert not problems, describe(result, problems)

