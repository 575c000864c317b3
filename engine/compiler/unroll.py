"""Pass 4: sites -> nodes. Repeated stages are unrolled into rounds; edges are derived.

A node waits for exactly: the nodes whose output it reads, its predecessor in
an inline stage, its ``after`` list, the previous round's check in a repeated
stage, and (``schedule: staged`` only) every node of the previous stage.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from engine.compiler.plan import Binding, MediaSpec, Node, NodeId, NodePolicies, OutputSpec, TaskSpec
from engine.compiler.scope import Bindings, Scopes
from engine.compiler.sites import RepeatGroup, Site, Sites
from engine.dsl.models import Task, Workflow
from engine.errors import Problem


def node_id(task_id: str, round_: int | None) -> NodeId:
    return NodeId(task_id if round_ is None else f"{task_id}@{round_}")


def until_id(group: RepeatGroup, round_: int) -> NodeId:
    return NodeId(f"until:{group.label}@{round_}")


def build_nodes(
    workflow: Workflow, sites: Sites, scopes: Scopes, policies: dict[int, NodePolicies]
) -> tuple[list[Node], dict[str, OutputSpec], list[Problem]]:
    builder = _Builder(sites, scopes, policies)
    nodes = builder.task_nodes() + builder.until_nodes()
    if workflow.schedule == "staged":
        nodes = _with_stage_barriers(nodes)
    outputs = {name: OutputSpec(workflow.outputs[name], builder.bind(bindings, None, None))
               for name, bindings in scopes.outputs.items()}
    return nodes, outputs, builder.problems


class _Builder:
    def __init__(self, sites: Sites, scopes: Scopes, policies: dict[int, NodePolicies]) -> None:
        self.sites = sites
        self.scopes = scopes
        self.policies = policies
        self.problems: list[Problem] = []
        self.rounds: dict[str, tuple[int | None, ...]] = {
            site.task.id: _rounds(site.group) for site in sites.sites
        }
        self.members: dict[str, list[Site]] = defaultdict(list)
        for site in sites.sites:
            if site.group is not None:
                self.members[site.group.label].append(site)

    def task_nodes(self) -> list[Node]:
        return [self._task_node(site, round_) for site in self.sites.sites for round_ in _rounds(site.group)]

    def until_nodes(self) -> list[Node]:
        nodes = []
        for group in self.sites.groups:
            members = self.members[group.label]
            for round_ in range(1, group.max_rounds if group.until is not None else 1):
                bindings = self.bind(self.scopes.untils[group.label], group, round_)
                depends = {node_id(site.task.id, round_) for site in members}
                nodes.append(Node(until_id(group, round_), f"until:{group.label}", "until",
                                  (*group.path, "repeat", "until"), members[0].stage if members else 0,
                                  round_, frozenset(depends), bindings, condition=group.until, group=group.label))
        return nodes

    def _task_node(self, site: Site, round_: int | None) -> Node:
        bindings = self.bind(self.scopes.tasks[site.order], site.group, round_)
        depends: set[NodeId] = {n for binding in bindings.values() for n in binding.nodes}
        depends |= self._predecessors(site, round_)
        depends |= self._after(site)
        return Node(node_id(site.task.id, round_), site.task.id, site.task.kind, site.path, site.stage, round_,
                    frozenset(depends), bindings, task_spec(site.task), self.policies[site.order],
                    group=site.group.label if site.group else None)

    def _predecessors(self, site: Site, round_: int | None) -> set[NodeId]:
        group = site.group
        found: set[NodeId] = set()
        for name in site.predecessors:
            same_round = group is not None and self.sites.by_id[name].group is group
            found |= {node_id(name, round_)} if same_round else {node_id(name, r) for r in self.rounds[name]}
        if group is not None and round_ is not None and round_ > 1 and not site.predecessors & {
            member.task.id for member in self.members[group.label]
        }:
            # An entry task of a later round waits for the previous round to be over.
            if group.until is not None:
                found.add(until_id(group, round_ - 1))
            else:
                found |= {node_id(member.task.id, round_ - 1) for member in self.members[group.label]}
        return found

    def _after(self, site: Site) -> set[NodeId]:
        found: set[NodeId] = set()
        for index, name in enumerate(site.task.after):
            if name not in self.rounds:
                self.problems.append(Problem("unknown-after", f"`after` names {name!r}, which is no task's id",
                                             (*site.path, "after", index), "list ids of tasks in this workflow"))
            elif name == site.task.id:
                self.problems.append(Problem("self-after", "a task cannot run after itself",
                                             (*site.path, "after", index)))
            else:
                found |= {node_id(name, round_) for round_ in self.rounds[name]}
        return found

    def bind(self, bindings: Bindings, group: RepeatGroup | None, round_: int | None) -> Mapping[str, Binding]:
        resolved: dict[str, Binding] = {}
        for name, source in bindings.items():
            if source.kind == "input":
                resolved[name] = Binding("input")
            elif source.kind in ("loop", "item"):
                resolved[name] = Binding(source.kind)
            elif source.kind == "previous":
                assert round_ is not None
                resolved[name] = Binding("none") if round_ == 1 else Binding("task", (node_id(name, round_ - 1),))
            else:
                resolved[name] = Binding("task", self._producers(name, group, round_))
        return resolved

    def _producers(self, name: str, group: RepeatGroup | None, round_: int | None) -> tuple[NodeId, ...]:
        producer = self.sites.by_id[name]
        if group is not None and producer.group is group:
            return (node_id(name, round_),)  # the same round's output
        return tuple(node_id(name, r) for r in self.rounds[name])  # every round: the last one run counts


def task_spec(task: Task) -> TaskSpec:
    """The task as plain values: what it does and the templates it renders."""
    kind = task.kind
    generation = None
    if task.generate is not None:
        generation = MediaSpec(task.generate, task.count or 1, task.size, task.seconds, task.aspect_ratio)
    return TaskSpec(
        kind=kind, source=str(task.prompt if kind == "generate" else getattr(task, kind)),
        arguments=task.with_, output_schema=task.output.schema_ if task.output is not None else None,
        when=task.when, for_each=task.for_each, item_name=task.as_ or "item", max_concurrency=task.max_concurrency,
        images=tuple(task.images or ()), generation=generation,
    )


def _rounds(group: RepeatGroup | None) -> tuple[int | None, ...]:
    return (None,) if group is None else tuple(range(1, group.max_rounds + 1))


def _with_stage_barriers(nodes: Iterable[Node]) -> list[Node]:
    nodes = list(nodes)
    by_stage: dict[int, set[NodeId]] = defaultdict(set)
    for node in nodes:
        by_stage[node.stage].add(node.id)
    barrier_nodes = sorted(by_stage)
    previous = {stage: by_stage[barrier_nodes[i - 1]] if i else set() for i, stage in enumerate(barrier_nodes)}
    return [_replace_depends(node, node.depends_on | previous[node.stage]) for node in nodes]


def _replace_depends(node: Node, depends: Iterable[NodeId]) -> Node:
    return replace(node, depends_on=frozenset(depends))
