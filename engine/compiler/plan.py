"""The compiled form of a workflow: a frozen DAG the runtime executes as is.

Plain values only (frozen dataclasses, tuples, dicts of JSON data): no
pydantic model and no configuration object is reachable from a Plan, so a
plan can be stored, pickled and sent to another process by value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NewType, NoReturn, TypeVar

from engine.errors import Path

NodeId = NewType("NodeId", str)
K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(dict[K, V]):
    """A dict that refuses changes: a plan is shared by every run of it. Unlike a
    ``MappingProxyType`` it pickles, so a plan can be sent to another process."""

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a compiled plan cannot be changed")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (dict(self),))
NodeKind = Literal["prompt", "call", "workflow", "plan", "generate", "until"]
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
    on: tuple[tuple[str, str], ...] = ()  # (error class, action) pairs; a class left out: retry_then_fallback

    def action(self, kind: str) -> str:
        """What a transient error of ``kind`` does: retry, fallback, or retry_then_fallback."""
        return next((action for name, action in self.on if name == kind), "retry_then_fallback")


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """A resolved `cache:` policy: answers are kept ``ttl_s`` seconds (None: until cleared)."""

    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class NodePolicies:
    """A task's effective settings after inheritance from defaults and the engine."""

    models: tuple[str, ...]  # the fallback chain; empty for tasks that call no model
    timeout: float | None
    retry: RetrySpec | None
    critical: bool
    cache: CacheSpec | None  # None: answers are neither looked up nor kept
    hedge_after: float | None
    temperature: float | None
    max_tokens: int | None
    system: str | None
    addons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """What a ``generate:`` task asks for."""

    media: Literal["image", "video"]
    count: int = 1
    size: str | None = None
    seconds: int | None = None
    aspect_ratio: str | None = None


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a task does, as the workflow says it (templates and expressions still unrendered)."""

    kind: Literal["prompt", "call", "workflow", "plan", "generate"]
    source: str  # the prompt (also of a generation) or plan template, the function name, or the workflow reference
    arguments: Mapping[str, Any] | None = None  # `with:`: templates, rendered at run time
    output_schema: Mapping[str, Any] | None = None
    when: str | None = None
    for_each: str | None = None
    item_name: str = "item"
    max_concurrency: int | None = None
    images: tuple[str, ...] = ()  # expressions giving the images sent with the prompt
    generation: MediaSpec | None = None  # a `generate:` task's media


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """Bounds on one run: cost, tasks at once, seconds; and on the whole tree of a top-level run:
    task instances and nesting depth (None: the engine's)."""

    max_cost_usd: float | None = None
    max_concurrency: int | None = None
    timeout: float | None = None
    max_tasks: int | None = None
    max_depth: int | None = None


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
    task: TaskSpec | None = None  # None for `until` checks
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
    limits: PlanLimits
    schedule: Literal["dataflow", "staged"]
    base_dir: str | None = None  # the workflow file's folder: relative `workflow:` paths start there
    dependents: Mapping[NodeId, tuple[NodeId, ...]] = field(init=False, compare=False)
    has_timeouts: bool = field(init=False, compare=False)  # does any node limit its attempts' time

    def __post_init__(self) -> None:
        children: dict[NodeId, list[NodeId]] = {node_id: [] for node_id in self.nodes}
        for node in self.nodes.values():  # topological order: children are listed in it too
            for parent in node.depends_on:
                children[parent].append(node.id)
        object.__setattr__(self, "dependents", FrozenMap({key: tuple(value) for key, value in children.items()}))
        object.__setattr__(self, "has_timeouts", any(
            node.policies is not None and node.policies.timeout is not None for node in self.nodes.values()))

    @property
    def edges(self) -> tuple[tuple[NodeId, NodeId], ...]:
        """(parent, child) pairs in topological order of the child."""
        return tuple((parent, node.id) for node in self.nodes.values() for parent in sorted(node.depends_on))
