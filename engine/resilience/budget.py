"""Cost accounting of one run: estimate before a call, reserve, settle on the real usage.

Reservations make concurrent tasks see each other's pending spend, so they
cannot together pass ``limits.max_cost_usd``.
"""

from __future__ import annotations

from engine.errors import BudgetExceededError


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
