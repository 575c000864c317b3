"""The master planner: an LLM writes a workflow in the DSL for a request.

The planner model gets a compact description of the DSL, the model aliases
(what each is for), the addons and the templates, and answers with JSON in a
*planner schema*: a strict subset of the DSL (stages of tasks with an id, a
model alias from an enum, a prompt, addons from an enum) small enough for a
grammar, so even a small local model answers in shape. The answer becomes a
DSL document and goes through exactly the loader and static checks a file
gets; problems are fed back for at most ``max_repairs`` repairs. Limits: task
count, estimated cost, and no ``plan:`` tasks inside a plan (depth 1).

That is the ``free`` mode, for capable models. A small model writes valid but
useless plans that way, so the ``guided`` mode (``engine.planner.guided``) has
it decide little: a template the request names, or one of five patterns whose
prompts come from skeletons. Either way the plan lints (``engine.planner.lints``:
identifier prompts, repeated prompts, unread outputs, models and addons that do
not fit) are fed back as repairs; a plan whose repairs run out with only lint
findings left is kept, with its findings.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from engine.catalog import Catalog
from engine.dsl.loader import load_workflow
from engine.dsl.models import Workflow
from engine.errors import InvalidOutputError, ModelError, Problem, TaskError, WorkflowError, format_path
from engine.model.client import Message, ModelRequest, build_request
from engine.model.output import parse_output, repair_request
from engine.model.prices import Price, estimate_usage
from engine.planner.guided import (
    GuidedChoice,
    choose_pattern,
    match_template,
    pattern_document,
    template_document,
    with_media,
)
from engine.planner.lints import lint_plan

ALIAS_ROLES: dict[str, str] = {
    "categorizer_ai": "classifies requests", "fast_ai": "quick, simple answers", "medium_ai": "harder questions",
    "thinking_ai": "complex reasoning and long documents", "code_ai": "writing and reviewing code",
    "research_ai": "research and facts", "product_ai": "products and marketing", "image_analysis_ai": "images",
    "finance_expert": "finance and markets", "technical_expert": "technology", "general_expert": "anything else",
    "router": "routing", "aggregator": "merging several answers into one",
}

GUIDE = """You design workflows. A workflow is a list of stages; each stage is "linear" (its tasks run \
at the same time) or "inline" (its tasks run one after another). Each task has a model (an alias from \
the list), a prompt, and optional addons. Tasks are named step1, step2, step3, ... in the order they \
appear in the whole workflow. A prompt may use the output of an EARLIER task as {{ step1 }}: a task of \
an earlier stage, or an earlier task of the same inline stage; never a later task, nor a task of the \
same linear stage. The request is available as {{ request }}. Keep it small: 2 to 6 tasks. The last \
task should combine the others into the final answer."""


@dataclass(frozen=True)
class PlannerLimits:
    max_tasks: int = 12
    max_stages: int = 3
    max_tasks_per_stage: int = 3
    max_prompt_chars: int = 160  # short prompts keep a whole plan inside max_tokens, even from a small model
    max_repairs: int = 2
    max_cost_usd: float | None = None  # estimated for one run of the planned workflow
    max_tokens: int = 768  # for the planner's own answer


@dataclass
class PlanAttempt:
    answer: str
    problems: list[str]  # what makes it invalid
    lints: list[str] = field(default_factory=list)  # what makes a valid plan poor (fed back while repairs last)


@dataclass
class PlanOutcome:
    """A planned workflow, with every attempt (first try and repairs) and its problems."""

    workflow: Workflow | None
    document: dict[str, Any] | None
    attempts: list[PlanAttempt] = field(default_factory=list)
    mode: str = "free"
    choice: GuidedChoice | None = None  # guided: the template or pattern, and why

    @property
    def valid_first_try(self) -> bool:
        return bool(self.attempts) and not self.attempts[0].problems


def planner_schema(catalog: Catalog, limits: PlannerLimits) -> dict[str, Any]:
    """The JSON Schema of the planner's answer: a subset of the DSL, with enums of what exists."""
    task: dict[str, Any] = {  # no ids: tasks are step1, step2... in order, so they can never clash
        "type": "object", "required": ["model", "prompt"], "additionalProperties": False,
        "properties": {
            "model": {"enum": sorted(catalog.text_models)},
            "prompt": {"type": "string", "minLength": 8, "maxLength": limits.max_prompt_chars},
        },
    }
    if catalog.addons:
        task["properties"]["addons"] = {"type": "array", "maxItems": 2, "items": {"enum": sorted(catalog.addons)}}
    stage = {"type": "object", "required": ["type", "tasks"], "additionalProperties": False, "properties": {
        "type": {"enum": ["linear", "inline"]},
        "tasks": {"type": "array", "minItems": 1, "maxItems": limits.max_tasks_per_stage, "items": task},
    }}
    return {"type": "object", "required": ["name", "description", "stages"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,30}$"},
                "description": {"type": "string", "minLength": 8, "maxLength": 120},
                "stages": {"type": "array", "minItems": 1, "maxItems": limits.max_stages, "items": stage},
            }}


