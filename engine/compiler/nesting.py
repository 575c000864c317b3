"""Pass 7: `workflow:` tasks that lead back to a workflow already on the way down.

A workflow that runs itself, directly or through others, nests runs until
``limits.max_depth`` (or, inside ``for_each``, ``limits.max_tasks``) stops it
at run time; where the files are known the cycle is reported here instead, at
the task that enters it. References are resolved as the runtime resolves them
(``Catalog.workflow_file``: relative to the referring file, or a template's
name); one that names no file is skipped (the catalog check reports it). The
walk reads each file once and at most ``MAX_FILES`` of them, so checking a
huge tree of workflows stays quick; past that, the runtime bounds still hold.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path as FilePath

from engine.catalog import Catalog
from engine.compiler.sites import Site
from engine.dsl.models import Stage, Task, Workflow
from engine.errors import ConfigError, OrchestrionError, Problem

MAX_FILES = 256  # workflow files one check reads at most

Chain = tuple[FilePath, ...]  # resolved files, from the checked workflow down


def check_nesting(workflow: Workflow, sites: Iterable[Site], catalog: Catalog) -> list[Problem]:
    """A problem at each `workflow:` task from which the files lead round in a cycle."""
    origin = workflow.origin
    named = origin.file if origin is not None else None
    walk = _Walk(catalog, named)
    root = walk.root
    problems = []
    for site in sites:
        reference = site.task.workflow
        if reference is None:
            continue
        target = walk.resolve(reference, named.parent if named is not None else None)
        cycle = walk.cycle_from(target) if target is not None else None
        if cycle is not None:
            problems.append(_problem(cycle, site, root))
    return problems


def _problem(cycle: Chain, site: Site, root: FilePath | None) -> Problem:
    here = root.parent if root is not None else FilePath.cwd()
    names = [os.path.relpath(file, here) for file in cycle]
    what = f"the workflow {names[0]} runs itself" if len(names) == 2 else "workflows run each other in a cycle"
    return Problem("recursive-workflow", f"{what}: {' → '.join(names)}", (*site.path, "workflow"),
                   "a run would nest runs without end, until `limits.max_depth` or `limits.max_tasks` stops "
                   "it; break the cycle, or use a stage's `repeat:` for a bounded loop")


class _Walk:
    """Depth-first through the files `workflow:` tasks name, each file read once. Files are
    compared resolved (``a.yaml``, ``./sub/../a.yaml`` and a link to it are one file); each is
    read, and its references followed, from the path it was first named by, as a run would."""

    def __init__(self, catalog: Catalog, root: FilePath | None) -> None:
        self.catalog = catalog
        self.named: dict[FilePath, FilePath] = {}  # resolved file -> the path it was first named by
        self.root = self._resolved(root) if root is not None else None
        self.known: dict[FilePath, Chain | None] = {}  # file -> a cycle found below it, or None
        self.reads = 0

    def resolve(self, reference: str, base: FilePath | None) -> FilePath | None:
        """The file ``reference`` names, resolved, or None if it names none."""
        try:
            file = self.catalog.workflow_file(reference, base)
        except ConfigError:
            return None
        return self._resolved(file) if file.is_file() else None

    def _resolved(self, file: FilePath) -> FilePath:
        resolved = file.resolve()
        self.named.setdefault(resolved, file)
        return resolved

    def cycle_from(self, file: FilePath) -> Chain | None:
        """The first cycle reachable from ``file`` (the checked workflow is on the way: it comes
        first), as the files from where the way enters it round to the same file again."""
        way: Chain = (self.root, file) if self.root is not None else (file,)
        return self._search(way)

    def _search(self, way: Chain) -> Chain | None:
        file = way[-1]
        if file in way[:-1]:
            return way[way.index(file):]
        if file in self.known:
            return self.known[file]
        cycle = None
        for child in self._children(file):
            cycle = self._search((*way, child))
            if cycle is not None:
                break
        self.known[file] = cycle
        return cycle

    def _children(self, file: FilePath) -> Iterator[FilePath]:
        """The files the workflow in ``file`` names in its `workflow:` tasks; none past ``MAX_FILES``."""
        self.reads += 1
        if self.reads > MAX_FILES:
            return
        try:
            workflow = self.catalog.load_workflow(str(file))  # absolute: read as a path, never a name
        except (OrchestrionError, OSError):
            return  # an unreadable file is the catalog check's to report
        for task in _tasks(workflow):
            if task.workflow is not None:
                child = self.resolve(task.workflow, self.named[file].parent)
                if child is not None:
                    yield child


def _tasks(workflow: Workflow) -> Iterator[Task]:
    """Every task, nested stages included, in reading order (a stack: nesting depth costs no recursion)."""
    stack: list[Task | Stage] = [*reversed(workflow.stages)]
    while stack:
        item = stack.pop()
        if isinstance(item, Stage):
            stack.extend(reversed(item.tasks))
        else:
            yield item
