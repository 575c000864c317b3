"""The compiler passes, each on its own, and compile_workflow end to end."""

from __future__ import annotations

from typing import Any

import pytest

from engine import Addon, Catalog, WorkflowError, compile_workflow, load_workflow
from engine.compiler.order import critical_path, topological_order
from engine.compiler.plan import Node, NodeId
from engine.compiler.policies import ENGINE_RETRY, ENGINE_TIMEOUT, resolve_policies
from engine.compiler.scope import resolve_scopes
from engine.compiler.sites import collect_sites
from tests.conftest import ROOT

CATALOG = Catalog(addons={"research": Addon(name="research", description="d", category="c", prompt="p")},
                  templates={"research_report": ROOT / "templates" / "research_report.yaml"},
                  functions=frozenset({"tools.fetch"}))


def task(id: str, prompt: str = "x", **fields: Any) -> dict[str, Any]:
    return {"id": id, "prompt": prompt, **fields}


def workflow(*stages: dict[str, Any], **top: Any) -> Any:
    return load_workflow({"dsl": "orchestrion/v1", "name": "t", "inputs": {"topic": {"type": "string"}},
                          "defaults": {"model": "fast_ai"}, "stages": list(stages), **top})


def linear(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "linear", "tasks": list(items), **fields}


def inline(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "inline", "tasks": list(items), **fields}


def codes(wf: Any) -> list[tuple[str, str]]:
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(wf, CATALOG)
    return [(p.code, ".".join(map(str, p.path))) for p in caught.value.problems]


def deps(plan: Any, node: str) -> list[str]:
    return sorted(plan.nodes[node].depends_on)


# -- pass: sites -------------------------------------------------------------------------------

def test_sites_visibility_follows_structure() -> None:
    wf = workflow(linear(task("a"), inline(task("b"), linear(task("c"), task("d")), task("e"))), inline(task("f")))
    sites, problems = collect_sites(wf)
    assert problems == []
    visible = {site.task.id: sorted(name for name in "abcdef" if sites.sees(site, name)) for site in sites.sites}
    assert visible == {"a": [], "b": [], "c": ["b"], "d": ["b"], "e": ["b", "c", "d"], "f": list("abcde")}
    predecessors = {site.task.id: sorted(site.predecessors) for site in sites.sites}
    assert predecessors == {"a": [], "b": [], "c": ["b"], "d": ["b"], "e": ["c", "d"], "f": []}


def test_sites_report_duplicates_reserved_and_input_clashes() -> None:
    wf = workflow(linear(task("a"), task("a"), task("loop"), task("topic")))
    _, problems = collect_sites(wf)
    assert [(p.code, p.path[-2]) for p in problems] == [("duplicate-id", 1), ("reserved-id", 2), ("duplicate-id", 3)]


def test_nested_repeat_is_reported() -> None:
    inner = inline(task("b"), repeat={"max_rounds": 2})
    _, problems = collect_sites(workflow(inline(task("a"), inner, repeat={"max_rounds": 2})))
    assert [p.code for p in problems] == ["nested-repeat"]


# -- pass: scope -------------------------------------------------------------------------------

def test_scope_distinguishes_the_kinds_of_bad_reference() -> None:
    wf = workflow(linear(task("a", "{{ b }}"), task("b", "{{ c }} {{ topc }}")), inline(task("c", "{{ c }}")))
    sites, _ = collect_sites(wf)
    _, problems = resolve_scopes(wf, sites)
    assert [(p.code, p.path[1], p.path[3]) for p in problems] == [
        ("parallel-reference", 0, 0), ("not-yet-produced", 0, 1), ("unknown-name", 0, 1), ("self-reference", 1, 0)]
    assert problems[2].hint == "did you mean 'topic'?"


def test_scope_binds_items_loop_and_previous_rounds() -> None:
    wf = workflow(inline(task("q", output={"schema": {"type": "array"}}),
                         task("each", "{{ it }}", for_each="q", **{"as": "it"})),
                  inline(task("draft", "{{ review }} {{ loop.round }}"), task("review", "{{ draft }}"),
                         repeat={"max_rounds": 2}))
    sites, _ = collect_sites(wf)
    scopes, problems = resolve_scopes(wf, sites)
    assert problems == []
    assert {k: v.kind for k, v in scopes.tasks[1].items()} == {"it": "item", "q": "task"}
    assert {k: v.kind for k, v in scopes.tasks[2].items()} == {"review": "previous", "loop": "loop"}


def test_outputs_must_reference_something_known() -> None:
    wf = workflow(linear(task("a")), outputs={"fixed": "text", "bad": "{{ nope }}", "ok": "{{ a }}"})
    assert codes(wf) == [("constant-output", "outputs.fixed"), ("unknown-name", "outputs.bad")]


def test_expressions_that_do_not_parse_are_reported() -> None:
    wf = workflow(linear(task("a", when="a >"), task("b", "{{ oops ")))
    assert codes(wf) == [("template-syntax", "stages.0.tasks.0.when"), ("template-syntax", "stages.0.tasks.1.prompt")]


def test_loop_outside_repeat_is_unknown() -> None:
    problems = codes(workflow(linear(task("a", "{{ loop.round }}"))))
    assert problems == [("unknown-name", "stages.0.tasks.0.prompt")]


# -- pass: policies ----------------------------------------------------------------------------

def test_policies_inherit_override_and_switch_off() -> None:
    wf = workflow(linear(task("a"), task("b", retry=None, timeout=None, model=["fast_ai", "medium_ai"]),
                         task("c", retry={"max_attempts": 2}, critical=False)),
                  defaults={"model": "thinking_ai", "retry": {"initial_delay": 0.5}, "temperature": 0.3})
    a, b, c = (resolve_policies(site.task, wf.defaults) for site in collect_sites(wf)[0].sites)
    assert (a.models, a.timeout, a.temperature, a.critical) == (("thinking_ai",), ENGINE_TIMEOUT, 0.3, True)
    assert a.retry is not None and a.retry.initial_delay == 0.5 and a.retry.max_attempts == ENGINE_RETRY.max_attempts
    assert (b.models, b.retry, b.timeout) == (("fast_ai", "medium_ai"), None, None)
    assert c.retry is not None and (c.retry.max_attempts, c.retry.initial_delay) == (2, 0.5)
    assert c.critical is False


def test_defaults_can_switch_retry_off_and_a_task_back_on() -> None:
    wf = workflow(linear(task("a"), task("b", retry={"max_attempts": 3})), defaults={"model": "fast_ai", "retry": None})
    a, b = (resolve_policies(site.task, wf.defaults) for site in collect_sites(wf)[0].sites)
    assert a.retry is None
    assert b.retry is not None and b.retry.max_attempts == 3 and b.retry.backoff == ENGINE_RETRY.backoff


# -- pass: unroll and edges --------------------------------------------------------------------

def test_dataflow_edges_only_where_data_or_order_requires() -> None:
    plan = compile_workflow(workflow(linear(task("a"), task("b")), linear(task("c", "{{ a }}")),
                                     inline(task("d"), task("e"))), CATALOG)
    assert deps(plan, "c") == ["a"]  # not b: dataflow, no stage barrier
    assert deps(plan, "d") == []
    assert deps(plan, "e") == ["d"]


def test_staged_schedule_adds_barriers_between_stages() -> None:
    plan = compile_workflow(workflow(linear(task("a"), task("b")), linear(task("c")), schedule="staged"), CATALOG)
    assert deps(plan, "c") == ["a", "b"]


def test_after_adds_ordering_without_data() -> None:
    plan = compile_workflow(workflow(linear(task("a"), task("b", after=["a"]))), CATALOG)
    assert deps(plan, "b") == ["a"]
    assert "a" not in plan.nodes["b"].bindings


def test_after_errors() -> None:
    wf = workflow(linear(task("a", after=["zz", "a"])))
    assert codes(wf) == [("unknown-after", "stages.0.tasks.0.after.0"), ("self-after", "stages.0.tasks.0.after.1")]


def test_cycles_through_after_are_reported_with_the_cycle() -> None:
    wf = workflow(linear(task("a", after=["b"]), task("b", after=["a"])))
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(wf, CATALOG)
    (problem,) = caught.value.problems
    assert problem.code == "cycle"
    assert problem.message.endswith("a -> b -> a") or problem.message.endswith("b -> a -> b")


