"""Stats of model calls, per model and per workflow: what the seeds' analytics showed, exact.

Computed from the store's attempt rows (one per model call), so a retry, a
fallback and a cache hit each count where they happened.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.store.records import AttemptRecord


@dataclass
class CallStats:
    """The calls of one model, or of one workflow."""

    calls: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # by error kind
    retries: int = 0  # calls that were not a task's first attempt
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None


@dataclass
class Stats:
    since: float
    by_model: dict[str, CallStats]
    by_workflow: dict[str, CallStats]
    total: CallStats

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(attempts: Iterable[AttemptRecord], since: float) -> Stats:
    by_model: dict[str, list[AttemptRecord]] = defaultdict(list)
    by_workflow: dict[str, list[AttemptRecord]] = defaultdict(list)
    every = []
    for attempt in attempts:
        by_model[attempt.model].append(attempt)
        by_workflow[attempt.workflow].append(attempt)
        every.append(attempt)
    return Stats(since, {name: _stats(group) for name, group in sorted(by_model.items())},
                 {name: _stats(group) for name, group in sorted(by_workflow.items())}, _stats(every))


def _stats(attempts: Sequence[AttemptRecord]) -> CallStats:
    latencies = sorted(attempt.latency_s for attempt in attempts if attempt.outcome == "ok" and not attempt.cached)
    return CallStats(
        calls=len(attempts),
        failures=dict(Counter(attempt.outcome for attempt in attempts if attempt.outcome != "ok")),
        retries=sum(attempt.attempt > 1 for attempt in attempts),
        cached=sum(attempt.cached for attempt in attempts),
        input_tokens=sum(attempt.input_tokens for attempt in attempts),
        output_tokens=sum(attempt.output_tokens for attempt in attempts),
        cost_usd=sum(attempt.cost_usd for attempt in attempts),
        latency_p50_s=percentile(latencies, 50), latency_p95_s=percentile(latencies, 95),
        latency_p99_s=percentile(latencies, 99),
    )


def percentile(ordered: Sequence[float], percent: float) -> float | None:
    """The nearest-rank percentile of sorted values (None for none): a latency that was observed."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * percent // 100))  # ceil(n * p / 100), at least the first
    return ordered[int(rank) - 1]
