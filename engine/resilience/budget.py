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

Under a cost cap across runs (``budget:``, ``cap.py``), each attempt is also
reserved against the cap (after the run's own limit: a refusal there holds
nothing in the cap), and settled on the same cost; a request without
``max_tokens`` is given ``DEFAULT_OUTPUT_ESTIMATE`` (or less, by the run's own
limit), so what the cap reserves is what the call may cost.
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
    from engine.resilience.cap import CostCap

MIN_ANSWER_TOKENS = 16  # a budget that pays for fewer leaves no useful answer: the call is refused instead


class SpendStage:
    """Reserves an attempt's most expensive outcome before it, settles on its real cost after it."""

    def __init__(self, prices: Mapping[str, Price], cap: CostCap | None = None) -> None:
        self.prices = prices
        self.cap = cap  # the cost cap across runs, if any

    def bound(self, request: ModelRequest, call: Call) -> ModelRequest:
        """The request with the ``max_tokens`` its reservation will pay for: under a limit, a request
        without one may answer as much as the unreserved budget pays, up to ``DEFAULT_OUTPUT_ESTIMATE``
        (a larger bound would let one call reserve what concurrent calls need). Else unchanged."""
        budget = call.run.budget
        if request.max_tokens is not None:
            return request
        if budget.limit is None:
            return request if self.cap is None else replace(request, max_tokens=DEFAULT_OUTPUT_ESTIMATE)
        affordable = self._price(request).output_tokens_for(budget.unreserved, prompt_bound(request))
        if affordable is None:  # its answer costs nothing: there is nothing to bound
            return request
        # Below the minimum, `enter` refuses the call with the budget's own explanation.
        return replace(request, max_tokens=max(min(affordable, DEFAULT_OUTPUT_ESTIMATE), MIN_ANSWER_TOKENS))

    def enter(self, request: ModelRequest, call: Call) -> Pending:
        budget, cap = call.run.budget, self.cap
        if budget.limit is None and cap is None:
            return None
        amount = self._price(request).cost(estimate_usage(request))
        if budget.limit is not None:  # before any wait: nothing is spent if refused
            call.reserved = budget.reserve(amount, call.task_id)
        if cap is not None and amount > 0:  # a call that costs nothing cannot pass the cap
            return self._reserve_in_cap(cap, amount, call)
        return None

    @staticmethod
    async def _reserve_in_cap(cap: CostCap, amount: float, call: Call) -> None:
        try:
            call.cap_reservation = await cap.reserve(amount, call.task_id)
        except BaseException:
            call.run.budget.settle(call.reserved, 0.0)  # the stage's exit will not run: release the run's hold
            call.reserved = 0.0
            raise

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        budget, reservation = call.run.budget, call.cap_reservation
        if budget.limit is None and reservation is None:
            return None
        cost = self._price(request).cost(response.usage) if response is not None else 0.0
        if budget.limit is not None:
            budget.settle(call.reserved, cost)
        if reservation is not None and self.cap is not None:
            call.cap_reservation = None
            return self.cap.settle(reservation, cost)
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