def test_repeat_unrolls_rounds_with_until_checks() -> None:
    wf = workflow(linear(task("seed")),
                  inline(task("draft", "{{ seed }} {{ review }}"), task("review", "{{ draft }}"),
                         repeat={"max_rounds": 3, "until": "review == 'ok'"}, name="polish"),
                  inline(task("final", "{{ draft }}")))
    plan = compile_workflow(wf, CATALOG)
    assert [n for n in plan.nodes if n.startswith(("draft", "review", "until"))] == [
        "draft@1", "review@1", "until:polish@1", "draft@2", "review@2", "until:polish@2", "draft@3", "review@3"]
    assert deps(plan, "draft@1") == ["seed"]
    assert plan.nodes["draft@1"].bindings["review"].kind == "none"
    assert deps(plan, "draft@2") == ["review@1", "seed", "until:polish@1"]
    assert deps(plan, "until:polish@1") == ["draft@1", "review@1"]
    assert plan.nodes["final"].bindings["draft"].nodes == ("draft@1", "draft@2", "draft@3")
    assert deps(plan, "final") == ["draft@1", "draft@2", "draft@3"]


def test_repeat_without_until_runs_rounds_in_sequence() -> None:
    plan = compile_workflow(workflow(linear(task("a"), task("b"), repeat={"max_rounds": 2})), CATALOG)
    assert deps(plan, "a@2") == ["a@1", "b@1"]
    assert not any(node.kind == "until" for node in plan.nodes.values())


def test_until_may_not_use_unknown_names() -> None:
    wf = workflow(inline(task("a"), repeat={"max_rounds": 2, "until": "zzz > 1"}))
    assert codes(wf) == [("unknown-name", "stages.0.repeat.until")]


# -- pass: checks against the catalog ----------------------------------------------------------

def test_unknown_models_addons_templates_functions() -> None:
    wf = workflow(linear(task("a", model=["fast_ai", "fastai"], addons=["reserch"]),
                         {"id": "b", "call": "tools.fetc"}, {"id": "c", "workflow": "research_reprt"},
                         {"id": "d", "workflow": "missing/flow.yaml"}))
    problems = codes(wf)
    assert problems == [
        ("unknown-model", "stages.0.tasks.0.model.1"), ("unknown-addon", "stages.0.tasks.0.addons.0"),
        ("unknown-function", "stages.0.tasks.1.call"), ("unknown-template", "stages.0.tasks.2.workflow"),
        ("unknown-workflow-file", "stages.0.tasks.3.workflow")]


def test_a_prompt_task_needs_a_model() -> None:
    wf = workflow(linear(task("a")), defaults={"model": None})
    assert codes(wf) == [("no-model", "stages.0.tasks.0.model")]


def test_seed_aliases_are_all_known_by_default() -> None:
    aliases = ["categorizer_ai", "fast_ai", "medium_ai", "thinking_ai", "code_ai", "research_ai", "product_ai",
               "image_analysis_ai", "finance_expert", "technical_expert", "general_expert", "router", "aggregator"]
    plan = compile_workflow(workflow(linear(*(task(alias, model=alias) for alias in aliases))), CATALOG)
    assert len(plan.nodes) == len(aliases)


# -- pass: order -------------------------------------------------------------------------------

def _node(id: str, *parents: str, kind: str = "prompt") -> Node:
    return Node(NodeId(id), id, kind, (), 0, None, frozenset(map(NodeId, parents)), {})  # type: ignore[arg-type]


def test_topological_order_is_stable_and_respects_edges() -> None:
    nodes = [_node("c", "a"), _node("a"), _node("b"), _node("d", "c", "b")]
    ordered, problems = topological_order(nodes)
    assert problems == [] and [n.id for n in ordered] == ["a", "c", "b", "d"]  # ready nodes by definition order


def test_critical_path_is_the_longest_chain_and_checks_weigh_nothing() -> None:
    nodes = [_node("a"), _node("b", "a"), _node("u", "b", kind="until"), _node("c", "u"), _node("x"), _node("y", "x")]
    assert critical_path(nodes) == ("a", "b", "u", "c")


