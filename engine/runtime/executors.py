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
from engine.dsl.models import Task
from engine.errors import FunctionError, TaskError
from engine.runtime.calls import ModelCaller
from engine.runtime.context import RunState, Services
from engine.runtime.inputs import validate_inputs
from engine.runtime.prompting import build_request, system_message
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
        raise TaskError("`plan:` tasks need the master planner, which this engine does not have yet",
                        task_id=self.node.id)

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
        from engine.runtime.scheduler import run_plan  # the scheduler runs executors: import it late

        if self.state.depth >= self.services.max_depth:
            raise TaskError(f"workflows nested deeper than {self.services.max_depth}", task_id=self.node.id)
        workflow = self.services.load_template(reference, self.state.workflow)
        plan = self.services.compile(workflow)
        inputs = validate_inputs(plan.inputs, self._arguments(self.task.with_ or {}, variables))
        self.result.attempts += 1
        nested = await run_plan(self.services, plan, workflow, inputs, bus=self.state.bus, budget=self.state.budget,
                                depth=self.state.depth + 1)
        self.result.input_tokens += nested.totals.input_tokens
        self.result.output_tokens += nested.totals.output_tokens
        self.result.cost_usd += nested.totals.cost_usd
        if nested.status != "succeeded":
            raise TaskError(f"workflow {reference!r} {nested.status}: {nested.error}", task_id=self.node.id)
        return nested.outputs

    def _arguments(self, value: Any, variables: Mapping[str, Any]) -> Any:
        """Strings are templates (a lone ``{{ expression }}`` keeps its type); containers recurse."""
        if isinstance(value, str):
            return self.services.renderer.render_native(value, variables)
        if isinstance(value, dict):
            return {key: self._arguments(item, variables) for key, item in value.items()}
        if isinstance(value, list):
            return [self._arguments(item, variables) for item in value]
        return value
