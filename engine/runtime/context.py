"""What one run needs from the engine, and the state it builds up.

``Services`` is the engine's side (the model pipeline, functions, renderer,
the catalog, how to compile and plan), shared by nested runs; ``RunTree`` is
what one top-level run and all its nested runs share: the count of task
instances started and the bounds on it and on depth; ``RunState`` holds one
run's values and results.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.catalog import Catalog
from engine.compiler.plan import Binding, Node, NodeId, Plan
from engine.dsl.models import DEFAULT_MAX_DEPTH, DEFAULT_MAX_TASKS, Workflow
from engine.errors import RunLimitError
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
    max_depth: int = DEFAULT_MAX_DEPTH  # bounds on a whole run (RunTree) where the top-level
    max_tasks: int = DEFAULT_MAX_TASKS  # workflow's `limits:` sets none
    planner_model: str = "thinking_ai"
    artifacts: Path | None = None  # generated media go under <artifacts>/<run id>/ (None: nowhere; they fail)

    def load_workflow(self, reference: str, base_dir: str | None) -> Workflow:
        return self.catalog.load_workflow(reference, Path(base_dir) if base_dir is not None else None)


@dataclass(slots=True)
class RunTree:
    """What every run of one top-level run shares, like its budget: the task instances started
    so far, and the top-level run's bounds on them and on nesting (a nested run's own `limits`
    cannot widen them). The first bound passed is kept, and ``halt`` (the top-level run's)
    fails the whole tree at once: a runaway's other branches stop too, without a word each."""

    max_tasks: int
    max_depth: int
    started: int = 0
    tripped: RunLimitError | None = None
    halt: Callable[[RunLimitError], None] | None = None

    @classmethod
    def for_plan(cls, plan: Plan, services: Services) -> RunTree:
        """The workflow's bounds, under the engine's: whoever runs the engine (a service taking
        workflows from the network) sets the ceiling, and a workflow may only lower it."""
        limits = plan.limits
        return cls(min(limits.max_tasks or services.max_tasks, services.max_tasks),
                   min(limits.max_depth or services.max_depth, services.max_depth))

    def start(self, count: int, task_id: str, lineage: tuple[str, ...]) -> None:
        """Count ``count`` task instances about to start; RunLimitError past ``max_tasks``."""
        self.started += count
        if self.started > self.max_tasks:
            raise self.trip(f"the run started more than {self.max_tasks} tasks (limits.max_tasks)"
                            + (f"; the last was in {_chain(lineage)}" if len(lineage) > 1 else ""), task_id)

    def enter(self, lineage: tuple[str, ...], task_id: str) -> None:
        """Check that one more nested run fits under ``max_depth``; ``lineage`` ends with it."""
        if len(lineage) - 1 > self.max_depth:
            raise self.trip(f"workflows nested deeper than {self.max_depth} (limits.max_depth): "
                            f"{_chain(lineage)}", task_id)

    def trip(self, message: str, task_id: str) -> RunLimitError:
        error = RunLimitError(message, task_id=task_id)
        if self.tripped is None:
            self.tripped = error
            if self.halt is not None:
                self.halt(error)
        return error


def _chain(names: tuple[str, ...], shown: int = 8) -> str:
    """``a → b → c``; a long chain as its first and last few: depth is at most 64, but a line is short."""
    if len(names) > shown:
        half = shown // 2
        names = (*names[:half], f"… {len(names) - shown} more …", *names[-half:])
    return " → ".join(names)


@dataclass(slots=True)
class RunState:
    """One run: its plan, inputs, values and results."""

    run_id: str
    plan: Plan
    inputs: dict[str, Any]
    calls: RunContext  # what its model calls share: events, budget, deadlines
    tree: RunTree  # what every run of the top-level run shares: tasks started, bounds
    lineage: tuple[str, ...]  # the workflows' names from the top-level run down to this one
    values: dict[NodeId, Any] = field(default_factory=dict)
    results: dict[NodeId, TaskResult] = field(default_factory=dict)
    stopped_rounds: dict[str, int] = field(default_factory=dict)  # repeat group -> last round to run
    system_messages: dict[NodeId, str | None] = field(default_factory=dict)  # per node, when not templated
    # With a run store: each `for_each` item's output is committed as it finishes (``save_item``), and a
    # resumed run gets back the items finished before (``items_done``, by ``item_key``), not asking again.
    save_item: Callable[[str, Any], Awaitable[None]] | None = None
    items_done: Mapping[str, Any] = field(default_factory=dict)

    @property
    def emit(self) -> Emitter:
        return self.calls.emit

    @staticmethod
    def item_key(node_id: str, index: int) -> str:
        """How the store names item ``index`` of a ``for_each`` node: ``research[3]``."""
        return f"{node_id}[{index}]"

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
