"""Compile a Workflow into a Plan: a list of small pure passes.

    sites    flatten nested stages; what each task can see; duplicate ids
    scope    resolve every name templates and expressions use
    policies effective policies after inheritance
    unroll   repeated stages into rounds; nodes and their edges
    checks   models, addons, templates, functions against the Catalog
    order    cycles, topological order, critical path
    nesting  `workflow:` tasks whose files lead round in a cycle

Every pass reports problems instead of raising, so one compile reports all of
them; WorkflowError carries them, each located in the source file.
"""

from __future__ import annotations

import copy

from engine.catalog import Catalog
from engine.compiler.checks import check_catalog
from engine.compiler.nesting import check_nesting
from engine.compiler.order import critical_path, topological_order
from engine.compiler.plan import (
    Binding,
    FrozenMap,
    Node,
    NodeId,
    NodePolicies,
    OutputSpec,
    Plan,
    PlanLimits,
    RetrySpec,
    TaskSpec,
)
from engine.compiler.policies import resolve_policies
from engine.compiler.scope import resolve_scopes
from engine.compiler.sites import collect_sites
from engine.compiler.unroll import build_nodes
from engine.dsl.models import Workflow
from engine.errors import Problem, WorkflowError

__all__ = [
    "Binding", "Node", "NodeId", "NodePolicies", "OutputSpec", "Plan", "PlanLimits", "RetrySpec", "TaskSpec",
    "compile_workflow",
]


def compile_workflow(workflow: Workflow, catalog: Catalog | None = None) -> Plan:
    """Check ``workflow`` and compile it to a Plan; WorkflowError lists every problem.

    ``catalog`` holds the models, addons, templates and functions the engine
    knows; by default, the built-in ones.
    """
    catalog = catalog if catalog is not None else Catalog.default()
    sites, problems = collect_sites(workflow)
    scopes, scope_problems = resolve_scopes(workflow, sites)
    policies = {site.order: resolve_policies(site.task, workflow.defaults) for site in sites.sites}
    nodes, outputs, node_problems = build_nodes(workflow, sites, scopes, policies)
    ordered, order_problems = topological_order(nodes)
    problems += scope_problems + node_problems + check_catalog(workflow, sites.sites, catalog) + order_problems
    problems += check_nesting(workflow, sites.sites, catalog)
    if problems:
        raise WorkflowError(_located(problems, workflow))
    return Plan(
        name=workflow.name,
        version=workflow.version,
        nodes=FrozenMap({node.id: node for node in ordered}),
        critical_path=critical_path(ordered),
        outputs=FrozenMap(outputs),
        inputs=FrozenMap(copy.deepcopy(workflow.inputs)),
        limits=_limits(workflow),
        schedule=workflow.schedule,
        base_dir=str(origin.file.parent) if (origin := workflow.origin) is not None and origin.file else None,
    )


def _limits(workflow: Workflow) -> PlanLimits:
    limits = workflow.limits
    return PlanLimits(limits.max_cost_usd, limits.max_concurrency, limits.timeout, limits.max_tasks, limits.max_depth)


def _located(problems: list[Problem], workflow: Workflow) -> list[Problem]:
    origin = workflow.origin
    if origin is None:
        return problems
    located = [Problem(p.code, p.message, p.path, p.hint, origin.locate(p.path)) for p in problems]
    return sorted(located, key=Problem.sort_key)
