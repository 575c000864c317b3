"""Model calls with retries, fallbacks, timeouts, structured output and cost.

For each model of the task's fallback chain: attempts with exponential
backoff and full jitter (tenacity, sleeping through the engine's ``sleep``)
while the error is transient; a persistent error, or retries exhausted, moves
to the next model. An invalid structured answer is asked again with the error
fed back. Every retry and fallback is an event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from engine.compiler.plan import Node, NodePolicies, RetrySpec
from engine.errors import InvalidOutputError, ModelError, TaskError
from engine.runtime.budget import Price, estimate_usage
from engine.runtime.context import RunState, Services
from engine.runtime.events import TaskFellBack, TaskRetrying, TokenDelta
from engine.runtime.model import ModelRequest, ModelResponse, TextDelta
from engine.runtime.prompting import parse_output, repair_request
from engine.runtime.results import TaskResult

REPAIR_ATTEMPTS = 2
_FREE = Price()


class ModelCaller:
    """The model calls of one node; usage and cost add up into its TaskResult."""

    def __init__(self, services: Services, state: RunState, node: Node, result: TaskResult) -> None:
        assert node.policies is not None
        self.services, self.state, self.node, self.result = services, state, node, result
        self.policies: NodePolicies = node.policies

    async def call(self, request: ModelRequest) -> Any:
        """Answer with the first model of the fallback chain that succeeds; return the value."""
        chain = self.policies.models
        for index, alias in enumerate(chain):
            try:
                return await self._with_retries(request if alias == request.model else _for_model(request, alias))
            except ModelError as error:
                if index == len(chain) - 1:
                    error.task_id, error.attempt = self.node.id, self.result.attempts
                    raise
                self.state.emit(TaskFellBack, task_id=self.node.id, attempt=self.result.attempts, from_model=alias,
                                to_model=chain[index + 1], error_kind=error.kind, error=error.message)
        raise AssertionError("the compiler guarantees a model")

    async def _with_retries(self, request: ModelRequest) -> Any:
        # The first attempt runs bare: tenacity's machinery costs about as much as the rest of a
        # task, and most calls succeed at once. Its failure is replayed into tenacity, so attempt
        # numbers, waits and the stop rule are exactly tenacity's.
        try:
            return await self._answer(request)
        except ModelError as error:
            if not error.transient or self.policies.retry is None or self.policies.retry.max_attempts <= 1:
                raise
            first_failure: list[ModelError] = [error]
        retrying = AsyncRetrying(
            stop=_stop(self.policies.retry), wait=_wait(self.policies.retry), sleep=self.services.sleep,
            retry=retry_if_exception(lambda error: isinstance(error, ModelError) and error.transient),
            before_sleep=lambda retry_state: self._retrying(retry_state, request.model), reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first_failure:
                    raise first_failure.pop()
                return await self._answer(request)
        raise AssertionError("tenacity returns or re-raises")

    def _retrying(self, retry_state: RetryCallState, model: str) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if isinstance(error, ModelError):
            self.state.emit(TaskRetrying, task_id=self.node.id, attempt=self.result.attempts, model=model,
                            error_kind=error.kind, error=error.message, delay_s=delay)

    async def _answer(self, request: ModelRequest) -> Any:
        """One attempt, plus repairs of an invalid structured answer."""
        for repair in range(REPAIR_ATTEMPTS + 1):
            response = await self._one_call(request)
            if request.output_schema is None:
                return response.text
            try:
                return parse_output(response.text, request.output_schema, response.model or request.model)
            except InvalidOutputError as error:
                if repair == REPAIR_ATTEMPTS:
                    raise
                self.state.emit(TaskRetrying, task_id=self.node.id, attempt=self.result.attempts,
                                model=request.model, error_kind="invalid_output", error=error.message, delay_s=0.0)
                request = repair_request(request, response.text, error.message)
        raise AssertionError("unreachable")

    async def _one_call(self, request: ModelRequest) -> ModelResponse:
        price = self.services.prices.get(request.model, _FREE)
        # Estimating means encoding the prompt: only worth it when there is a limit to check.
        estimate = price.cost(estimate_usage(request)) if self.state.budget.limit is not None else 0.0
        reserved = self.state.budget.reserve(estimate, self.node.id)
        self.result.attempts += 1
        response: ModelResponse | None = None
        limit = self.services.model_concurrency.get(request.model)
        try:
            if limit is None and self.policies.timeout is None:  # the common case, without machinery
                response = await self._request(request)
            else:
                async with self._model_slot(request.model, limit):
                    with anyio.fail_after(self.policies.timeout):
                        response = await self._request(request)
        except TimeoutError:
            raise ModelError("timeout", f"no answer within {self.policies.timeout} s", model=request.model) from None
        finally:
            cost = price.cost(response.usage) if response is not None else 0.0
            self.state.budget.settle(reserved, cost)
            if response is not None:
                self.result.input_tokens += response.usage.input_tokens
                self.result.output_tokens += response.usage.output_tokens
                self.result.cost_usd += cost
        self.result.model = request.model
        return response

    @asynccontextmanager
    async def _model_slot(self, alias: str, limit: int | None) -> AsyncIterator[None]:
        """Per-alias concurrency cap, if the engine sets one."""
        if limit is None:
            yield
            return
        limiter = self.state.model_limiters.setdefault(alias, anyio.CapacityLimiter(limit))
        async with limiter:
            yield

    async def _request(self, request: ModelRequest) -> ModelResponse:
        client = self.services.client(request.model)
        if not (self.services.stream_tokens and self.state.bus.active):
            return await client.complete(request)
        final: ModelResponse | None = None
        async for piece in client.stream(request):
            if isinstance(piece, TextDelta):
                self.state.emit(TokenDelta, task_id=self.node.id, attempt=self.result.attempts, text=piece.text)
            else:
                final = piece
        if final is None:
            raise TaskError("the model's stream ended without a final response", task_id=self.node.id)
        return final


def _for_model(request: ModelRequest, alias: str) -> ModelRequest:
    return ModelRequest(alias, request.messages, request.temperature, request.max_tokens, request.output_schema)


def _stop(retry: RetrySpec | None) -> stop_base:
    if retry is None:
        return stop_after_attempt(1)
    stop: stop_base = stop_after_attempt(retry.max_attempts)
    return stop | stop_after_delay(retry.max_elapsed) if retry.max_elapsed is not None else stop


def _wait(retry: RetrySpec | None) -> wait_base:
    if retry is None:
        return wait_exponential(multiplier=0, max=0)
    if retry.jitter == "full":  # random between 0 and the exponential delay; the cap applies after the jitter
        return wait_random_exponential(multiplier=retry.initial_delay, max=retry.max_delay, exp_base=retry.backoff)
    return wait_exponential(multiplier=retry.initial_delay, max=retry.max_delay, exp_base=retry.backoff)
