"""What each kind of node does once it may run: prompt, call, workflow and plan.

An executor gets the node's variables and returns its output; ``for_each``
is handled here too: the node's kind runs once per item, at most
``max_concurrency`` at a time, and the output is the list in item order.
A prompt goes through the engine's model pipeline; a nested run (``workflow``,
``plan``) through the ``Nested`` callable the scheduler gives. Every task
instance is counted against the run tree's ``max_tasks`` before it starts (a
``for_each`` counts its items, all at once), and a nested run is checked
against ``max_depth`` before it starts.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from engine.compiler.plan import Node, Plan, TaskSpec
from engine.errors import FunctionError, RunLimitError, TaskError
from engine.events import MediaSaved, PlanCreated
from engine.model.client import Message, ModelRequest, build_request
from engine.model.media import Generation
from engine.resilience.call import Call
from engine.runtime.context import RunState, Services
from engine.runtime.images import images_for, save_media
from engine.runtime.inputs import validate_inputs
from engine.runtime.prompting import system_message
from engine.runtime.results import RunResult, TaskResult

Nested = Callable[[Plan, dict[str, Any]], Awaitable[RunResult]]  # a run inside this one, one level deeper
PLANNED = "(planned)"  # the name a planned workflow goes by in a chain of nested runs, until it exists


def execute(services: Services, state: RunState, node: Node, result: TaskResult, nested: Nested) -> Awaitable[Any]:
    """Run ``node`` (every item of a ``for_each``); its output. A plain prompt, the common case,
    is awaited without an executor object or a coroutine of its own in between."""
    spec = node.task
    assert spec is not None
    if spec.for_each is None:
        state.tree.start(1, node.id, state.lineage)
        if spec.kind == "prompt" and not spec.images:
            return prompt(services, state, node, result, state.variables(node))
    return _Executor(services, state, node, result, nested).run()


def prompt(services: Services, state: RunState, node: Node, result: TaskResult,
           variables: dict[str, Any], *, images: tuple[Any, ...] = ()) -> Awaitable[Any]:
    """A model call through the engine's pipeline; attempts, tokens and cost add up in ``result``."""
    spec, policies = node.task, node.policies
    assert spec is not None and policies is not None
    request = build_request(policies.models[0], _system_message(services, state, node, variables),
                            services.renderer.render(spec.source, variables), temperature=policies.temperature,
                            max_tokens=policies.max_tokens, schema=spec.output_schema, images=images)
    call = Call(node.id, state.calls, result, policies.timeout, policies.retry, policies.hedge_after,
                cache=policies.cache)
    return services.pipeline.answer(request, call, policies.models)


async def prompt_with_images(services: Services, state: RunState, node: Node, result: TaskResult,
                             variables: dict[str, Any]) -> Any:
    """A prompt that sends images: its ``images:`` expressions evaluated, each read (files off the loop)."""
    spec = node.task
    assert spec is not None
    values = [services.renderer.evaluate(source, variables) for source in spec.images]
    images = await images_for(values, node.task_id, services.artifacts)
    return await prompt(services, state, node, result, variables, images=images)


async def generate(services: Services, state: RunState, node: Node, result: TaskResult,
                   variables: dict[str, Any]) -> Any:
    """Images or a video from the task's model; the files written under the run's artefact folder.
    The output describes each file (a list when more than one was asked for)."""
    spec, policies = node.task, node.policies
    assert spec is not None and policies is not None and spec.generation is not None
    wanted = spec.generation
    if services.artifacts is None:
        raise TaskError("the engine has no artefact folder to write generated media to (Engine(artifacts=...))",
                        task_id=node.id)
    request = ModelRequest(policies.models[0], (Message("user", services.renderer.render(spec.source, variables)),),
                           generate=Generation(wanted.media, wanted.count, wanted.size, wanted.seconds,
                                               wanted.aspect_ratio))
    # No hedge: a second model asked the same would make (and charge for) a second set of files.
    call = Call(node.id, state.calls, result, policies.timeout, policies.retry, None)
    await services.pipeline.answer(request, call, policies.models, raw=True)
    response = call.answered
    if response is None or not response.media:
        raise TaskError(f"{call.tally.model or request.model} answered without any {wanted.media}", task_id=node.id)
    files = await save_media(response.media, services.artifacts / state.run_id, node.task_id, call.answered_cost)
    for file in files:
        state.emit(MediaSaved, task_id=node.id, attempt=result.attempts, model=call.tally.model or request.model,
                   path=file["path"], media_type=file["media_type"], bytes=file["bytes"], cost_usd=file["cost_usd"])
    return files[0] if wanted.count == 1 and len(files) == 1 else files


def _system_message(services: Services, state: RunState, node: Node, variables: dict[str, Any]) -> str | None:
    """System prompt, addons and the schema instruction; computed once per node unless templated."""
    policies, spec = node.policies, node.task
    assert policies is not None and spec is not None
    if not policies.system and not policies.addons and spec.output_schema is None:
        return None
    cached, node_id = state.system_messages, node.id
    if node_id in cached:
        return cached[node_id]
    templated = policies.system is not None and "{" in policies.system
    system = services.renderer.render(policies.system, variables) if policies.system else None
    message = system_message(system, policies.addons, services.catalog.addons, spec.output_schema)
    if not templated:
        cached[node_id] = message
    return message