def test_problems_are_located_in_the_file(write) -> None:
    path = write("dsl: orchestrion/v1\nname: t\nstages:\n  - type: inline\n    tasks:\n"
                 "      - id: a\n        model: fast_ai\n        prompt: '{{ b }}'\n")
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(load_workflow(path), CATALOG)
    assert str(caught.value.problems[0]).startswith(f"{path}:8:17: stages[0].tasks[0].prompt: unknown name 'b'")


def test_plan_is_frozen() -> None:
    plan = compile_workflow(workflow(linear(task("a"))), CATALOG)
    with pytest.raises(AttributeError):
        plan.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.nodes["b"] = plan.nodes["a"]  # type: ignore[index]


def test_sub_workflow_inputs_are_checked(write) -> None:
    child = write("dsl: orchestrion/v1\nname: child\ninputs:\n  topic: {type: string}\n  tone: {type: string, "
                  "default: calm}\nstages:\n  - type: inline\n    tasks:\n      - {id: a, model: fast_ai, "
                  "prompt: '{{ topic }} {{ tone }}'}\n", "child.yaml")
    parent = write("dsl: orchestrion/v1\nname: parent\nstages:\n  - type: linear\n    tasks:\n"
                   "      - {id: ok, workflow: child.yaml, with: {topic: x}}\n"
                   "      - {id: typo, workflow: child.yaml, with: {topik: x}}\n"
                   "      - {id: template, workflow: research_report, with: {topic: x, audience: y}}\n",
                   "parent.yaml")
    assert child.parent == parent.parent
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(load_workflow(parent), Catalog.default())
    found = {(p.code, p.path[3], p.path[-1]): p for p in caught.value.problems}
    assert set(found) == {("unknown-input", 1, "topik"), ("missing-input", 1, "with")}
    assert found["unknown-input", 1, "topik"].hint == "did you mean 'topic'?"


def test_an_invalid_sub_workflow_is_reported(write) -> None:
    write("dsl: orchestrion/v1\nname: broken\n", "broken.yaml")
    parent = write("dsl: orchestrion/v1\nname: p\nstages:\n  - type: linear\n    tasks:\n"
                   "      - {id: sub, workflow: broken.yaml}\n", "parent.yaml")
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(load_workflow(parent), CATALOG)
    (problem,) = caught.value.problems
    assert problem.code == "invalid-workflow" and "orchestrion validate" in (problem.hint or "")


def test_repeated_stages_with_the_same_name_stay_apart() -> None:
    loop = {"max_rounds": 2, "until": "a == 1"}
    plan = compile_workflow(workflow(inline(task("a"), repeat=loop, name="polish"),
                                     inline(task("b"), repeat={**loop, "until": "b == 1"}, name="polish")), CATALOG)
    until_nodes = [node for node in plan.nodes.values() if node.kind == "until"]
    assert [(node.id, node.condition) for node in until_nodes] == [
        ("until:polish@1", "a == 1"), ("until:stages[1]@1", "b == 1")]


def test_item_is_bound_in_with_arguments_of_any_name() -> None:
    wf = workflow(inline(task("q"), {"id": "each", "call": "tools.fetch", "for_each": "q",
                                     "with": {"when": "{{ item }}"}}))
    plan = compile_workflow(wf, CATALOG)
    assert plan.nodes["each"].bindings["item"].kind == "item"


@pytest.mark.parametrize("template", sorted(path.stem for path in (ROOT / "templates").glob("*.yaml")))
def test_a_plan_is_plain_values_that_pickle(template: str) -> None:
    """A plan can be stored and sent to another process by value: no pydantic model or configuration
    object is reachable from it, and it survives a pickle round trip unchanged."""
    import dataclasses
    import pickle

    from pydantic import BaseModel

    from tests.support.catalogs import able_catalog

    plan = compile_workflow(load_workflow(ROOT / "templates" / f"{template}.yaml"), able_catalog())
    seen: set[int] = set()

    def walk(value: Any, where: str) -> None:
        if id(value) in seen or isinstance(value, str | int | float | bool | type(None)):
            return
        seen.add(id(value))
        assert not isinstance(value, BaseModel), f"{where} is a {type(value).__name__}"
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name), f"{where}.{field.name}")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}[{key!r}]")
        else:
            assert isinstance(value, tuple | list | frozenset), f"{where} is a {type(value).__name__}"
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    walk(plan, "plan")
    copy = pickle.loads(pickle.dumps(plan))
    assert copy == plan and copy.dependents == plan.dependents and copy.has_timeouts == plan.has_timeouts
    with pytest.raises(TypeError):
        copy.nodes.clear()  # type: ignore[attr-defined]


