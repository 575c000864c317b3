"""The typed event stream of a run: one schema, JSON-serialisable both ways.

Every event carries ``run_id`` and ``time`` (Unix seconds); task events carry
``task_id`` (the node id: ``draft@2`` for a round of a repeated stage) and
``attempt``. ``Event.to_dict()`` / ``event_from_dict()`` round-trip through JSON.

Events are emitted through an ``Emitter``, which stamps the run id and the
time and builds nothing when nobody listens; its signature is the event's
own, so the type checker checks every emit site.
"""

from __future__ import annotations

import dataclasses
import time as clock
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Concatenate, ParamSpec

from engine.secrets import NO_SECRETS, Scrubber

P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str] = "event"
    run_id: str
    time: float
    _: KW_ONLY
    task_id: str | None = None
    attempt: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {"type": self.type, **data}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    workflow: str
    inputs: dict[str, Any]
    nodes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    status: str
    error: str | None
    wall_time_s: float
    cost_usd: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted(Event):
    type: ClassVar[str] = "task_started"
    model: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSkipped(Event):
    type: ClassVar[str] = "task_skipped"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRetrying(Event):
    type: ClassVar[str] = "task_retrying"
    model: str | None
    error_kind: str
    error: str
    delay_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFellBack(Event):
    type: ClassVar[str] = "task_fell_back"
    from_model: str
    to_model: str
    error_kind: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFinished(Event):
    type: ClassVar[str] = "task_finished"
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(Event):
    type: ClassVar[str] = "task_failed"
    error_kind: str
    error: str
    critical: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenDelta(Event):
    type: ClassVar[str] = "token_delta"
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCalled(Event):
    """One model call ended (each attempt is one): ``model`` is the alias asked, ``provider_model`` the name the
    provider answered with; ``outcome`` is "ok", "cancelled" or the error's kind. Emitted only when somebody
    listens; a cache hit is a ``CacheHit``, not a call."""

    type: ClassVar[str] = "model_called"
    model: str
    provider_model: str | None
    outcome: str
    started_at: float  # Unix seconds the call was sent; ``time`` is when it ended
    latency_s: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    finish_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class GateApplied(Event):
    type: ClassVar[str] = "gate_applied"
    model: str
    tokens: int
    action: str  # "allow", "switch", "deny"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheHit(Event):
    """A model call answered from the response cache: no call made, nothing spent; ``saved_cost_usd`` is
    what the kept answer cost when it was asked (with its repairs, for structured output)."""

    type: ClassVar[str] = "cache_hit"
    model: str
    saved_cost_usd: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStateChanged(Event):
    type: ClassVar[str] = "breaker_state_changed"
    model: str
    old_state: str
    new_state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCreated(Event):
    """A ``plan:`` task's planner wrote a workflow; it runs next, as a nested run."""

    type: ClassVar[str] = "plan_created"
    workflow: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaSaved(Event):
    """A file a ``generate:`` task's model made, written under the run's artefact folder."""

    type: ClassVar[str] = "media_saved"
    model: str
    path: str
    media_type: str
    bytes: int
    cost_usd: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsDropped(Event):
    """Told to a subscriber that fell behind: ``count`` events were not delivered to it."""

    type: ClassVar[str] = "events_dropped"
    count: int


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (RunStarted, RunFinished, TaskStarted, TaskSkipped, TaskRetrying, TaskFellBack,
                              TaskFinished, TaskFailed, TokenDelta, ModelCalled, GateApplied, CacheHit,
                              BreakerStateChanged, PlanCreated, MediaSaved, EventsDropped)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """The inverse of ``Event.to_dict``."""
    fields = dict(data)
    cls = EVENT_TYPES[fields.pop("type")]
    return cls(**fields)


Sink = Callable[[Event], None]


class Emitter:
    """Sends one run's events to a sink, stamped with the run id and the time, secrets scrubbed."""

    __slots__ = ("run_id", "scrub", "sink")

    def __init__(self, run_id: str, sink: Sink | None, scrub: Scrubber = NO_SECRETS) -> None:
        self.run_id = run_id
        self.sink = sink  # None: nobody listens, and no event is built
        self.scrub = scrub

    @property
    def active(self) -> bool:
        return self.sink is not None

    def __call__(self, factory: Callable[Concatenate[str, float, P], Event], *args: P.args, **kwargs: P.kwargs) -> None:
        if self.sink is not None:
            if self.scrub:
                kwargs = self.scrub.value(kwargs)
            self.sink(factory(self.run_id, clock.time(), *args, **kwargs))


SILENT = Emitter("", None)
