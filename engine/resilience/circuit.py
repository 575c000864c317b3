"""The breaker stage: an open circuit breaker refuses the attempt at once (``breaker_open``), so the
fallback chain moves to its next model; every admitted attempt's outcome is recorded.

Breaker state changes are announced as events. With Redis storage the breaker's
I/O blocks, so it runs in a worker thread, and the outcome is recorded even if
the run is being cancelled. A cancelled attempt says nothing about the endpoint
(it only ends a half-open trial), unless it was cancelled because a hedge asked
after it answered first: then it counts as a timeout.
"""

from __future__ import annotations

import anyio
import anyio.to_thread

from engine.errors import ModelError
from engine.events import BreakerStateChanged
from engine.model.client import ModelRequest, ModelResponse
from engine.resilience.breaker import Admission, Breakers, EndpointBreaker
from engine.resilience.call import Call, Pending


class BreakerStage:
    def __init__(self, breakers: Breakers) -> None:
        self.breakers = breakers

    def enter(self, request: ModelRequest, call: Call) -> Pending:
        breaker = self.breakers.get(request.model)
        if self.breakers.blocking:  # pybreaker's Redis storage blocks: keep it off the event loop
            return self._admit_off_loop(breaker, call)
        self._admitted(breaker, breaker.admit(), call)
        return None

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        breaker = self.breakers.get(request.model)
        admission: Admission = call.admission  # type: ignore[assignment]  # set by enter
        if error is not None and isinstance(error, anyio.get_cancelled_exc_class()):
            if not call.hedged_away:
                breaker.release(admission)
                return None
            # Cancelled because a model asked after it answered first: it was too slow, and that counts.
            error = ModelError("timeout", f"{request.model} was slower than its hedge", model=request.model)
        if self.breakers.blocking:
            return self._record_off_loop(breaker, admission, error, call)
        breaker.record(admission, error)
        _announce(breaker, call)
        return None

    async def _admit_off_loop(self, breaker: EndpointBreaker, call: Call) -> None:
        self._admitted(breaker, await anyio.to_thread.run_sync(breaker.admit), call)

    @staticmethod
    def _admitted(breaker: EndpointBreaker, admission: Admission, call: Call) -> None:
        call.admission = admission
        _announce(breaker, call)
        if admission == "reject":
            raise breaker.rejection()

    @staticmethod
    async def _record_off_loop(breaker: EndpointBreaker, admission: Admission, error: BaseException | None,
                               call: Call) -> None:
        with anyio.CancelScope(shield=True):  # recorded even if the run is being cancelled
            await anyio.to_thread.run_sync(breaker.record, admission, error)
        _announce(breaker, call)


def _announce(breaker: EndpointBreaker, call: Call) -> None:
    if not breaker.transitions:  # the common case, without taking the breaker's lock
        return
    for old, new in breaker.drain_transitions():
        call.run.emit(BreakerStateChanged, task_id=call.task_id, model=breaker.name, old_state=old, new_state=new)
        if new == "open":  # wake the calls of this run waiting to retry this model: they fall over now
            opened = call.run.breaker_opened.pop(breaker.name, None)
            if opened is not None:
                opened.set()