def test_cache_inherits_merges_its_ttl_and_switches_off() -> None:
    from engine.compiler.plan import CacheSpec

    wf = workflow(linear(task("a"), task("b", cache=True), task("c", cache={"ttl": "10m"}), task("d", cache=False),
                         task("e", cache={"ttl": None}), {"id": "f", "call": "tools.fetch"}),
                  defaults={"model": "fast_ai", "cache": {"ttl": "1.5h"}})
    caches = [resolve_policies(site.task, wf.defaults).cache for site in collect_sites(wf)[0].sites]
    assert caches == [CacheSpec(5400.0), CacheSpec(5400.0), CacheSpec(600.0), None, CacheSpec(None), None]
    plain = workflow(linear(task("a", cache=True), task("b", cache={"ttl": 90})))
    assert [resolve_policies(site.task, plain.defaults).cache for site in collect_sites(plain)[0].sites] == [
        CacheSpec(None), CacheSpec(90.0)]
    compile_workflow(wf, CATALOG)


@pytest.mark.parametrize("setting", [{"ttl": "0s"}, {"ttl": "1 hour"}, {"ttl": 0}, {"ttl": True}, {"size": 3}, "yes"])
def test_a_bad_cache_setting_is_refused(setting: Any) -> None:
    with pytest.raises(WorkflowError) as caught:
        workflow(linear(task("a", cache=setting)))
    assert any(problem.path[:5] == ("stages", 0, "tasks", 0, "cache") for problem in caught.value.problems)


def test_cache_is_for_prompt_tasks() -> None:
    with pytest.raises(WorkflowError) as caught:
        workflow(linear({"id": "f", "call": "tools.fetch", "cache": True}))
    assert "`cache` does not apply to a `call` task" in str(caught.value)


@pytest.mark.anyio
async def test_a_system_prompt_inherited_from_defaults_reads_names_like_the_tasks_own() -> None:
    """What validates runs: `defaults.system` reading an input binds it in every prompt task that inherits it."""
    from engine import Engine
    from engine.testing import FakeModel

    document = {"dsl": "orchestrion/v1", "name": "expert", "inputs": {"topic": {"type": "string"}},
                "defaults": {"model": "fast_ai", "system": "Expert in {{ topic }}"},
                "stages": [{"type": "linear", "tasks": [{"id": "a", "prompt": "Say hello"},
                                                         {"id": "b", "prompt": "Say bye", "system": None}]}]}
    model = FakeModel()
    result = await Engine(models=model).run(document, {"topic": "tides"})
    assert result.status == "succeeded", result.error
    systems = {call.prompt: call.messages[0].content for call in model.calls if call.messages[0].role == "system"}
    assert systems == {"Say hello": "Expert in tides"}  # b switched the system prompt off


def test_an_unknown_name_in_an_inherited_system_prompt_is_reported_once_where_it_is_written() -> None:
    document = workflow(linear(task("a"), task("b")), defaults={"model": "fast_ai", "system": "Expert in {{ topc }}"})
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(document, CATALOG)
    assert [(p.code, p.path) for p in caught.value.problems] == [("unknown-name", ("defaults", "system"))]


def test_a_long_cycle_is_reported_in_a_line_of_reasonable_length() -> None:
    count = 2_000
    tasks = [task(f"t{index}", after=[f"t{(index + 1) % count}"]) for index in range(count)]
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(workflow(linear(*tasks)), CATALOG)
    (problem,) = [problem for problem in caught.value.problems if problem.code == "cycle"]
    assert len(problem.message) < 400 and "more) ->" in problem.message
