"""What one run needs from the engine, and the state it builds up.

``Services`` is the engine's side (the model pipeline, functions, renderer,
the catalog, how to compile and plan), shared by nested runs; ``RunState``
holds one run's values and results.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.catalog import Catalog
from engine.compiler.plan import Binding, Node, NodeId, Plan
from engine.dsl.models import Workflow
from engine.events import Emitter
from engine.resilience.call import RunContext
from engine.resilience.pipeline import ModelPipeline
from engine.runtime.results import TaskResult
from engine.secrets import NO_SECRETS, Scrubber
from engine.templating import TemplateRenderer

Ask = Callable[[Any], Awaitable[Any]]  # a model call for the planner: a ModelRequest in, its answer out


@dataclass(frozen=True, slots=True)
class PlannedWorkflow:
    workflow: Workflow
    document: dict[str, Any]
    attempts: int


# The master planner, given by the engine: (request, ask, model alias, task id) -> a checked workflow,
# or a TaskError saying why there is none.
PlanWorkflow = Callable[[str, Ask, str, str], Awaitable[PlannedWorkflow]]


@dataclass(frozen=True)
class Services:
    """The engine's parts a run uses."""

    pipeline: ModelPipeline
    functions: Mapping[str, Callable[..., Any]]
    renderer: TemplateRenderer
    catalog: Catalog
    compile: Callable[[Workflow], Plan]
    plan_workflow: PlanWorkflow
    stream_tokens: bool = True
    scrub: Scrubber = NO_SECRETS  # the configured secrets, removed by value from what leaves a run
    max_depth: int = 8
    planner_model: str = "thinking_ai"

    def load_workflow(self, reference: str, base_dir: str | None) -> Workflow:
        return self.catalog.load_workflow(reference, Path(base_dir) if base_dir is not None else None)


@dataclass(slots=True)
class RunState:
    """One run: its plan, inputs, values and results."""

    run_id: str
    plan: Plan
    inputs: dict[str, Any]
    calls: RunContext  # what its model calls share: events, budget, deadlines
    depth: int = 0
    values: dict[NodeId, Any] = field(default_factory=dict)
    results: dict[NodeId, TaskResult] = field(default_factory=dict)
    stopped_rounds: dict[str, int] = field(default_factory=dict)  # repeat group -> last round to run
    system_messages: dict[NodeId, str | None] = field(default_factory=dict)  # per node, when not templated

    @property
    def emit(self) -> Emitter:
        return self.calls.emit

    def value_of(self, binding: Binding, name: str, round_: int | None, extra: Mapping[str, Any]) -> Any:
        kind = binding.kind
        if kind == "task":
            results = self.results
            ran = [n for n in binding.nodes if results[n].status not in ("skipped", "pending")]
            return self.values.get(ran[-1]) if ran else None
        if kind == "input":
            return self.inputs[name]
        if kind == "loop":
            return {"round": round_}
        if kind == "item":
            return extra[name]
        return None

    def variables(self, node: Node, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if not node.bindings:
            return {}
        extra = extra or {}
        return {name: self.value_of(binding, name, node.round, extra) for name, binding in node.bindings.items()
                if binding.kind != "item" or name in extra}  # items are bound per item, by for_each
