"""A planner a small model can drive: the model decides little, the rest is built deterministically.

A 270M base model writes valid but useless DSL (snake_case prompts, one prompt
three times, models that do not fit). So, for such models:

1. **Template first.** A request that names what a shipped or user template
   does ("a marketing campaign for ...", "a research report on ...") is matched
   by keywords, and the template's first required text input is filled with the
   request's subject ("eco-friendly water bottles"). The plan is that template,
   its inputs defaulted, a workflow a person would keep.
2. **Otherwise a pattern.** One of five shapes (single answer; research → draft
   → review; parallel experts → aggregate; draft → critique → refine; phased),
   chosen by keywords; when none decides, a question gets a single answer and
   anything else research → draft → review. The planner model may be asked
   instead, as a constrained choice (an enum; ``planner: {choose_with_model:
   true}``), but the packaged 270M model chose right 0 times in 10 on the
   held-out requests (tests/bench/bench_plans.py) at 30-50 s each, so by default
   it is not. Each task's prompt comes from the pattern's skeleton: a sentence
   that carries the request and reads the earlier outputs it builds on.
3. **Models and addons by fit**: a specialist alias only for its own domain
   (``lints.fits_model``), addons only where the catalogue describes them as
   fitting (``lints.fitting_addons``).

The result is a DSL document checked like any file.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.catalog import Catalog
from engine.dsl.models import Workflow
from engine.planner.lints import fits_model, fitting_addons

# Words that say which shipped template a request wants. A user template is matched by the words of its
# name and description instead.
TEMPLATE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "marketing_campaign": ("marketing campaign", "campaign", "marketing", "promote", "promotion", "advertise",
                           "advertising", "ad campaign", "social media posts", "launch posts"),
    "research_report": ("research report", "report on", "report about", "market research", "industry report",
                        "analysis of", "analyse", "analyze", "landscape of"),
    "code_project": ("write a program", "write code", "implement", "script", "cli tool", "command-line tool",
                     "python function", "library", "code for", "an app", "a program", "build a tool"),
    "critique_refine": ("polish", "refine", "essay", "iterate on", "improve the draft", "until it is good"),
}
NEVER_PLANNED = frozenset({"chat"})  # a chat turn is not a workflow a request asks for

# The verb and article a request starts with, and the joint between what is asked and its subject.
_LEADING = re.compile(r"^\s*(?:please\s+)?(?:(?:can|could|would) you\s+)?(?:i need|we need|give me|help me)?\s*"
                      r"(?:to\s+)?(?:create|write|make|build|design|draft|produce|generate|prepare|plan|develop|"
                      r"do|run|put together|come up with)?\s*(?:me\s+)?(?:a|an|the|some)?\s*", re.I)
_JOINT = re.compile(r"\b(?:for|about|on|of|covering|around|to promote|promoting)\s+", re.I)
_STOPWORDS = frozenset(("a", "an", "the", "and", "or", "of", "for", "to", "in", "on", "with", "by", "from", "at",
                        "as", "is", "are", "be", "it", "this", "that", "then", "each", "their", "its", "into"))


@dataclass(frozen=True)
class Pattern:
    name: str
    description: str  # what the model reads when it chooses
    keywords: tuple[str, ...]


PATTERNS: tuple[Pattern, ...] = (
    Pattern("experts", "several experts answer a question in parallel, then one answer combines them",
            ("should i", "should we", "compare", "pros and cons", "which is better", "trade-off", "tradeoffs",
             "advice", "decide", "versus", " vs ")),
    Pattern("critique_refine", "write a draft, criticise it, then rewrite it better",
            ("poem", "story", "slogan", "tagline", "speech", "lyrics", "haiku", "joke", "essay")),
    Pattern("phased", "plan the work, research it, produce it, then check it against the plan",
            ("project plan", "roadmap", "strategy", "proposal", "business plan", "curriculum", "specification",
             "step-by-step plan", "migration plan")),
    Pattern("research_draft_review", "research the facts, write a draft from them, then review it",
            ("article", "blog", "post", "newsletter", "email", "summary", "overview", "guide", "documentation",
             "description", "press release", "report", "explain")),
    Pattern("single", "one model answers the request directly",
            ("translate", "what is", "what are", "who is", "who was", "when did", "when was", "where is",
             "how many", "how much", "define", "name ideas", "ideas for", "list of", "calculate", "convert")),
)
PATTERN_NAMES = tuple(pattern.name for pattern in PATTERNS)


@dataclass(frozen=True)
class GuidedChoice:
    """How the plan was made: a template (with the inputs it filled) or a pattern, and why."""

    kind: str  # "template" or "pattern"
    name: str
    reason: str
    inputs: Mapping[str, Any]


Choose = Callable[[str, Sequence[str], str], Awaitable[str | None]]  # (question, options, request) -> option


def match_template(request: str, templates: Mapping[str, Workflow],
                   shipped: frozenset[str] = frozenset(TEMPLATE_KEYWORDS)) -> GuidedChoice | None:
    """The template a request names, with its first required text input filled, or None. ``shipped`` are
    the names of Orchestrion's own templates (matched by ``TEMPLATE_KEYWORDS``, or not at all)."""
    text = f" {request.lower()} "
    best: tuple[int, str, str] | None = None
    for name, workflow in templates.items():
        if name in NEVER_PLANNED or _subject_input(workflow) is None:
            continue
        if name in TEMPLATE_KEYWORDS:
            hits = [word for word in TEMPLATE_KEYWORDS[name] if _has(text, word)]
        elif name in shipped:  # the patterns cover the other shipped templates' shapes
            continue
        else:  # a user's template: every word of its name ("sales_email": "sales" and "email")
            words = [word for word in name.lower().split("_") if len(word) >= 3 and word not in _STOPWORDS]
            hits = [" ".join(words)] if words and all(_has(text, word) for word in words) else []
        score = sum(len(word.split()) for word in hits)  # a phrase says more than a word
        if hits and (best is None or score > best[0]):
            best = (score, name, hits[0])
    if best is None:
        return None
    _, name, hit = best
    workflow = templates[name]
    field = _subject_input(workflow)
    assert field is not None
    return GuidedChoice("template", name, f"the request says {hit.strip()!r}", {field: subject_of(request, hit)})


