"""Pass 2: resolve every name a template or expression uses to where it comes from.

A name is an input, a task that finishes before (``Sites.sees``), the previous
round's output of a task of the same repeated stage, ``loop`` inside a repeated
stage, or the item of a ``for_each``. Anything else is a problem that says which
of the usual mistakes it is: a typo, a task defined later, a parallel sibling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from engine.compiler.sites import RepeatGroup, Site, Sites, precedes
from engine.dsl.models import Policies, Workflow
from engine.errors import Path, Problem, TemplateError, format_path
from engine.suggest import did_you_mean
from engine.templating.references import expression_references, template_references

SourceKind = Literal["input", "task", "previous", "loop", "item"]


@dataclass(frozen=True, slots=True)
class NameSource:
    kind: SourceKind
    task_id: str | None = None


Bindings = dict[str, NameSource]


@dataclass(frozen=True)
class Scopes:
    tasks: dict[int, Bindings]  # by site order
    untils: dict[str, Bindings]  # by repeat group label
    outputs: dict[str, Bindings]


def resolve_scopes(workflow: Workflow, sites: Sites) -> tuple[Scopes, list[Problem]]:
    resolver = _Resolver(workflow, sites)
    tasks = {site.order: resolver.task_bindings(site) for site in sites.sites}
    untils = {group.label: resolver.until_bindings(group) for group in sites.groups}
    outputs = {name: resolver.output_bindings(name, text) for name, text in workflow.outputs.items()}
    # Inherited templates are checked once per task that inherits them: report each problem once.
    return Scopes(tasks, untils, outputs), list(dict.fromkeys(resolver.problems))


def task_sources(site: Site, defaults: Policies | None = None
                 ) -> Iterator[tuple[Path, str, Literal["template", "expression"]]]:
    """Every template and expression of a task: (field path, source, kind), the system prompt it
    inherits from ``defaults`` included (rendered with the task's own names, so it reads them too)."""
    task = site.task
    for name in ("prompt", "system", "plan"):
        value = getattr(task, name)
        if isinstance(value, str):
            yield (*site.path, name), value, "template"
    inherited = defaults.system if defaults is not None else None
    if task.kind == "prompt" and "system" not in task.model_fields_set and isinstance(inherited, str):
        yield ("defaults", "system"), inherited, "template"
    for key_path, value in _strings(task.with_ or {}, ()):
        yield (*site.path, "with", *key_path), value, "template"
    for name in ("when", "for_each"):
        value = getattr(task, name)
        if isinstance(value, str):
            yield (*site.path, name), value, "expression"
    for index, value in enumerate(task.images or ()):
        yield (*site.path, "images", index), value, "expression"


def _strings(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


class _Resolver:
    def __init__(self, workflow: Workflow, sites: Sites) -> None:
        self.inputs = frozenset(workflow.inputs)
        self.sites = sites
        self.all_names = sorted(self.inputs | set(sites.by_id))
        self.defaults = workflow.defaults
        self.problems: list[Problem] = []

    def task_bindings(self, site: Site) -> Bindings:
        bindings: Bindings = {}
        item_name = site.task.as_ or "item"
        for path, source, kind in task_sources(site, self.defaults):
            names = self._names(path, source, kind)
            own = path[:len(site.path)] == site.path
            for name in names:
                per_item = not own or path[len(site.path)] not in ("for_each", "when")  # those run once, first
                if site.task.for_each is not None and name == item_name and per_item:
                    bindings[name] = NameSource("item")
                    continue
                found = self._resolve(name, site, path)
                if found is not None:
                    bindings[name] = found
        return bindings

    def until_bindings(self, group: RepeatGroup) -> Bindings:
        if group.until is None:
            return {}
        path = (*group.path, "repeat", "until")
        members = {site.task.id for site in self.sites.sites if site.group is group}
        bindings: Bindings = {}
        for name in self._names(path, group.until, "expression"):
            if name == "loop":
                bindings[name] = NameSource("loop")
            elif name in members or (name in self.sites.by_id and precedes(self.sites.by_id[name].trail, group.trail)):
                bindings[name] = NameSource("task", name)
            elif name in self.inputs:
                bindings[name] = NameSource("input")
            else:
                self._unknown(name, path, "the repeated stage")
        return bindings

    def output_bindings(self, name: str, text: str) -> Bindings:
        path = ("outputs", name)
        names = self._names(path, text, "template")
        if not names and path not in {problem.path for problem in self.problems}:
            self.problems.append(Problem("constant-output", "the output refers to no input or task", path,
                                         "outputs are templates such as `{{ summary }}`"))
        bindings: Bindings = {}
        for used in names:
            if used in self.inputs:
                bindings[used] = NameSource("input")
            elif used in self.sites.by_id:
                bindings[used] = NameSource("task", used)
            else:
                self._unknown(used, path, "the workflow")
        return bindings

    def _names(self, path: Path, source: str, kind: str) -> list[str]:
        try:
            found = template_references(source) if kind == "template" else expression_references(source)
        except TemplateError as exc:
            self.problems.append(Problem("template-syntax", str(exc), path))
            return []
        return sorted({reference.name for reference in found})

    def _resolve(self, name: str, site: Site, path: Path) -> NameSource | None:
        if self.sites.sees(site, name):
            return NameSource("task", name)
        if name in self.inputs:
            return NameSource("input")
        producer = self.sites.by_id.get(name)
        if site.group is not None:
            if name == "loop":
                return NameSource("loop")
            if producer is not None and producer.group is site.group:
                return NameSource("previous", name)  # the previous round's output; null in round 1
        if producer is None:
            self._unknown(name, path, "the workflow")
        elif producer is site:
            self.problems.append(Problem("self-reference", f"task {name!r} refers to its own output", path,
                                         "only a task in a repeated stage can read its previous round"))
        elif precedes(site.trail, producer.trail):
            self.problems.append(Problem(
                "not-yet-produced", f"{name!r} is produced later (at {_where(producer)}), not before this task",
                path, "move the task after it, in a later stage or later in an inline stage"))
        else:
            self.problems.append(Problem(
                "parallel-reference", f"{name!r} is produced by a task that runs in parallel with this one "
                f"(at {_where(producer)})", path,
                "put the two tasks in an inline stage, or the producer in an earlier stage"))
        return None

    def _unknown(self, name: str, path: Path, scope: str) -> None:
        hint = did_you_mean(name, self.all_names) or "declare it under `inputs:` or add a task with that id"
        if name == "loop":
            hint = "`loop` exists only inside a stage with `repeat`"
        self.problems.append(Problem("unknown-name", f"unknown name {name!r}: no input or task of {scope} has it",
                                     path, hint))


def _where(site: Site) -> str:
    return format_path(site.path)
