"""Pass 6: detect cycles, order nodes topologically, find the critical path."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from engine.compiler.plan import Node, NodeId
from engine.errors import Problem


def topological_order(nodes: Sequence[Node]) -> tuple[list[Node], list[Problem]]:
    """Kahn's algorithm, stable: among ready nodes the one defined first goes first."""
    by_id = {node.id: node for node in nodes}
    position = {node.id: index for index, node in enumerate(nodes)}
    waiting = {node.id: len(node.depends_on) for node in nodes}
    children: dict[NodeId, list[NodeId]] = {node.id: [] for node in nodes}
    for node in nodes:
        for parent in node.depends_on:
            children[parent].append(node.id)
    ready = [(position[node_id], node_id) for node_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[Node] = []
    while ready:
        _, current = heapq.heappop(ready)
        ordered.append(by_id[current])
        for child in children[current]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (position[child], child))
    if len(ordered) == len(nodes):
        return ordered, []
    return ordered, [_cycle_problem(by_id, {n for n, count in waiting.items() if count > 0})]


def _cycle_problem(by_id: dict[NodeId, Node], stuck: set[NodeId]) -> Problem:
    cycle = _find_cycle(by_id, stuck)
    first = by_id[cycle[0]]
    return Problem("cycle", "tasks wait for each other in a cycle: " + _shortened([*cycle, cycle[0]]),
                   first.path, "remove one of these dependencies (`after` lists or references)")


def _shortened(cycle: list[NodeId], shown: int = 8) -> str:
    """A long cycle as its first and last few steps: a 10,000-task cycle is not a 90 KB line."""
    if len(cycle) <= 2 * shown:
        return " -> ".join(cycle)
    return " -> ".join(cycle[:shown]) + f" -> ... ({len(cycle) - 2 * shown} more) -> " + " -> ".join(cycle[-shown:])


def _find_cycle(by_id: dict[NodeId, Node], stuck: set[NodeId]) -> list[NodeId]:
    # Every stuck node waits on at least one stuck node: walk until a node repeats.
    current = min(stuck)
    seen: list[NodeId] = []
    while current not in seen:
        seen.append(current)
        current = min(parent for parent in by_id[current].depends_on if parent in stuck)
    return list(reversed(seen[seen.index(current):]))


def critical_path(ordered: Sequence[Node]) -> tuple[NodeId, ...]:
    """The longest chain of model/function calls (checks weigh nothing)."""
    best: dict[NodeId, tuple[int, NodeId | None]] = {}
    for node in ordered:
        weight = 0 if node.kind == "until" else 1
        parent = max(node.depends_on, key=lambda p: (best[p][0], p), default=None)
        best[node.id] = ((best[parent][0] if parent else 0) + weight, parent)
    if not best:
        return ()
    end: NodeId | None = max(best, key=lambda n: (best[n][0], n))
    path: list[NodeId] = []
    while end is not None:
        path.append(end)
        end = best[end][1]
    return tuple(reversed(path))
