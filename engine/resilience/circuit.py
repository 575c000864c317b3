"""The breaker stage: an open circuit breaker refuses the call at once (``breaker_open``), so the
fallback chain moves to its next model; every admitted attempt's outcome is recorded.

Breaker state changes are announced as events. With Redis storage the breaker's
I/O blocks, so it runs in a worker thread, and the outcome is recorded even if
the run is being cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from engine.events import BreakerStateChanged
from engine.model.client import ModelRequest, ModelResponse
from engine.resilience.breaker import Admission, Breakers, EndpointBreaker
from engine.resilience.call import Call, Handler


class BreakerStage:
    def __init__(self, inner: Handler, breakers: Breakers) -> None:
        self.inner = inner
        self.breakers = breakers

    async def __call__(self, request: ModelRequest, call: Call) -> ModelResponse:
        breaker = self.breakers.get(request.model)
        admission: Admission = await self._io(breaker.admit)
        _announce(breaker, call)
        if admission == "reject":
            raise breaker.rejection()
        try:
            response = await self.inner(request, call)
        except anyio.get_cancelled_exc_class():
            breaker.release(admission)  # a cancelled call says nothing about the endpoint
            raise
        except BaseException as error:
            await self._record(breaker, admission, error, call)
            raise
        await self._record(breaker, admission, None, call)
        return response

    async def _record(self, breaker: EndpointBreaker, admission: Admission, error: BaseException | None,
                      call: Call) -> None:
        if self.breakers.blocking:
            with anyio.CancelScope(shield=True):  # recorded even if the run is being cancelled
                await anyio.to_thread.run_sync(breaker.record, admission, error)
        else:
            breaker.record(admission, error)
        _announce(breaker, call)

    async def _io(self, function: Callable[[], Any]) -> Any:
        if self.breakers.blocking:  # pybreaker's Redis storage blocks: keep it off the event loop
            return await anyio.to_thread.run_sync(function)
        return function()


def _announce(breaker: EndpointBreaker, call: Call) -> None:
    for old, new in breaker.drain_transitions():
        call.run.emit(BreakerStateChanged, task_id=call.task_id, model=breaker.name, old_state=old, new_state=new)
