"""What a run returns: its status and outputs, each task's result, and totals.

Plain dataclasses (built once per task, on the hot path) with a JSON round
trip: ``RunResult.to_dict()`` / ``RunResult.from_dict()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import RunFailedError

TaskStatus = Literal["pending", "succeeded", "failed", "skipped", "cancelled"]
RunStatus = Literal["succeeded", "failed", "cancelled"]


@dataclass(slots=True)
class TaskResult:
    """One node of the plan after the run: a task, a round of one, or an `until` check."""

    task_id: str
    status: TaskStatus = "pending"
    output: Any = None
    model: str | None = None
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    error_kind: str | None = None

    @property
    def latency_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


@dataclass(slots=True)
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    wall_time_s: float = 0.0
    models_used: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RunResult:
    run_id: str
    workflow: str
    status: RunStatus
    outputs: dict[str, Any]
    tasks: dict[str, TaskResult]
    totals: Totals
    started_at: float
    ended_at: float
    error: str | None = None
    failed_task: str | None = None

    def raise_for_status(self) -> RunResult:
        if self.status != "succeeded":
            raise RunFailedError(f"run {self.run_id} of {self.workflow!r} {self.status}: {self.error}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        fields = dict(data)
        fields["tasks"] = {key: TaskResult(**value) for key, value in data["tasks"].items()}
        fields["totals"] = Totals(**data["totals"])
        return cls(**fields)