MEDIA_WORDS = ("image", "images", "photo", "photos", "picture", "pictures", "imagery", "video", "videos")


def with_media(choice: GuidedChoice, template: Workflow, request: str, catalog: Catalog) -> GuidedChoice:
    """The choice with the template's boolean ``media`` input on when the request asks for images or video
    and the engine has models that make both (``image_ai``, ``video_ai``); else unchanged."""
    schema = template.inputs.get("media")
    if schema is None or schema.get("type") != "boolean":
        return choice
    text = f" {request.lower()} "
    asked = [word for word in MEDIA_WORDS if _has(text, word)]
    able = "image_ai" in catalog.generators.get("image", ()) and "video_ai" in catalog.generators.get("video", ())
    if not asked or not able:
        return choice
    return GuidedChoice(choice.kind, choice.name, f"{choice.reason}; it asks for {asked[0]!r}, so media are made",
                        {**choice.inputs, "media": True})


def subject_of(request: str, keyword: str | None = None) -> str:
    """What the request is about: "Create a marketing campaign for eco-friendly water bottles" ->
    "eco-friendly water bottles". The whole request when no joint is found."""
    rest = _LEADING.sub("", request.strip(), count=1).strip().rstrip(".!?")
    joint = _JOINT.search(rest)
    if joint is not None and (keyword is None or joint.start() <= len(keyword) + 24):
        subject = rest[joint.end():].strip()
        if len(subject.split()) >= 1:
            return subject
    return rest or request.strip()


async def choose_pattern(request: str, choose: Choose | None) -> GuidedChoice:
    """The pattern whose keywords the request has; else the model's choice among them; else a single answer."""
    text = f" {request.lower()} "
    for pattern in PATTERNS:
        hit = next((word for word in pattern.keywords if _has(text, word)), None)
        if hit is not None:
            return GuidedChoice("pattern", pattern.name, f"the request says {hit.strip()!r}", {})
    if choose is not None:
        options = "; ".join(f"{p.name}: {p.description}" for p in PATTERNS)
        picked = await choose(f"Which way of working fits the request best? {options}", PATTERN_NAMES, request)
        if picked in PATTERN_NAMES:
            return GuidedChoice("pattern", picked, "the planner model chose it", {})
    if request.rstrip().endswith("?"):
        return GuidedChoice("pattern", "single", "a question with no pattern's words", {})
    return GuidedChoice("pattern", "research_draft_review", "a request to produce something, with no pattern's "
                        "words", {})