def planner_prompt(catalog: Catalog) -> str:
    roles = [f"- {alias}: {ALIAS_ROLES.get(alias, 'a configured model')}" for alias in sorted(catalog.text_models)]
    aliases = "\n".join(roles)
    addons = ", ".join(sorted(catalog.addons)) or "none"
    templates = ", ".join(sorted(catalog.templates)) or "none"
    return (f"{GUIDE}\n\nModel aliases:\n{aliases}\n\nAddons (prompt fragments a task may add): {addons}\n"
            f"Existing templates (for ideas): {templates}\n\nAnswer with JSON only.")


def to_document(answer: Mapping[str, Any], request: str) -> dict[str, Any]:
    """The planner's answer as a DSL document: tasks named step1, step2... in reading order, the request
    as an input, the last task as the output."""
    stages, number = [], 0
    for stage in answer.get("stages") or []:
        tasks = []
        for task in stage.get("tasks") or []:
            number += 1
            tasks.append({"id": f"step{number}", **task})
        stages.append({**stage, "tasks": tasks})
    last = f"step{number}" if number else None
    document: dict[str, Any] = {
        "dsl": "orchestrion/v1", "name": answer.get("name"), "version": "0.1.0",
        "description": answer.get("description"),
        "inputs": {"request": {"type": "string", "default": request, "description": "What was asked"}},
        "stages": stages,
    }
    if isinstance(last, str):
        document["outputs"] = {"result": "{{ " + last + " }}"}
    return document


def dump_yaml(document: Mapping[str, Any], schema_link: str | None = None) -> str:
    """A planned workflow as a YAML file that can be read, edited and checked in, in the form
    ``orchestrion fmt`` gives; ``schema_link`` is where its schema is (``engine.schema.schema_link``:
    by default the installed schema's absolute path)."""
    from engine.dsl.fmt import dump_workflow
    from engine.schema import schema_link as link_for

    plain = json.loads(json.dumps(document))  # plain types only, and a copy to reorder
    return dump_workflow(plain, schema_link if schema_link is not None else link_for(None))


Ask = Callable[[ModelRequest], Awaitable[Any]]  # a model call: the answer's text, or its parsed JSON


PlannerMode = Literal["guided", "free"]


