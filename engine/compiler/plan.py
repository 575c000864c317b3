"""The compiled form of a workflow: a frozen DAG the runtime executes as is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NewType

from engine.dsl.models import Limits, Task
from engine.errors import Path

NodeId = NewType("NodeId", str)
NodeKind = Literal["prompt", "call", "workflow", "plan", "until"]
BindingKind = Literal["input", "task", "loop", "item", "none"]


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """A resolved retry policy (no field left to inherit)."""

    max_attempts: int
    initial_delay: float
    backoff: float
    max_delay: float
    jitter: Literal["full", "none"]
    max_elapsed: float | None


@dataclass(frozen=True, slots=True)
class NodePolicies:
    """A task's effective settings after inheritance from defaults and the engine."""

    models: tuple[str, ...]  # the fallback chain; empty for tasks that call no model
    timeout: float | None
    retry: RetrySpec | None
    critical: bool
    cache: bool
    temperature: float | None
    max_tokens: int | None
    system: str | None
    addons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Binding:
    """Where the value of a name a node uses comes from.

    ``task``: the output of the last of ``nodes`` that ran (several nodes when
    the name is produced by a repeated stage); ``input``: the run's input;
    ``loop``: the loop variables (``loop.round``); ``item``: the current item
    of a ``for_each``; ``none``: null (a previous round's output, read in round 1).
    """

    kind: BindingKind
    nodes: tuple[NodeId, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    """One unit of the DAG: a task (or one round of it), or a repeat's `until` check."""

    id: NodeId
    task_id: str  # the name its output is bound to
    kind: NodeKind
    path: Path  # where it is defined in the workflow
    stage: int  # index of its top-level stage
    round: int | None  # 1-based round inside a repeated stage
    depends_on: frozenset[NodeId]
    bindings: Mapping[str, Binding]
    task: Task | None = None  # None for `until` checks
    policies: NodePolicies | None = None
    condition: str | None = None  # the `until` expression of a check node
    group: str | None = None  # label of the repeated stage it belongs to


@dataclass(frozen=True, slots=True)
class OutputSpec:
    template: str
    bindings: Mapping[str, Binding]


@dataclass(frozen=True)
class Plan:
    """A validated workflow compiled to a DAG; nodes are in topological order."""

    name: str
    version: str
    nodes: Mapping[NodeId, Node]
    critical_path: tuple[NodeId, ...]
    outputs: Mapping[str, OutputSpec]
    inputs: Mapping[str, Mapping[str, Any]]
    limits: Limits
    schedule: Literal["dataflow", "staged"]
    dependents: Mapping[NodeId, frozenset[NodeId]] = field(init=False)

    def __post_init__(self) -> None:
        children: dict[NodeId, set[NodeId]] = {node_id: set() for node_id in self.nodes}
        for node in self.nodes.values():
            for parent in node.depends_on:
                children[parent].add(node.id)
        frozen = {key: frozenset(value) for key, value in children.items()}
        object.__setattr__(self, "dependents", MappingProxyType(frozen))

    @property
    def edges(self) -> tuple[tuple[NodeId, NodeId], ...]:
        """(parent, child) pairs in topological order of the child."""
        return tuple((parent, node.id) for node in self.nodes.values() for parent in sorted(node.depends_on))
