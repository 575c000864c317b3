"""Delivers a run's events to its subscribers without ever slowing the run.

A subscriber has a bounded buffer; when it is full the event is dropped for
that subscriber only and counted, and the subscriber is told with an
EventsDropped event as soon as there is room again. Listeners are plain
callables called in line (``capture_events`` uses one); they must not block.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.events import Event, EventsDropped

Listener = Callable[[Event], None]


class Subscription:
    """One consumer's bounded queue of events."""

    def __init__(self, buffer: int) -> None:
        self._send: MemoryObjectSendStream[Event]
        self.receive: MemoryObjectReceiveStream[Event]
        self._send, self.receive = anyio.create_memory_object_stream[Event](buffer)
        self.dropped = 0
        self.run_id = ""

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        """The next event; after the last, an EventsDropped if the tail was dropped."""
        try:
            return await self.receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if not self.dropped:
                raise StopAsyncIteration from None
            notice = EventsDropped(run_id=self.run_id, time=time.time(), count=self.dropped)
            self.dropped = 0
            return notice

    def offer(self, event: Event) -> None:
        self.run_id = event.run_id
        if self.dropped:
            notice = EventsDropped(run_id=event.run_id, time=time.time(), count=self.dropped)
            if not self._try_send(notice):
                self.dropped += 1
                return
            self.dropped = 0
        if not self._try_send(event):
            self.dropped += 1

    def _try_send(self, event: Event) -> bool:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return True  # the consumer went away: nothing to deliver to
        return True

    def close(self) -> None:
        self._send.close()


class EventBus:
    def __init__(self, listeners: list[Listener] | None = None) -> None:
        self.listeners: list[Listener] = list(listeners or ())
        self.subscriptions: list[Subscription] = []

    @property
    def active(self) -> bool:
        """False when nobody listens: callers skip building events at all."""
        return bool(self.listeners or self.subscriptions)

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)
        for subscription in self.subscriptions:
            subscription.offer(event)

    def subscribe(self, buffer: int) -> Subscription:
        subscription = Subscription(buffer)
        self.subscriptions.append(subscription)
        return subscription
