"""Pass 1: flatten nested stages into task sites, with what each can see.

A site is one task where it stands. Its ``visible`` names are the tasks that
finish before it by the structure alone (earlier top-level stages, earlier
items of an inline stage); parallel siblings never see each other. Its
``predecessors`` are the tasks an inline stage runs just before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.dsl.models import RESERVED_NAMES, Stage, Task, Workflow
from engine.errors import Path, Problem
from engine.errors import format_path as _label


@dataclass(frozen=True, slots=True)
class RepeatGroup:
    """A stage with ``repeat``: its rounds are unrolled later."""

    label: str
    path: Path
    max_rounds: int
    until: str | None
    visible: frozenset[str]  # names produced before the stage


@dataclass(frozen=True, slots=True)
class Site:
    task: Task
    path: Path
    order: int  # position in reading order
    stage: int  # index of the top-level stage
    visible: frozenset[str]
    predecessors: frozenset[str]
    group: RepeatGroup | None


@dataclass(frozen=True)
class Sites:
    sites: tuple[Site, ...]
    groups: tuple[RepeatGroup, ...]
    by_id: dict[str, Site]


def collect_sites(workflow: Workflow) -> tuple[Sites, list[Problem]]:
    walker = _Walker(workflow)
    visible: frozenset[str] = frozenset()
    for index, stage in enumerate(workflow.stages):
        walker.stage = index
        produced, _ = walker.walk_stage(stage, ("stages", index), visible, frozenset(), None)
        visible |= produced
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
        self, stage: Stage, path: Path, visible: frozenset[str], entry: frozenset[str],
        group: RepeatGroup | None,
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Returns the names the stage produces and the tasks it ends with."""
        if stage.repeat is not None:
            if group is not None:
                self.problems.append(Problem(
                    "nested-repeat", f"a repeated stage is already inside the repeated stage at {group.label}",
                    (*path, "repeat"), "move the inner `repeat` out, or merge the two loops"))
            else:
                label = stage.name if stage.name and stage.name not in self.labels else _label(path)
                self.labels.add(label)
                group = RepeatGroup(label, path, stage.repeat.max_rounds, stage.repeat.until, visible)
                self.groups.append(group)
        items = [(item, (*path, "tasks", index)) for index, item in enumerate(stage.tasks)]
        if stage.type == "inline":
            return self._walk_inline(items, visible, entry, group)
        return self._walk_linear(items, visible, entry, group)

    def _walk_inline(
        self, items: Sequence[tuple[Task | Stage, Path]], visible: frozenset[str], entry: frozenset[str],
        group: RepeatGroup | None,
    ) -> tuple[frozenset[str], frozenset[str]]:
        produced: frozenset[str] = frozenset()
        predecessors = entry
        for item, path in items:
            made, predecessors = self._walk_item(item, path, visible | produced, predecessors, group)
            produced |= made
        return produced, predecessors

    def _walk_linear(
        self, items: Sequence[tuple[Task | Stage, Path]], visible: frozenset[str], entry: frozenset[str],
        group: RepeatGroup | None,
    ) -> tuple[frozenset[str], frozenset[str]]:
        produced: frozenset[str] = frozenset()
        exits: frozenset[str] = frozenset()
        for item, path in items:
            made, ends = self._walk_item(item, path, visible, entry, group)
            produced, exits = produced | made, exits | ends
        return produced, exits

    def _walk_item(
        self, item: Task | Stage, path: Path, visible: frozenset[str], entry: frozenset[str],
        group: RepeatGroup | None,
    ) -> tuple[frozenset[str], frozenset[str]]:
        if isinstance(item, Stage):
            return self.walk_stage(item, path, visible, entry, group)
        if not self._check_id(item, path):
            return frozenset(), entry
        self.sites.append(Site(item, path, len(self.sites), self.stage, visible, entry, group))
        return frozenset({item.id}), frozenset({item.id})

    def _check_id(self, task: Task, path: Path) -> bool:
        """False for a duplicate: it is reported and left out of the later passes."""
        where = (*path, "id")
        if task.id in RESERVED_NAMES:
            self.problems.append(Problem("reserved-id", f"{task.id!r} is a reserved name", where,
                                         "choose another id"))
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

