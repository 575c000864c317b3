"""Pass 5: names the workflow uses that the engine must know: models, addons,
templates and functions, checked against a Catalog."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path as FilePath

from engine.catalog import Catalog
from engine.compiler.sites import Site
from engine.dsl.models import Policies, Workflow
from engine.errors import Path, Problem


def check_catalog(workflow: Workflow, sites: Iterable[Site], catalog: Catalog) -> list[Problem]:
    problems = _check_defaults(workflow, catalog)
    for site in sites:
        problems += _check_task(site, workflow, catalog)
    return problems


def _check_defaults(workflow: Workflow, catalog: Catalog) -> list[Problem]:
    defaults = workflow.defaults
    problems = _check_models(defaults.model, ("defaults", "model"), catalog)
    for index, name in enumerate(defaults.addons or ()):
        problems += _check_name("addon", name, ("defaults", "addons", index), catalog.addons)
    return problems


def _check_task(site: Site, workflow: Workflow, catalog: Catalog) -> list[Problem]:
    task, path = site.task, site.path
    problems = _check_models(task.model, (*path, "model"), catalog)
    for index, name in enumerate(task.addons or ()):
        problems += _check_name("addon", name, (*path, "addons", index), catalog.addons)
    if task.kind == "prompt" and not _has_model(task, workflow.defaults):
        problems.append(Problem("no-model", f"task {task.id!r} has no model", (*path, "model"),
                                "set `model:` on the task or under `defaults:`"))
    if task.call is not None:
        problems += _check_name("function", task.call, (*path, "call"), catalog.functions,
                                "register it with the engine (Engine(functions=...))")
    if task.workflow is not None and not _is_path(task.workflow):
        problems += _check_name("template", task.workflow, (*path, "workflow"), catalog.templates)
    elif task.workflow is not None:
        problems += _check_workflow_file(task.workflow, (*path, "workflow"), workflow)
    return problems


def _has_model(task: Policies, defaults: Policies) -> bool:
    level = next((level for level in (task, defaults) if "model" in level.model_fields_set), None)
    return level is not None and bool(level.model)


def _check_models(model: str | list[str] | None, path: Path, catalog: Catalog) -> list[Problem]:
    chain = [model] if isinstance(model, str) else list(model or ())
    problems: list[Problem] = []
    for index, alias in enumerate(chain):
        where = path if isinstance(model, str) else (*path, index)
        problems += _check_name("model", alias, where, catalog.models,
                                "use a configured alias (`orchestrion models` lists them)")
    return problems


def _check_name(kind: str, name: str, path: Path, known: Iterable[str], fix: str | None = None) -> list[Problem]:
    known = sorted(known)
    if name in known:
        return []
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else fix
    if hint is None:
        hint = f"known {kind}s: {', '.join(known[:12])}{'...' if len(known) > 12 else ''}" if known else None
    return [Problem(f"unknown-{kind}", f"unknown {kind} {name!r}", path, hint)]


def _is_path(reference: str) -> bool:
    return "/" in reference or reference.endswith((".yaml", ".yml", ".json"))


def _check_workflow_file(reference: str, path: Path, workflow: Workflow) -> list[Problem]:
    origin = workflow.origin
    base = origin.file.parent if origin is not None and origin.file is not None else FilePath.cwd()
    if (base / reference).is_file():
        return []
    return [Problem("unknown-workflow-file", f"no workflow file at {reference!r} (relative to {base})", path)]