def first_error(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group."""
    error: BaseException = errors
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class _Executor:
    __slots__ = ("nested", "node", "result", "services", "spec", "state")

    def __init__(self, services: Services, state: RunState, node: Node, result: TaskResult, nested: Nested) -> None:
        assert node.task is not None
        self.services, self.state, self.node, self.result, self.nested = services, state, node, result, nested
        self.spec: TaskSpec = node.task

    async def run(self) -> Any:
        spec = self.spec
        variables = self.state.variables(self.node)
        if spec.for_each is None:
            return await self._once(variables)
        items = self.services.renderer.evaluate(spec.for_each, variables)
        if not isinstance(items, list | tuple):
            raise TaskError(f"for_each gave a {type(items).__name__}, not a list", task_id=self.node.id)
        self.state.tree.start(len(items), self.node.id, self.state.lineage)  # before any: a runaway stops at once
        outputs: list[Any] = [None] * len(items)
        limiter = anyio.CapacityLimiter(spec.max_concurrency or max(len(items), 1))

        state, node_id = self.state, str(self.node.id)

        async def one(index: int, item: Any) -> None:
            key = state.item_key(node_id, index)
            if key in state.items_done:  # finished before the run was resumed
                outputs[index] = state.items_done[key]
                return
            async with limiter:
                outputs[index] = await self._once({**variables, spec.item_name: item})
            if state.save_item is not None:
                await state.save_item(key, outputs[index])

        try:
            async with anyio.create_task_group() as group:
                for index, item in enumerate(items):
                    group.start_soon(one, index, item)
        except BaseExceptionGroup as errors:  # anyio wraps errors: the first item to fail decides
            raise first_error(errors) from None
        return outputs

    async def _once(self, variables: dict[str, Any]) -> Any:
        kind = self.spec.kind
        if kind == "prompt":
            if self.spec.images:
                return await prompt_with_images(self.services, self.state, self.node, self.result, variables)
            return await prompt(self.services, self.state, self.node, self.result, variables)
        if kind == "generate":
            return await generate(self.services, self.state, self.node, self.result, variables)
        if kind == "call":
            return await self._call(variables)
        if kind == "workflow":
            return await self._workflow(variables)
        return await self._plan(variables)

    async def _call(self, variables: dict[str, Any]) -> Any:
        name = self.spec.source
        function = self.services.functions[name]
        arguments = self._arguments(self.spec.arguments or {}, variables)
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

    async def _workflow(self, variables: dict[str, Any]) -> Any:
        services = self.services
        # Reading and parsing the file (once per engine: the catalog keeps it) stays off the event loop.
        workflow = await anyio.to_thread.run_sync(services.load_workflow, self.spec.source, self.state.plan.base_dir)
        plan = services.compile(workflow)
        self._check_depth(plan.name)
        arguments = self._arguments(self.spec.arguments or {}, variables)
        return await self._nested(plan, arguments, f"workflow {self.spec.source!r}")

    async def _plan(self, variables: dict[str, Any]) -> Any:
        """Ask the master planner for a workflow, announce it, run it as a nested run."""
        self._check_depth(PLANNED)  # before the planner is paid for
        services, policies, node = self.services, self.node.policies, self.node
        assert policies is not None
        chain = policies.models or (services.planner_model,)
        call = Call(node.id, self.state.calls, self.result, policies.timeout, policies.retry, policies.hedge_after)

        async def ask(request: ModelRequest) -> Any:
            return await services.pipeline.answer(request, call, chain, raw=True)  # the planner checks it

        planned = await services.plan_workflow(services.renderer.render(self.spec.source, variables), ask,
                                               chain[0], node.id)
        self.state.emit(PlanCreated, task_id=node.id, attempt=planned.attempts, workflow=planned.document,
                        attempts=planned.attempts)
        return await self._nested(services.compile(planned.workflow), {}, "the planned workflow")

    def _check_depth(self, name: str) -> None:
        self.state.tree.enter((*self.state.lineage, name), self.node.id)

    async def _nested(self, plan: Plan, arguments: dict[str, Any], what: str) -> Any:
        """Run a workflow inside this run: same events, same budget, one level deeper."""
        inputs = validate_inputs(plan.inputs, arguments)
        result = self.result
        result.attempts += 1
        outcome = await self.nested(plan, inputs)
        result.input_tokens += outcome.totals.input_tokens
        result.output_tokens += outcome.totals.output_tokens
        result.cost_usd += outcome.totals.cost_usd
        if outcome.status != "succeeded":
            raise self._nested_failure(outcome, what)
        return outcome.outputs

    def _nested_failure(self, outcome: RunResult, what: str) -> TaskError:
        """Why the nested run failed. A run-wide limit is said once, as it was first passed, not
        wrapped again at every level it goes up through."""
        tripped = self.state.tree.tripped
        failed = outcome.tasks.get(outcome.failed_task) if outcome.failed_task is not None else None
        if tripped is not None and failed is not None and failed.error_kind == RunLimitError.kind:
            return RunLimitError(tripped.message, task_id=self.node.id)
        return TaskError(f"{what} {outcome.status}: {outcome.error}", task_id=self.node.id)

    def _arguments(self, value: Any, variables: Mapping[str, Any]) -> Any:
        """Strings are templates (a lone ``{{ expression }}`` keeps its type); containers recurse."""
        if isinstance(value, str):
            return self.services.renderer.render_native(value, variables)
        if isinstance(value, dict):
            return {key: self._arguments(item, variables) for key, item in value.items()}
        if isinstance(value, list):
            return [self._arguments(item, variables) for item in value]
        return value