def template_document(template: Workflow, choice: GuidedChoice, request: str) -> dict[str, Any]:
    """The template as a plan: its own document, the filled inputs as their defaults."""
    document: dict[str, Any] = template.model_dump(mode="json", by_alias=True, exclude_unset=True)
    document.pop("$schema", None)
    inputs = {name: dict(schema) for name, schema in document.get("inputs", {}).items()}
    for name, value in choice.inputs.items():
        inputs[name]["default"] = value
    document["inputs"] = inputs
    document["description"] = f"{template.description or template.name} (planned for: {request})"[:300]
    return document


def pattern_document(choice: GuidedChoice, request: str, catalog: Catalog) -> dict[str, Any]:
    """A workflow in the chosen pattern: prompts from its skeleton, models and addons by fit."""
    builder = _BUILDERS[choice.name]
    stages = builder(request, catalog)
    number, named = 0, []
    for stage in stages:  # tasks are step1, step2... in reading order, as the free planner names them
        tasks = []
        for task in stage["tasks"]:
            number += 1
            tasks.append({"id": f"step{number}", **task})
        named.append({**stage, "tasks": tasks})
    return {"dsl": "orchestrion/v1", "name": _name(request, choice.name), "version": "0.1.0",
            "description": f"{choice.name.replace('_', ' ')} for: {request}"[:300],
            "inputs": {"request": {"type": "string", "default": request, "description": "What was asked"}},
            "stages": named, "outputs": {"result": "{{ step" + str(number) + " }}"}}


# -- the patterns' skeletons ----------------------------------------------------------------------------------
# Each returns stages of tasks without ids (step1, step2... by position); prompts are Jinja over `request` and
# the outputs of earlier steps.

def _single(request: str, catalog: Catalog) -> list[dict[str, Any]]:
    return [{"type": "inline", "tasks": [
        _task(_specialist(request, "medium_ai", catalog), "Answer this request fully and clearly: {{ request }}",
              request, catalog)]}]


def _research_draft_review(request: str, catalog: Catalog) -> list[dict[str, Any]]:
    return [{"type": "inline", "tasks": [
        _task(_pick("research_ai", "medium_ai", request, catalog),
              "List the key facts, figures and points someone needs for this request: {{ request }}", request, catalog,
              addons=False),
        _task(_specialist(request, "thinking_ai", catalog),
              "Using these research notes:\n{{ step1 }}\n\nWrite what was asked: {{ request }}", request, catalog),
        _task(_pick("medium_ai", "thinking_ai", request, catalog),
              "Review the draft below against the request \"{{ request }}\". Correct mistakes, fill gaps and give "
              "only the final version.\n\n{{ step2 }}", request, catalog, addons=False),
    ]}]


def _experts(request: str, catalog: Catalog) -> list[dict[str, Any]]:
    experts: list[str] = [alias for alias in ("finance_expert", "technical_expert")
                          if alias in catalog.models and fits_model(alias, request)]
    experts.append("general_expert" if "general_expert" in catalog.models else "medium_ai")
    if len(experts) == 1:  # two views at least: a second, independent general answer
        experts.append(_pick("thinking_ai", "medium_ai", request, catalog))
    views = {"finance_expert": "finance", "technical_expert": "technology", "general_expert": "general",
             "thinking_ai": "careful reasoning", "medium_ai": "practical"}
    tasks = [_task(alias, f"From a {views.get(alias, 'general')} point of view, answer: {{{{ request }}}}",
                   request, catalog, addons=False) for alias in experts]
    combined = "\n\n".join(f"{views.get(alias, alias).capitalize()} view:\n{{{{ step{index} }}}}"
                           for index, alias in enumerate(experts, 1))
    prompt = "Combine these answers to \"{{ request }}\" into one answer that keeps what each gets right:\n\n"
    merge = _pick("aggregator", "thinking_ai", prompt, catalog)  # the merging job, not the request's subject
    return [{"type": "linear", "tasks": tasks},
            {"type": "inline", "tasks": [_task(merge, prompt + combined, request, catalog, addons=False)]}]


