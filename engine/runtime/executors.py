"""What each kind of node does once it may run: prompt, call, workflow (and plan).

An executor gets the node's variables and returns its output; ``for_each``
is handled here too: the node's kind runs once per item, at most
``max_concurrency`` at a time, and the output is the list in item order.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import anyio

from engine.compiler.plan import Node
from engine.dsl.models import Task, Workflow
from engine.errors import FunctionError, TaskError
from engine.events import PlanCreated
from engine.model.client import build_request
from engine.runtime.calls import ModelCaller
from engine.runtime.context import RunState, Services
from engine.runtime.inputs import validate_inputs
from engine.runtime.prompting import system_message
from engine.runtime.results import TaskResult


async def execute(services: Services, state: RunState, node: Node, result: TaskResult) -> Any:
    """Run ``node`` (every item of a ``for_each``); return its output."""
    return await _Executor(services, state, node, result).run()


def first_error(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group."""
    error: BaseException = errors
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class _Executor:
    def __init__(self, services: Services, state: RunState, node: Node, result: TaskResult) -> None:
        assert node.task is not None
        self.services, self.state, self.node, self.result = services, state, node, result
        self.task: Task = node.task

    async def run(self) -> Any:
        variables = self.state.variables(self.node)
        if self.task.for_each is None:
            return await self._once(variables)
        items = self.services.renderer.evaluate(self.task.for_each, variables)
        if not isinstance(items, list | tuple):
            raise TaskError(f"for_each gave a {type(items).__name__}, not a list", task_id=self.node.id)
        return await self._each(list(items), variables)

    async def _each(self, items: list[Any], variables: dict[str, Any]) -> list[Any]:
        outputs: list[Any] = [None] * len(items)
        limiter = anyio.CapacityLimiter(self.task.max_concurrency or max(len(items), 1))
        name = self.task.as_ or "item"

        async def one(index: int, item: Any) -> None:
            async with limiter:
                outputs[index] = await self._once({**variables, name: item})

        try:
            async with anyio.create_task_group() as group:
                for index, item in enumerate(items):
                    group.start_soon(one, index, item)
        except BaseExceptionGroup as errors:  # anyio wraps errors: the first item to fail decides
            raise first_error(errors) from None
        return outputs

    async def _once(self, variables: dict[str, Any]) -> Any:
        if self.task.prompt is not None:
            return await self._prompt(self.task.prompt, variables)
        if self.task.call is not None:
            return await self._call(self.task.call, variables)
        if self.task.workflow is not None:
            return await self._workflow(self.task.workflow, variables)
        assert self.task.plan is not None
        return await self._plan(self.task.plan, variables)

    async def _prompt(self, prompt: str, variables: dict[str, Any]) -> Any:
        policies, renderer = self.node.policies, self.services.renderer
        assert policies is not None
        schema = self.task.output.schema_ if self.task.output is not None else None
        system = self._system_message(variables, schema)
        request = build_request(policies.models[0], system, renderer.render(prompt, variables),
                                temperature=policies.temperature, max_tokens=policies.max_tokens, schema=schema)
        return await ModelCaller(self.services, self.state, self.node, self.result).call(request)

    def _system_message(self, variables: dict[str, Any], schema: Mapping[str, Any] | None) -> str | None:
        """System prompt, addons and the schema instruction; computed once per node unless templated."""
        policies = self.node.policies
        assert policies is not None
        if self.node.id in self.state.system_messages:
            return self.state.system_messages[self.node.id]
        templated = policies.system is not None and "{" in policies.system
        system = self.services.renderer.render(policies.system, variables) if policies.system else None
        message = system_message(system, policies.addons, self.services.catalog.addons, schema)
        if not templated:
            self.state.system_messages[self.node.id] = message
        return message

    async def _call(self, name: str, variables: dict[str, Any]) -> Any:
        function = self.services.functions[name]
        arguments = self._arguments(self.task.with_ or {}, variables)
        self.result.attempts += 1
        try:
            if inspect.iscoroutinefunction(function):
                return await function(**arguments)
            return await anyio.to_thread.run_sync(functools.partial(function, **arguments))
        except TaskError:
            raise
        except Exception as exc:
            raise FunctionError(f"{name} raised {type(exc).__name__}: {exc}", task_id=self.node.id,
                                attempt=self.result.attempts) from exc

    async def _workflow(self, reference: str, variables: dict[str, Any]) -> Any:

        self._check_depth()
        workflow = self.services.load_template(reference, self.state.workflow)
        arguments = self._arguments(self.task.with_ or {}, variables)
        return await self._nested(workflow, arguments, f"workflow {reference!r}")

    def _check_depth(self) -> None:
        if self.state.depth >= self.services.max_depth:
            raise TaskError(f"workflows nested deeper than {self.services.max_depth}", task_id=self.node.id)

    async def _nested(self, workflow: Workflow, arguments: dict[str, Any], what: str) -> Any:
        """Run a workflow inside this run: same events, same budget, one level deeper."""
        from engine.runtime.scheduler import run_plan  # the scheduler runs executors: import it late

        plan = self.services.compile(workflow)
        inputs = validate_inputs(plan.inputs, arguments)
        self.result.attempts += 1
        nested = await run_plan(self.services, plan, workflow, inputs, bus=self.state.bus, budget=self.state.budget,
                                depth=self.state.depth + 1)
        self.result.input_tokens += nested.totals.input_tokens
        self.result.output_tokens += nested.totals.output_tokens
        self.result.cost_usd += nested.totals.cost_usd
        if nested.status != "succeeded":
            raise TaskError(f"{what} {nested.status}: {nested.error}", task_id=self.node.id)
        return nested.outputs

    async def _plan(self, request_template: str, variables: dict[str, Any]) -> Any:
        """Ask the master planner for a workflow, announce it, run it as a nested run."""
        from engine.planner import Planner, plan_failed

        self._check_depth()
        assert self.node.policies is not None
        chain = self.node.policies.models or (self.services.planner_model,)
        caller = ModelCaller(self.services, self.state, self.node, self.result)
        planner = Planner(lambda request: caller.call(request, chain), self.services.catalog, self.services.compile,
                          model=chain[0], limits=self.services.planner_limits, prices=self.services.prices)
        outcome = await planner.plan(self.services.renderer.render(request_template, variables))
        if outcome.workflow is None or outcome.document is None:
            raise plan_failed(outcome, self.node.id)
        self.state.emit(PlanCreated, task_id=self.node.id, attempt=len(outcome.attempts),
                        workflow=outcome.document, attempts=len(outcome.attempts))
        return await self._nested(outcome.workflow, {}, "the planned workflow")

    def _arguments(self, value: Any, variables: Mapping[str, Any]) -> Any:
        """Strings are templates (a lone ``{{ expression }}`` keeps its type); containers recurse."""
        if isinstance(value, str):
            return self.services.renderer.render_native(value, variables)
        if isinstance(value, dict):
            return {key: self._arguments(item, variables) for key, item in value.items()}
        if isinstance(value, list):
            return [self._arguments(item, variables) for item in value]
        return value
