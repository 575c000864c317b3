"""The dataflow scheduler: each node starts the moment the nodes it waits for are done.

One anyio task per ready node, spawned when its last dependency finishes (a
counter per node, no polling, no barriers beyond the plan's edges); a task
goes on with the first child it makes ready, so a chain runs in one task. A
node that may not run is skipped: its repeated stage already ended, every
value it reads was skipped, or its ``when`` is false. A failed critical node
cancels everything still running and fails the run; a failed non-critical
node outputs null and the run goes on. A run-wide limit passed (too many
tasks, too deep), here or in a nested run, fails the top-level run at once,
whatever the node's ``critical``. Cancelling the caller cancels every branch.
The run's per-attempt deadlines are watched by one task beside the nodes
(``resilience.timeout.Deadlines``).

With a run store, a top-level run has a ``Journal``: the run is recorded before
its first node, each node's result is committed before the nodes that read it
start, and a resumed run restores the nodes that finished instead of running
them again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from engine.compiler.plan import Node, NodeId, Plan
from engine.errors import OrchestrionError, RunLimitError, StoreError, TaskError
from engine.events import Emitter, RunFinished, RunStarted, TaskFailed, TaskFinished, TaskSkipped, TaskStarted
from engine.resilience.budget import Budget
from engine.resilience.call import AttemptSink, RunContext
from engine.resilience.timeout import Deadlines
from engine.runtime.bus import EventBus
from engine.runtime.context import RunState, RunTree, Services
from engine.runtime.executors import execute
from engine.runtime.images import plain_inputs
from engine.runtime.journal import ITEM_STATUS, Journal, restore
from engine.runtime.logs import logger
from engine.runtime.results import RunResult, RunStatus, TaskResult, Totals
from engine.store import TaskRecord


async def run_plan(
    services: Services, plan: Plan, inputs: dict[str, Any], *, bus: EventBus,
    budget: Budget | None = None, tree: RunTree | None = None, lineage: tuple[str, ...] = (),
    run_id: str | None = None, journal: Journal | None = None, restored: Mapping[str, TaskRecord] | None = None,
    on_attempt: AttemptSink | None = None,
) -> RunResult:
    """Run a compiled plan with validated inputs; never raises for a task's failure. A nested run
    gets its parent's ``budget`` and ``tree`` and the names of the runs above it (``lineage``);
    a top-level run makes them from its plan's limits. A ``journal`` records the run in the store
    (StoreError if the run cannot be recorded); ``restored`` are the nodes a resumed run finished
    before, by node id, which are not run again."""
    run_id = journal.run_id if journal is not None else run_id or uuid.uuid4().hex
    emit = Emitter(run_id, bus.emit if bus.active else None, services.scrub)
    calls = RunContext(emit, budget or Budget(plan.limits.max_cost_usd),
                       Deadlines() if plan.has_timeouts else None, services.stream_tokens,
                       on_attempt=journal.attempt if journal is not None else on_attempt)
    top_level = tree is None
    tree = tree or RunTree.for_plan(plan, services)
    scheduler = _Scheduler(services, RunState(run_id, plan, inputs, calls, tree, (*lineage, plan.name)), bus,
                           journal, restored or {})
    if top_level:
        tree.halt = scheduler.halt
    return await scheduler.run()


class _Scheduler:
    def __init__(self, services: Services, state: RunState, bus: EventBus, journal: Journal | None,
                 restored: Mapping[str, TaskRecord]) -> None:
        self.services = services
        self.state = state
        self.bus = bus
        self.journal = journal
        self.restored = {task_id: record for task_id, record in restored.items() if record.status != ITEM_STATUS}
        self.unsettled = len(state.plan.nodes)  # nodes whose result is not final yet (or never will be)
        if journal is not None:
            state.save_item = journal.checkpoint_item
            journal.ending = lambda: self.unsettled == 0
            state.items_done = {key: record.output for key, record in restored.items()
                                if record.status == ITEM_STATUS}
        self.plan = state.plan
        self.waiting = {node_id: len(node.depends_on) for node_id, node in self.plan.nodes.items()}
        self.state.results = {node_id: TaskResult(node_id) for node_id in self.plan.nodes}
        limit = self.plan.limits.max_concurrency
        self.limiter = anyio.CapacityLimiter(limit) if limit else None
        self.failure: BaseException | None = None
        self.failed_node: NodeId | None = None
        self.group: anyio.abc.TaskGroup | None = None

    async def run(self) -> RunResult:
        state, started = self.state, time.time()
        if self.journal is not None:  # recorded before anything runs: an accepted run is never lost
            await self.journal.start(resumed=bool(self.restored))
        if state.emit.active:  # the inputs made JSON (an image as its file) only when somebody listens
            state.emit(RunStarted, workflow=self.plan.name, inputs=plain_inputs(state.inputs),
                       nodes=len(self.plan.nodes))
        status: RunStatus = "succeeded"
        try:
            with anyio.fail_after(self.plan.limits.timeout):
                await self._run_nodes()
        except TimeoutError:
            status, self.failure = "failed", TimeoutError(f"the run took longer than {self.plan.limits.timeout} s")
        except anyio.get_cancelled_exc_class():
            cancelled = self._finish("cancelled", started)
            if self.journal is not None:
                await self.journal.finish(cancelled)  # shielded: the store says how the run ended
            raise
        if self.failure is not None:
            status = "failed"
        outputs = self._outputs() if status == "succeeded" else {}
        if status == "succeeded" and self.failure is not None:
            status = "failed"  # an output failed to render
        result = self._finish(status, started, outputs)
        if self.journal is not None:
            await self.journal.finish(result)
        return result

    async def _run_nodes(self) -> None:
        deadlines = self.state.calls.deadlines
        async with anyio.create_task_group() as outer:
            if deadlines is not None:
                outer.start_soon(deadlines.watch)
            if self.journal is not None:
                outer.start_soon(self.journal.heartbeat)
            async with anyio.create_task_group() as group:
                self.group = group
                for node_id, count in self.waiting.items():
                    if count == 0:
                        group.start_soon(self._run_node, self.plan.nodes[node_id])
            outer.cancel_scope.cancel()  # every node is done: stop watching deadlines

    async def _run_node(self, node: Node | None) -> None:
        # This task goes on with one ready child and spawns tasks only for the others: a chain
        # runs in one task, and a fan-out spawns exactly one task per node.
        results = self.state.results
        while node is not None:
            result = results[node.id]
            executed = await self._settle(node, result)
            self.unsettled -= 1
            if executed and self.journal is not None and (self.failure is None or self.failed_node == node.id):
                await self._checkpoint(node, result)  # the critical failure too: `runs show` tells it
            node = self._release(node) if self.failure is None else None
            if node is not None:
                await anyio.lowlevel.checkpoint_if_cancelled()  # a long chain stays cancellable

    async def _settle(self, node: Node, result: TaskResult) -> bool:
        """The node's final result: restored, skipped, or run (then True)."""
        if node.id in self.restored:
            self._restore(node, result)
            return False
        if not self._should_execute(node, result):
            return False
        self._started(node, result)
        try:
            if self.limiter is None:
                output = await execute(self.services, self.state, node, result, self._nested)
            else:
                async with self.limiter:
                    output = await execute(self.services, self.state, node, result, self._nested)
        except anyio.get_cancelled_exc_class():
            result.status, result.ended_at = "cancelled", time.time()
            raise
        except Exception as error:  # every failure becomes the task's result, never the group's
            self._fail(node, result, error)
        else:
            self._succeeded(node, result, output)
        return True

    async def _checkpoint(self, node: Node, result: TaskResult) -> None:
        """The result is committed before the nodes that read it start; a failed write fails the run."""
        assert self.journal is not None
        try:
            await self.journal.checkpoint(result, read=bool(self.plan.dependents[node.id]))
        except StoreError as error:
            if self.failure is None:
                self.failure, self.failed_node = error, node.id
            assert self.group is not None
            self.group.cancel_scope.cancel()

    def _restore(self, node: Node, result: TaskResult) -> None:
        """A node the run finished before it was resumed: its stored result, without running it."""
        restore(result, self.restored[node.id])
        self.state.values[node.id] = result.output if result.status == "succeeded" else None

    def _should_execute(self, node: Node, result: TaskResult) -> bool:
        """False for a node settled here: skipped, failed to evaluate `when`, or an `until` check."""
        try:
            reason = self._skip_reason(node)
        except OrchestrionError as error:  # `when` could not be evaluated
            self._fail(node, result, error)
            return False
        if reason is not None:
            result.status = "skipped"
            self.state.emit(TaskSkipped, task_id=node.id, reason=reason)
            return False
        if node.kind == "until":
            self._check_until(node, result)
            return False
        return True

    def _release(self, node: Node) -> Node | None:
        """Count down the children; spawn all ready ones but the first, which is returned."""
        assert self.group is not None
        waiting, nodes = self.waiting, self.plan.nodes
        ready: Node | None = None
        for child in self.plan.dependents[node.id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                if ready is None:
                    ready = nodes[child]
                else:
                    self.group.start_soon(self._run_node, nodes[child])
        return ready

    def _skip_reason(self, node: Node) -> str | None:
        state = self.state
        if state.stopped_rounds:
            stopped = state.stopped_rounds.get(node.group or "")
            if stopped is not None and node.round is not None and node.round > stopped:
                return f"the repeated stage ended after round {stopped}"
        if node.bindings:
            read = [binding for binding in node.bindings.values() if binding.kind == "task"]
            results = state.results
            if read and all(results[n].status == "skipped" for binding in read for n in binding.nodes):
                return "every value it reads was skipped"
        when = node.task.when if node.task is not None else None
        if when is not None and not self.services.renderer.evaluate(when, state.variables(node)):
            return f"`when` is false: {when}"
        return None

    def _check_until(self, node: Node, result: TaskResult) -> None:
        result.started_at = time.time()
        try:
            done = bool(self.services.renderer.evaluate(str(node.condition), self.state.variables(node)))
        except OrchestrionError as error:
            self._fail(node, result, error)
            return
        result.status, result.output, result.ended_at = "succeeded", done, time.time()
        self.state.values[node.id] = done
        if done and node.group is not None and node.round is not None:
            self.state.stopped_rounds[node.group] = node.round

    def _started(self, node: Node, result: TaskResult) -> None:
        result.started_at = time.time()
        if self.state.emit.active:
            model = node.policies.models[0] if node.policies and node.policies.models else None
            self.state.emit(TaskStarted, task_id=node.id, attempt=1, model=model)

    def _succeeded(self, node: Node, result: TaskResult, output: Any) -> None:
        if self.services.scrub:  # a secret in an answer goes no further: not to later prompts, not to results
            output = self.services.scrub.value(output)
        ended = time.time()
        result.status, result.output, result.ended_at = "succeeded", output, ended
        self.state.values[node.id] = output
        self.state.emit(TaskFinished, task_id=node.id, attempt=result.attempts, model=result.model,
                        input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                        cost_usd=result.cost_usd, latency_s=ended - (result.started_at or ended))

    async def _nested(self, plan: Plan, inputs: dict[str, Any]) -> RunResult:
        """A workflow run inside this one: the same events, budget and bounds, one level deeper."""
        state = self.state
        return await run_plan(self.services, plan, inputs, bus=self.bus, budget=state.calls.budget,
                              tree=state.tree, lineage=state.lineage, on_attempt=state.calls.on_attempt)

    def _fail(self, node: Node, result: TaskResult, error: BaseException) -> None:
        # A refused reservation fails its task like any error: a `critical: false` task gives null.
        # A run-wide limit does not: the run must stop, not go on starting what will be refused.
        fatal = node.policies is None or node.policies.critical or isinstance(error, RunLimitError)
        result.status, result.ended_at = "failed", time.time()
        result.error, result.error_kind = self.services.scrub.text(_describe(error)), getattr(error, "kind", "unknown")
        self.state.values[node.id] = None
        self.state.emit(TaskFailed, task_id=node.id, attempt=result.attempts or None,
                        error_kind=result.error_kind, error=result.error, critical=fatal)
        logger().warning("orchestrion task failed", orchestrion_run_id=self.state.run_id,
                         orchestrion_task_id=node.id, error_kind=result.error_kind, critical=fatal)
        if fatal and (self.failure is None or self.failure is error):  # a run-wide limit may have come first
            self.failure, self.failed_node = error, node.id
            assert self.group is not None
            self.group.cancel_scope.cancel()

    def halt(self, error: RunLimitError) -> None:
        """A run-wide limit was passed somewhere below: this top-level run fails with it, at once,
        and every branch of it, nested runs included, is cancelled."""
        if self.failure is None:
            self.failure = error
        if self.group is not None:
            self.group.cancel_scope.cancel()

    def _outputs(self) -> dict[str, Any]:
        state = self.state
        if not self.plan.outputs:  # none declared: every task's last value, by task id
            return {node.task_id: state.values.get(node.id) for node in self.plan.nodes.values()
                    if node.kind != "until" and state.results[node.id].status != "skipped"}
        outputs: dict[str, Any] = {}
        for name, spec in self.plan.outputs.items():
            variables = {key: state.value_of(binding, key, None, {}) for key, binding in spec.bindings.items()}
            try:
                outputs[name] = self.services.renderer.render_native(spec.template, variables)
            except OrchestrionError as error:
                self.failure = TaskError(f"output {name!r}: {error}")
                return {}
        return outputs

    def _finish(self, status: RunStatus, started: float, outputs: dict[str, Any] | None = None) -> RunResult:
        state, ended = self.state, time.time()
        for result in state.results.values():
            if result.status == "pending" and status != "succeeded":
                result.status = "cancelled"
        totals = _totals(state.results, ended - started)
        error = self.services.scrub.text(_describe(self.failure)) if self.failure is not None else None
        if status == "cancelled":
            error = "the run was cancelled"
        state.emit(RunFinished, status=status, error=error, wall_time_s=totals.wall_time_s, cost_usd=totals.cost_usd,
                   input_tokens=totals.input_tokens, output_tokens=totals.output_tokens)
        tasks: dict[str, TaskResult] = {str(key): value for key, value in state.results.items()}
        return RunResult(state.run_id, self.plan.name, status, self.services.scrub.value(outputs or {}), tasks, totals,
                         started, ended, error, self.failed_node)


def _describe(error: BaseException) -> str:
    if isinstance(error, OrchestrionError | TimeoutError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _totals(results: Mapping[NodeId, TaskResult], wall_time: float) -> Totals:
    totals = Totals(wall_time_s=wall_time)
    models: dict[str, None] = {}
    for result in results.values():
        totals.input_tokens += result.input_tokens
        totals.output_tokens += result.output_tokens
        totals.cost_usd += result.cost_usd
        if result.model:
            models[result.model] = None
    totals.models_used = list(models)
    return totals