def _critique_refine(request: str, catalog: Catalog) -> list[dict[str, Any]]:
    writer = _specialist(request, "thinking_ai", catalog)
    return [{"type": "inline", "tasks": [
        _task(writer, "Write the following: {{ request }}", request, catalog),
        _task(_pick("medium_ai", "thinking_ai", request, catalog),
              "Criticise this draft of \"{{ request }}\": name its three biggest weaknesses.\n\n{{ step1 }}",
              request, catalog, addons=False),
        _task(writer, "Rewrite the draft so that it fixes the weaknesses; give only the new text.\n\nDraft:\n"
                      "{{ step1 }}\n\nWeaknesses:\n{{ step2 }}", request, catalog),
    ]}]


def _phased(request: str, catalog: Catalog) -> list[dict[str, Any]]:
    return [{"type": "inline", "tasks": [
        _task(_pick("thinking_ai", "medium_ai", request, catalog),
              "Make a short numbered plan of the parts needed for: {{ request }}", request, catalog, addons=False),
        _task(_pick("research_ai", "medium_ai", request, catalog),
              "For each part of this plan, give the facts and options that matter:\n{{ step1 }}", request, catalog,
              addons=False),
        _task(_specialist(request, "thinking_ai", catalog),
              "Following the plan:\n{{ step1 }}\n\nand the research:\n{{ step2 }}\n\nproduce: {{ request }}",
              request, catalog),
        _task(_pick("medium_ai", "thinking_ai", request, catalog),
              "Check the result below against the plan and fix what is missing or wrong; give the final version "
              "only.\n\nPlan:\n{{ step1 }}\n\nResult:\n{{ step3 }}", request, catalog, addons=False),
    ]}]


_BUILDERS: dict[str, Callable[[str, Catalog], list[dict[str, Any]]]] = {
    "single": _single, "research_draft_review": _research_draft_review, "experts": _experts,
    "critique_refine": _critique_refine, "phased": _phased,
}
_SPECIALISTS = ("code_ai", "finance_expert", "product_ai", "technical_expert", "research_ai")


def _task(model: str, prompt: str, request: str, catalog: Catalog, *, addons: bool = True) -> dict[str, Any]:
    task: dict[str, Any] = {"model": model, "prompt": prompt}
    if addons:
        fitting = fitting_addons(request, catalog)[:1]
        if fitting:
            task["addons"] = fitting
    return task


def _specialist(request: str, fallback: str, catalog: Catalog) -> str:
    """The specialist alias whose domain the request is in (a code request gets code_ai), else ``fallback``."""
    for alias in _SPECIALISTS:
        if alias in catalog.models and fits_model(alias, request):
            return alias
    return fallback if fallback in catalog.models else sorted(catalog.models)[0]


def _pick(preferred: str, fallback: str, text: str, catalog: Catalog) -> str:
    """``preferred`` if it fits ``text`` (what the task is about), else ``fallback``."""
    if preferred in catalog.models and fits_model(preferred, text):
        return preferred
    return fallback if fallback in catalog.models else sorted(catalog.models)[0]


def _subject_input(workflow: Workflow) -> str | None:
    """The input a request's subject fills: the first required string input; None if another required
    input would be left without a value."""
    required = [name for name, schema in workflow.inputs.items() if "default" not in schema]
    if len(required) != 1 or workflow.inputs[required[0]].get("type") != "string":
        return None
    return required[0]


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(phrase.strip())}(?![a-z])", text) is not None


def _name(request: str, pattern: str) -> str:
    words = [word for word in re.findall(r"[a-z0-9]+", request.lower()) if word not in _STOPWORDS][:4]
    return "_".join(["plan", *words])[:40].rstrip("_") or f"plan_{pattern}"
