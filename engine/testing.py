"""Test doubles for Orchestrion's users and its own tests.

- ``FakeModel``: a scriptable, deterministic ModelClient (the ``fake`` provider
  kind): scripted answers, errors and latency per alias, else an echo.
- ``capture_events(engine)``: collects every event the engine emits.

Production code never imports this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from engine.events import Event
from engine.providers.fake import FakeModel, example_for_schema

if TYPE_CHECKING:
    from engine.core import Engine

__all__ = ["FakeModel", "capture_events", "example_for_schema"]


@contextmanager
def capture_events(engine: Engine) -> Iterator[list[Event]]:
    """Every event the engine emits inside the ``with`` block, in order."""
    events: list[Event] = []
    engine.add_listener(events.append)
    try:
        yield events
    finally:
        engine.remove_listener(events.append)
