"""Cost accounting: the spend stage, and the Budget of one run.

Before an attempt, its most expensive outcome (the prompt's token bound and a
full answer) is reserved against the run's ``limits.max_cost_usd``; after it,
the reservation is settled on the real usage, and the call's tokens and cost
are tallied. Reservations make concurrent tasks see each other's pending
spend, so they cannot together pass the limit. Without a limit nothing is
estimated. (The provider stage tallies every call's tokens and cost.)

A full answer is only bounded if the request says how long it may be: under a
limit, a request without ``max_tokens`` is given the most the unreserved budget
can pay (``SpendStage.bound``, at most ``DEFAULT_OUTPUT_ESTIMATE``), so what is
reserved is what the call is allowed to cost. A provider that answers past
``max_tokens`` overruns by that one call, and is settled on what it reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.errors import BudgetExceededError
from engine.model.client import ModelRequest, ModelResponse
from engine.model.prices import DEFAULT_OUTPUT_ESTIMATE, FREE, Price, estimate_usage, prompt_bound

if TYPE_CHECKING:
    from engine.resilience.call import Call, Pending

MIN_ANSWER_TOKENS = 16  # a budget that pays for fewer leaves no useful answer: the call is refused instead


class SpendStage:
    """Reserves an attempt's most expensive outcome before it, settles on its real cost after it."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = prices

    def bound(self, request: ModelRequest, call: Call) -> ModelRequest:
        """The request with the ``max_tokens`` its reservation will pay for: under a limit, a request
        without one may answer as much as the unreserved budget pays, up to ``DEFAULT_OUTPUT_ESTIMATE``
        (a larger bound would let one call reserve what concurrent calls need). Else unchanged."""
        budget = call.run.budget
        if budget.limit is None or request.max_tokens is not None:
            return request
        affordable = self._price(request).output_tokens_for(budget.unreserved, prompt_bound(request))
        if affordable is None:  # its answer costs nothing: there is nothing to bound
            return request
        # Below the minimum, `enter` refuses the call with the budget's own explanation.
        return replace(request, max_tokens=max(min(affordable, DEFAULT_OUTPUT_ESTIMATE), MIN_ANSWER_TOKENS))

    def enter(self, request: ModelRequest, call: Call) -> Pending:
        budget = call.run.budget
        if budget.limit is not None:  # before any wait: nothing is spent if refused
            call.reserved = budget.reserve(self._price(request).cost(estimate_usage(request)), call.task_id)
        return None

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        budget = call.run.budget
        if budget.limit is not None:
            budget.settle(call.reserved, self._price(request).cost(response.usage) if response is not None else 0.0)
        return None

    def _price(self, request: ModelRequest) -> Price:
        return self.prices.get(request.model, FREE)


class Budget:
    """Spend of one run against its limit (None: unlimited)."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    @property
    def unreserved(self) -> float:
        """What is left of the limit for another call (unlimited: infinite)."""
        if self.limit is None:
            return float("inf")
        return max(self.limit - self.spent - self.reserved, 0.0)

    def reserve(self, amount: float, task_id: str) -> float:
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-12:
            raise BudgetExceededError(
                f"the call is estimated at ${amount:.6f}, and ${self.spent:.6f} is spent and "
                f"${self.reserved:.6f} reserved of the run's limit of ${self.limit:.6f}", task_id=task_id)
        self.reserved += amount
        return amount

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual
