"""Pass 5: names the workflow uses that the engine must know: models, addons,
templates and functions, checked against a Catalog."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path as FilePath

from engine.catalog import Catalog, is_workflow_path
from engine.compiler.sites import Site
from engine.dsl.models import Policies, Task, Workflow
from engine.errors import Path, Problem, WorkflowError
from engine.suggest import did_you_mean


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
    if task.kind in ("prompt", "generate") and not _has_model(task, workflow.defaults):
        problems.append(Problem("no-model", f"task {task.id!r} has no model", (*path, "model"),
                                "set `model:` on the task or under `defaults:`"))
    if catalog.check_abilities and (task.images or task.generate is not None):
        problems += _check_abilities(task, path, workflow.defaults, catalog)
    if task.call is not None:
        problems += _check_name("function", task.call, (*path, "call"), catalog.functions,
                                "register it with the engine; for `orchestrion validate`, pass `--function NAME`")
    if task.workflow is not None:
        problems += _check_sub_workflow(task, path, workflow, catalog)
    return problems


def _check_sub_workflow(task: Task, path: Path, workflow: Workflow, catalog: Catalog) -> list[Problem]:
    """The workflow exists, loads, and `with:` gives exactly the inputs it declares."""
    reference = str(task.workflow)
    origin = workflow.origin
    base = origin.file.parent if origin is not None and origin.file is not None else None
    if not is_workflow_path(reference) and reference not in catalog.templates:
        return _check_name("template", reference, (*path, "workflow"), catalog.templates)
    file = catalog.workflow_file(reference, base)
    if not catalog.has_workflow(reference, base):
        return [Problem("unknown-workflow-file", f"no workflow file at {reference!r} (relative to "
                        f"{base if base is not None else FilePath.cwd()})", (*path, "workflow"))]
    try:
        inputs = catalog.load_workflow(reference, base).inputs
    except WorkflowError as exc:
        return [Problem("invalid-workflow", f"the workflow {reference!r} has {len(exc.problems)} problem(s)",
                        (*path, "workflow"), f"run `orchestrion validate {file}`")]
    given = task.with_ or {}
    problems = [Problem("unknown-input", f"the workflow {reference!r} has no input {key!r}", (*path, "with", key),
                        did_you_mean(key, inputs) or f"its inputs: {', '.join(inputs) or 'none'}")
                for key in given if key not in inputs]
    missing = [name for name, schema in inputs.items() if "default" not in schema and name not in given]
    if missing:
        problems.append(Problem("missing-input", f"the workflow {reference!r} needs the input(s) {', '.join(missing)}",
                                (*path, "with"), "give them under `with:`"))
    return problems


EMBEDDED_TEXT_ONLY = "the embedded Gemma 3 270M model reads and writes text only"


def _check_abilities(task: Task, path: Path, defaults: Policies, catalog: Catalog) -> list[Problem]:
    """Each model of the task's chain can read its images, or make what it asks for."""
    level = task if "model" in task.model_fields_set else defaults
    chain = [level.model] if isinstance(level.model, str) else list(level.model or ())
    where = (*path, "model") if level is task else ("defaults", "model")
    problems = []
    for alias in chain:
        if alias not in catalog.models:
            continue  # reported as unknown
        if task.images and alias not in catalog.vision:
            problems.append(Problem(
                "no-vision", f"task {task.id!r} sends images to {alias!r}, which does not read images", where,
                f"give `vision: true` to a model alias that reads images, in the configuration, and use it here "
                f"({EMBEDDED_TEXT_ONLY}); aliases that do: {', '.join(sorted(catalog.vision)) or 'none'}"))
        media = task.generate
        if media is not None and alias not in catalog.generators.get(media, frozenset()):
            makers = sorted(catalog.generators.get(media, frozenset()))
            problems.append(Problem(
                "cannot-generate", f"task {task.id!r} asks {alias!r} for {'an ' if media == 'image' else 'a '}"
                f"{media}, which it does not make", where,
                f"use an alias configured with `generates: [{media}]` ({EMBEDDED_TEXT_ONLY}); "
                f"aliases that do: {', '.join(makers) or 'none'}"))
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
    hint = did_you_mean(name, known) or fix
    if hint is None:
        hint = f"known {kind}s: {', '.join(known[:12])}{'...' if len(known) > 12 else ''}" if known else None
    return [Problem(f"unknown-{kind}", f"unknown {kind} {name!r}", path, hint)]