class Planner:
    def __init__(self, ask: Ask, catalog: Catalog, compile_check: Callable[[Workflow], Any], *,
                 model: str = "thinking_ai", limits: PlannerLimits | None = None,
                 prices: Mapping[str, Price] | None = None, mode: PlannerMode = "free",
                 choose_with_model: bool = False) -> None:
        self.ask = ask
        self.catalog = catalog
        self.compile_check = compile_check  # Workflow -> Plan, raising WorkflowError
        self.model = model
        self.limits = limits or PlannerLimits()
        self.prices = prices or {}
        self.mode = mode
        self.choose_with_model = choose_with_model  # guided: ask the model for a pattern no keyword decides

    async def plan(self, request: str) -> PlanOutcome:
        """A checked workflow for ``request``; the outcome has every attempt, its problems and lints."""
        if self.mode == "guided":
            return await self._plan_guided(request)
        return await self._plan_free(request)

    async def _plan_free(self, request: str) -> PlanOutcome:
        """Ask for a workflow, check it like a file, feed problems and lints back."""
        schema = planner_schema(self.catalog, self.limits)
        message = build_request(self.model, planner_prompt(self.catalog), f"Request: {request}",
                                temperature=0.2, max_tokens=self.limits.max_tokens, schema=schema)
        outcome = PlanOutcome(None, None)
        best: PlanAttempt | None = None
        for _ in range(self.limits.max_repairs + 1):
            try:
                answer = await self.ask(message)
            except InvalidOutputError as error:  # the model's JSON did not match the planner schema
                document: dict[str, Any] = {}
                lints: list[str] = []
                answer, problems = error.output, [error.message]
            else:
                problems, lints, document = self._check(answer, schema, request)
            text = answer if isinstance(answer, str) else json.dumps(answer)
            attempt = PlanAttempt(text, problems, lints)
            outcome.attempts.append(attempt)
            if not problems and (best is None or len(lints) < len(best.lints)):
                best, outcome.document = attempt, document
                outcome.workflow = load_workflow(document)
            if best is not None and not best.lints:
                break
            message = repair_request(message, text, "; ".join((problems or lints)[:8]))
        return outcome

    async def _plan_guided(self, request: str) -> PlanOutcome:
        """A template the request names, else a pattern (see ``engine.planner.guided``); checked and linted
        like a free plan, so a fault in a skeleton shows as a problem, never as a silent poor plan."""
        templates = await anyio.to_thread.run_sync(self._templates)  # files read and parsed off the event loop
        choice = match_template(request, templates, self._shipped())
        if choice is not None:
            choice = with_media(choice, templates[choice.name], request, self.catalog)
            document = template_document(templates[choice.name], choice, request)
        else:
            choice = await choose_pattern(request, self._choose if self.choose_with_model else None)
            document = pattern_document(choice, request, self.catalog)
        problems, lints = self._verdict(document, request, self.limits.max_tasks if choice.kind == "pattern" else None)
        outcome = PlanOutcome(None, None, [PlanAttempt(json.dumps(document), problems, lints)], "guided", choice)
        if not problems:
            outcome.document, outcome.workflow = document, load_workflow(document)
        return outcome

    async def _choose(self, question: str, options: Sequence[str], request: str) -> str | None:
        """The planner model's pick among ``options`` (a grammar-constrained enum); None if it fails."""
        schema = {"type": "object", "required": ["choice"], "additionalProperties": False,
                  "properties": {"choice": {"enum": list(options)}}}
        message = build_request(self.model, question, f"Request: {request}", temperature=0.0, max_tokens=32,
                                schema=schema)
        try:
            answer = await self.ask(message)
            parsed = parse_output(answer, schema, self.model) if isinstance(answer, str) else answer
        except (ModelError, InvalidOutputError):
            return None
        choice = parsed.get("choice") if isinstance(parsed, Mapping) else None
        return choice if isinstance(choice, str) else None

    def _templates(self) -> dict[str, Workflow]:
        loaded = {}
        for name in self.catalog.templates:
            try:
                loaded[name] = self.catalog.load_workflow(name)
            except WorkflowError:  # a broken template file is not offered
                continue
        return loaded

    def _shipped(self) -> frozenset[str]:
        from engine.catalog import builtin_dir

        folder = builtin_dir("templates")
        return frozenset(name for name, path in self.catalog.templates.items()
                         if folder is not None and path.parent == folder)

    def _check(self, answer: Any, schema: Mapping[str, Any],
               request: str) -> tuple[list[str], list[str], dict[str, Any]]:
        try:
            parsed = parse_output(answer, schema, self.model) if isinstance(answer, str) else answer
        except ModelError as error:
            return [error.message], [], {}
        if not isinstance(parsed, Mapping):
            return ["the answer is not a JSON object"], [], {}
        document = to_document(parsed, request)
        problems, lints = self._verdict(document, request, self.limits.max_tasks)
        return problems, lints, document

    def _verdict(self, document: dict[str, Any], request: str,
                 max_tasks: int | None) -> tuple[list[str], list[str]]:
        """Problems (the document is invalid or over a limit) and lints (it is valid but poor)."""
        try:
            workflow = load_workflow(document)
            plan = self.compile_check(workflow)
        except WorkflowError as error:
            return [_describe(problem) for problem in error.problems], []
        problems = self._over_limits(plan, max_tasks)
        lints = [str(lint) for lint in lint_plan(workflow, plan, self.catalog, request)]
        return problems, lints

    def _over_limits(self, plan: Any, max_tasks: int | None) -> list[str]:
        problems = []
        if max_tasks is not None and len(plan.nodes) > max_tasks:
            problems.append(f"{len(plan.nodes)} tasks is more than the limit of {max_tasks}")
        cost = self._estimated_cost(plan)
        if self.limits.max_cost_usd is not None and cost > self.limits.max_cost_usd:
            problems.append(f"the workflow is estimated at ${cost:.4f}, above the limit of "
                            f"${self.limits.max_cost_usd:.4f}: use fewer or cheaper tasks")
        return problems

    def _estimated_cost(self, plan: Any) -> float:
        """Each model call's prompt (before templating) plus a full answer, at its alias's price."""
        total = 0.0
        for node in plan.nodes.values():
            if node.task is not None and node.task.kind == "prompt" and node.policies and node.policies.models:
                alias = node.policies.models[0]
                request = ModelRequest(alias, (Message("user", node.task.source),), max_tokens=node.policies.max_tokens)
                total += self.prices.get(alias, Price()).cost(estimate_usage(request))
        return total


def _describe(problem: Problem) -> str:
    where = format_path(problem.path)
    return f"{where}: {problem.message}" + (f" ({problem.hint})" if problem.hint else "")


def plan_failed(outcome: PlanOutcome, task_id: str | None = None) -> TaskError:
    last = outcome.attempts[-1].problems if outcome.attempts else ["no answer"]
    return TaskError(f"the planner gave no valid workflow after {len(outcome.attempts)} attempts: "
                     + "; ".join(last[:5]), task_id=task_id)
