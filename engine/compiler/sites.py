"""Pass 1: flatten nested stages into task sites, with where each stands.

A site is one task where it stands. Its ``trail`` is the way down to it:
for each enclosing stage, whether that stage runs its items in order and the
index of the item that leads to the task. A task finishes before another by
the structure alone (``precedes``) when, where their trails part, the stage is
sequential and the first comes earlier; parallel siblings never precede each
other. Its ``predecessors`` are the tasks an inline stage runs just before it.
Trails keep this linear in the number of tasks (sets of visible names per
task would be quadratic: 3.6 s for 10,000 parallel tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.dsl.models import Stage, Task, Workflow, why_reserved
from engine.errors import Path, Problem, format_path as _label


@dataclass(frozen=True, slots=True)
class RepeatGroup:
    """A stage with ``repeat``: its rounds are unrolled later."""

    label: str
    path: Path
    max_rounds: int
    until: str | None
    trail: Trail  # of the stage itself


@dataclass(frozen=True, slots=True)
class Site:
    task: Task
    path: Path
    order: int  # position in reading order
    stage: int  # index of the top-level stage
    trail: Trail
    predecessors: frozenset[str]
    group: RepeatGroup | None


# (does the stage run its items in order?, index of the item) for each enclosing stage
Trail = tuple[tuple[bool, int], ...]


def precedes(first: Trail, second: Trail) -> bool:
    """Whether what stands at ``first`` finishes before ``second`` starts, by the structure alone."""
    for (sequential, index), (_, other) in zip(first, second, strict=False):
        if index != other:
            return sequential and index < other
    return False  # the same place, or one inside the other


@dataclass(frozen=True)
class Sites:
    sites: tuple[Site, ...]
    groups: tuple[RepeatGroup, ...]
    by_id: dict[str, Site]

    def sees(self, site: Site, name: str) -> bool:
        """Whether task ``name`` has finished, by the structure, when ``site`` starts."""
        producer = self.by_id.get(name)
        return producer is not None and precedes(producer.trail, site.trail)


def collect_sites(workflow: Workflow) -> tuple[Sites, list[Problem]]:
    walker = _Walker(workflow)
    for index, stage in enumerate(workflow.stages):
        walker.stage = index
        walker.walk_stage(stage, ("stages", index), ((True, index),), frozenset(), None)
    by_id: dict[str, Site] = {}
    for site in walker.sites:
        by_id.setdefault(site.task.id, site)
    return Sites(tuple(walker.sites), tuple(walker.groups), by_id), walker.problems


class _Walker:
    def __init__(self, workflow: Workflow) -> None:
        self.inputs = set(workflow.inputs)
        self.sites: list[Site] = []
        self.groups: list[RepeatGroup] = []
        self.problems: list[Problem] = []
        self.first_seen: dict[str, Path] = {}
        self.labels: set[str] = set()  # of repeated stages: they name the `until` nodes
        self.stage = 0

    def walk_stage(
        self, stage: Stage, path: Path, trail: Trail, entry: frozenset[str], group: RepeatGroup | None,
    ) -> frozenset[str]:
        """Returns the tasks the stage ends with."""
        if stage.repeat is not None:
            if group is not None:
                self.problems.append(Problem(
                    "nested-repeat", f"a repeated stage is already inside the repeated stage at {group.label}",
                    (*path, "repeat"), "move the inner `repeat` out, or merge the two loops"))
            else:
                label = stage.name if stage.name and stage.name not in self.labels else _label(path)
                self.labels.add(label)
                group = RepeatGroup(label, path, stage.repeat.max_rounds, stage.repeat.until, trail)
                self.groups.append(group)
        sequential = stage.type == "inline"
        predecessors = entry
        exits: set[str] = set()
        for index, item in enumerate(stage.tasks):
            where, item_trail = (*path, "tasks", index), (*trail, (sequential, index))
            if sequential:
                predecessors = self._walk_item(item, where, item_trail, predecessors, group)
            else:
                exits |= self._walk_item(item, where, item_trail, entry, group)
        return predecessors if sequential else frozenset(exits)

    def _walk_item(
        self, item: Task | Stage, path: Path, trail: Trail, entry: frozenset[str], group: RepeatGroup | None,
    ) -> frozenset[str]:
        if isinstance(item, Stage):
            return self.walk_stage(item, path, trail, entry, group)
        if not self._check_id(item, path):
            return entry
        self._check_item_name(item, path)
        self.sites.append(Site(item, path, len(self.sites), self.stage, trail, entry, group))
        return frozenset({item.id})

    def _check_id(self, task: Task, path: Path) -> bool:
        """False for a duplicate: it is reported and left out of the later passes."""
        where = (*path, "id")
        reserved = why_reserved(task.id)
        if reserved is not None:
            self.problems.append(Problem("reserved-id", reserved, where, "choose another id"))
        elif task.id in self.inputs:
            self.problems.append(Problem("duplicate-id", f"id {task.id!r} is also the name of an input",
                                         where, "rename the task or the input"))
        elif task.id in self.first_seen:
            first = _label(self.first_seen[task.id])
            self.problems.append(Problem("duplicate-id", f"duplicate id {task.id!r} (first used at {first})",
                                         where, "give each task a unique id"))
            return False
        else:
            self.first_seen[task.id] = path
        return True

    def _check_item_name(self, task: Task, path: Path) -> None:
        if task.as_ is None or task.as_ == "item":  # `item` is the default: naming it is fine
            return
        reserved = why_reserved(task.as_)
        if reserved is not None:
            self.problems.append(Problem("reserved-name", reserved, (*path, "as"), "choose another name for the item"))
