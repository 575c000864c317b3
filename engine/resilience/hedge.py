"""Hedging (``hedge_after``): a model of the fallback chain that has not answered in time is joined
by the next one, asked the same; the first answer wins and the other call is cancelled.

Both calls add up in the task's tally (each was an attempt). The model hedged away is
marked, so its breaker counts the cancellation as a timeout: a hanging model under
hedging still opens its breaker, and stops costing the hedge delay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc

from engine.errors import ModelError
from engine.events import TaskFellBack
from engine.model.client import ModelRequest
from engine.resilience.call import Call

Ask = Callable[[ModelRequest, Call], Awaitable[Any]]
Outcome = tuple[Any, ModelError | None, Call]


class HedgeFailed(Exception):  # noqa: N818  (a signal inside the pipeline, never seen outside it)
    """Every model a hedged call asked failed: the last error, and how many models that was."""

    def __init__(self, error: ModelError, asked: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.asked = asked


async def race(ask: Ask, request: ModelRequest, hedge: ModelRequest, call: Call, *,
               more_after: bool) -> tuple[Any, int]:
    """Ask ``request``'s model; if it has not settled after ``call.hedge_after`` seconds, ask ``hedge``'s too.
    Returns the first answer and how many models were asked; HedgeFailed if each one asked failed.
    ``more_after``: the chain has models after ``hedge``'s."""
    settled, receive = anyio.create_memory_object_stream[Outcome](2)
    first = replace(call, fallback=True)  # each asks with its own scratch, into the same tally
    asked = 1
    outcome: Outcome | None = None
    async with anyio.create_task_group() as group:
        async def one(routed: ModelRequest, own: Call) -> None:
            try:
                settled.send_nowait((await ask(routed, own), None, own))
            except ModelError as error:
                settled.send_nowait((None, error, own))

        group.start_soon(one, request, first)
        with anyio.move_on_after(call.hedge_after or 0):
            outcome = await receive.receive()
        if outcome is None:  # no answer yet: the next model is asked as well
            call.run.emit(TaskFellBack, task_id=call.task_id, attempt=call.tally.attempts, from_model=request.model,
                          to_model=hedge.model, error_kind="hedge", error=f"no answer within {call.hedge_after} s")
            group.start_soon(one, hedge, replace(call, fallback=more_after))
            asked = 2
            outcome = await _first_success(receive)
            first.hedged_away = outcome[2] is not first and outcome[1] is None  # its breaker learns it was slow
        group.cancel_scope.cancel()  # the first answer wins
    settled.close()
    receive.close()
    assert outcome is not None
    value, error, _ = outcome
    if error is not None:
        raise HedgeFailed(error, asked)
    return value, asked


async def _first_success(receive: anyio.abc.ObjectReceiveStream[Outcome]) -> Outcome:
    """Of two calls in flight: the first answer, or the second outcome if the first to settle failed."""
    outcome = await receive.receive()
    return await receive.receive() if outcome[1] is not None else outcome
