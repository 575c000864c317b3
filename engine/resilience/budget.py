"""Cost accounting: the spend stage, and the Budget of one run.

Before an attempt, its most expensive outcome (the prompt's token bound and a
full answer) is reserved against the run's ``limits.max_cost_usd``; after it,
the reservation is settled on the real usage, and the call's tokens and cost
are tallied. Reservations make concurrent tasks see each other's pending
spend, so they cannot together pass the limit. Without a limit nothing is
estimated. (The provider stage tallies every call's tokens and cost.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.errors import BudgetExceededError
from engine.model.client import ModelRequest, ModelResponse
from engine.model.prices import FREE, Price, estimate_usage

if TYPE_CHECKING:
    from engine.resilience.call import Call, Pending


class SpendStage:
    """Reserves an attempt's most expensive outcome before it, settles on its real cost after it."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = prices

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
