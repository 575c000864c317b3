"""Plan lints: what makes a valid workflow a poor one.

A plan can pass every static check and still be useless: prompts that are
labels (``create_marketing_campaign``), one prompt run three times, outputs
nobody reads, a last task that ignores the work before it, specialists and
addons that have nothing to do with the request. Each lint here finds one of
these, with a stable ``code``, a ``message`` a person understands and a
``hint`` that says how to fix it: the planner feeds them back to its model as
repair instructions and ``orchestrion plan -v`` prints them.

Everything is a pure function of the workflow, its compiled plan, the catalog
and the request: no I/O, no model. The fit of models and addons comes from a
small keyword classifier; its tables (``DOMAIN_KEYWORDS``, ``DOMAIN_IMPLIES``,
``CATEGORY_DOMAINS``, ``GENERAL_ALIASES``) are data, all in one place below.

===================  ==================================================================
code                 finds
===================  ==================================================================
identifier-prompt    a prompt that is an identifier or a label, not an instruction
duplicate-prompt     two tasks with the same prompt (same condition), modulo ``{{ }}``
unread-output        a model task whose output no task and no workflow output reads
ignores-earlier      a model task after other tasks that reads none of their outputs
model-misfit         a specialist model alias outside its domain
addon-misfit         an addon whose domain has nothing to do with the task
===================  ==================================================================

Only model tasks (``prompt:`` and ``plan:``) are linted: a ``call:`` or a
``workflow:`` may act by its side effects.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

from engine.addons import Addon
from engine.catalog import Catalog
from engine.compiler.plan import Binding, Node, Plan
from engine.compiler.sites import Site, collect_sites, precedes
from engine.dsl.models import Workflow
from engine.errors import TemplateError
from engine.templating.references import template_references

__all__ = [
    "CATEGORY_DOMAINS", "DOMAIN_IMPLIES", "DOMAIN_KEYWORDS", "GENERAL_ALIASES", "LINT_CODES", "Lint",
    "addon_fits", "alias_domains", "classify", "fits_model", "fitting_addons", "lint_plan",
]

# The lints, in the order their findings are listed for one task, with what each finds.
LINT_CODES: Mapping[str, str] = {
    "identifier-prompt": "a prompt that is an identifier or a label rather than an instruction",
    "duplicate-prompt": "two tasks with the same prompt",
    "unread-output": "a task whose output nothing reads",
    "ignores-earlier": "a task that reads none of the outputs of the tasks before it",
    "model-misfit": "a model alias that does not fit the task",
    "addon-misfit": "an addon that does not fit the task",
}


@dataclass(frozen=True)
class Lint:
    """One finding: ``message`` says what is wrong, ``hint`` how to fix it (both full sentences)."""

    code: str
    task_id: str | None
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.message} {self.hint} [{self.code}]"


# -- the keyword tables ---------------------------------------------------------------------------------------
# A keyword matches a word of the text exactly, or, ending in "*", every word that starts with it. Words are
# lowercase runs of letters and digits; snake_case and camelCase are split first, so `create_marketing_plan`
# reads as "create marketing plan". Adding a word only ever makes more models and addons fit.

DOMAIN_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "code": ("code", "coding", "program*", "function*", "python", "javascript", "typescript", "java", "rust",
             "golang", "sql", "api", "apis", "endpoint*", "bug", "bugs", "debug*", "refactor*", "compil*",
             "repository", "git", "unittest*", "pytest", "regex*"),
    "technical": ("technical", "technolog*", "tech", "software", "hardware", "server*", "database*", "deploy*",
                  "infrastructure", "network*", "cloud", "linux", "docker", "kubernetes", "architectur*",
                  "engineer*", "devops", "security", "cyber*", "algorithm*", "protocol*"),
    "finance": ("financ*", "invest*", "stock", "stocks", "bond", "bonds", "portfolio*", "tax", "taxes",
                "taxation", "budget*", "loan*", "mortgage*", "inflation", "revenue*", "profit*", "dividend*",
                "roi", "valuation*", "accounting", "cash", "earnings", "equity", "crypto*", "bank*", "markets",
                "money", "fund", "funds", "funding", "economic*", "pension*", "insurance", "cost", "costs"),
    "marketing": ("marketing", "market", "campaign*", "advert*", "ad", "ads", "brand*", "slogan*", "tagline*",
                  "product", "products", "launch*", "promot*", "seo", "social", "instagram", "twitter",
                  "facebook", "linkedin", "tiktok", "youtube", "audience*", "customer*", "consumer*", "buyer*",
                  "persona*", "sell*", "sales", "pricing", "competitor*", "positioning", "landing"),
    "content": ("blog*", "article*", "newsletter*", "story", "stories", "storytell*", "headline*", "press",
                "essay*", "content", "copy", "copywrit*", "caption*", "post", "posts"),
    "business": ("business*", "compan*", "strateg*", "executive*", "stakeholder*", "proposal*", "okr", "okrs",
                 "kpi", "kpis", "swot", "risk*", "negotiat*", "client*", "brief*", "startup*",
                 "enterprise*", "management", "decision*"),
    "research": ("research*", "fact", "facts", "evidence", "source", "sources", "citation*", "cite", "study",
                 "studies", "literature", "survey*", "trend*", "verif*", "investigat*", "report", "reports"),
    "data": ("data", "dataset*", "sql", "query", "queries", "metric*", "statistic*", "chart*", "visuali*",
             "dashboard*", "spreadsheet*", "csv", "analytics", "experiment*"),
    "design": ("ux", "ui", "interface*", "usability", "accessib*", "wcag", "layout*", "typograph*", "mockup*",
               "wireframe*", "figma"),
    "education": ("teach*", "lesson*", "course*", "curricul*", "student*", "learner*", "learning", "quiz*",
                  "school*", "classroom*", "tutor*", "exam", "exams"),
    "image": ("image", "images", "photo*", "picture*", "screenshot*", "illustration*", "diagram*", "ocr"),
    "classify": ("classif*", "categor*", "route", "routes", "routing", "router", "triage"),
    "merge": ("merg*", "combin*", "aggregat*", "synthes*", "consolidat*"),
}

# A text about the key is about these domains too (for what fits it): code is technical, a marketing
# campaign needs content and is business. Models use their own domains only: code_ai is no technology expert.
DOMAIN_IMPLIES: Mapping[str, frozenset[str]] = {
    "code": frozenset({"technical"}),
    "marketing": frozenset({"business", "content"}),
    "finance": frozenset({"business"}),
}

# Aliases that fit every task. Every other alias of `engine.planner.ALIAS_ROLES` is a specialist of the
# domains its role describes ("writing and reviewing code": code); an alias without a role is not judged.
GENERAL_ALIASES = frozenset({"fast_ai", "medium_ai", "thinking_ai", "general_expert"})

# The domains of each addon category; None: a general category (tone, style, format), fits everything.
# An addon also belongs to the domains its name and description speak of; an unknown category counts by its
# words, and an addon whose words say nothing is not judged.
CATEGORY_DOMAINS: Mapping[str, frozenset[str] | None] = {
    "communication": None,
    "business": frozenset({"business"}),
    "code": frozenset({"code"}),
    "content_creation": frozenset({"content"}),
    "data": frozenset({"data"}),
    "design": frozenset({"design"}),
    "education": frozenset({"education"}),
    "marketing": frozenset({"marketing"}),
    "research": frozenset({"research"}),
    "social_media": frozenset({"marketing"}),
}

ROLE_DOMAINS = frozenset({"classify", "merge"})  # what a task does, not what it is about: no addon's domains
MERGE_READS = 2  # a task that reads this many earlier outputs merges them: `aggregator` fits it
MIN_WORDS = 4  # fewer words (those outside `{{ }}`, plus one per `{{ }}` beside them) and a prompt is a label

# Words of addon descriptions that say nothing about what an addon is for.
_STOPWORDS = frozenset((
    "a", "an", "the", "and", "or", "of", "for", "to", "in", "on", "with", "by", "from", "at", "as", "is", "are",
    "be", "it", "its", "this", "that", "these", "than", "then", "not", "no", "into", "over", "your", "their",
    "them", "they", "you", "we", "our", "clear", "clearly", "well", "good", "great", "better", "best", "which",
    "who", "what", "when", "where", "how", "all", "any", "each", "every", "more", "most", "less", "so", "just",
    "only", "also",
))

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_VALUE = re.compile(r"\{\{.*?\}\}", re.S)
_WORD = re.compile(r"[A-Za-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_IDENTIFIER = re.compile(r"^(?:[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+|[a-z]+(?:[A-Z][a-z0-9]+)+"
                         r"|[a-z0-9]+(?:-[a-z0-9]+){2,})$")
_PUNCTUATION = ".,:;!?()[]\"'`*"


# -- the classifier -------------------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """The lowercase words of ``text``, snake_case and camelCase split."""
    return [word.lower() for word in _WORD.findall(_CAMEL.sub(" ", text.replace("_", " ")))]


def _matches(keyword: str, word: str) -> bool:
    return word.startswith(keyword[:-1]) if keyword.endswith("*") else word == keyword


def classify(text: str) -> frozenset[str]:
    """The domains (keys of ``DOMAIN_KEYWORDS``) whose keywords ``text`` uses; empty: a general text."""
    found = set(words(text))
    return frozenset(domain for domain, keywords in DOMAIN_KEYWORDS.items()
                     if any(_matches(keyword, word) for keyword in keywords for word in found))


def _implied(domains: Iterable[str]) -> frozenset[str]:
    found = set(domains)
    for domain in list(found):
        found |= DOMAIN_IMPLIES.get(domain, frozenset())
    return frozenset(found)


@cache
def alias_domains() -> Mapping[str, frozenset[str] | None]:
    """Each alias of ``ALIAS_ROLES`` and the domains it is for, read from its role; None: a generalist."""
    from engine.planner import ALIAS_ROLES  # here: engine.planner imports this module

    return {alias: None if alias in GENERAL_ALIASES else classify(role) for alias, role in ALIAS_ROLES.items()}


def _fits(alias: str, domains: frozenset[str]) -> bool:
    """Whether ``alias`` fits a text about ``domains`` (``DOMAIN_IMPLIES`` already applied)."""
    own = alias_domains().get(alias)
    if not own:
        return True  # a generalist, an alias without a role, or a role that names no domain: not judged
    return bool(own & domains)


def fits_model(alias: str, text: str) -> bool:
    """Whether model ``alias`` fits a task described by ``text`` (the request and the task's prompt).

    Generalists always fit; a specialist only its domain: ``code_ai`` a text about code, ``aggregator``
    one that merges, ``router``/``categorizer_ai`` one that classifies. An alias with no known role fits.
    """
    return _fits(alias, _implied(classify(text)))


def _stem(word: str) -> str:
    """A crude stem for matching addon names and descriptions: "summaries" and "summary" both "summar"."""
    changed = True
    while changed:
        changed = False
        for suffix in ("ies", "ing", "ion", "es", "s", "e", "y"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word, changed = word[: -len(suffix)], True
                break
    return word


def _stems(text: str) -> frozenset[str]:
    return frozenset(_stem(word) for word in words(text) if word not in _STOPWORDS)


@lru_cache(maxsize=1024)
def _addon_profile(addon: Addon) -> tuple[frozenset[str] | None, frozenset[str], frozenset[str]]:
    """(domains or None for a general addon, stems of its name, stems of its description)."""
    named = _stems(addon.name)
    described = _stems(addon.description) - named
    if addon.category in CATEGORY_DOMAINS:
        category = CATEGORY_DOMAINS[addon.category]
        if category is None:
            return None, named, described
    else:
        category = classify(addon.category)
    domains = (category | classify(f"{addon.name} {addon.description}")) - ROLE_DOMAINS
    return (domains or None), named, described


def addon_fits(addon: Addon, text: str) -> bool:
    """Whether ``addon`` fits a task described by ``text``: a general one always; another if its name is in
    the text ("write ad copy": ``ad_copy``) or its domains are the text's."""
    domains, named, _ = _addon_profile(addon)
    if domains is None:
        return True
    return named <= _stems(text) or bool(domains & _implied(classify(text)))


def _addon_score(addon: Addon, stems: frozenset[str], raw: frozenset[str], implied: frozenset[str]) -> float:
    domains, named, described = _addon_profile(addon)
    score = 4.0 if named <= stems else 0.0
    if domains is not None:
        score += 2 * len(domains & raw) + len((domains & implied) - raw)
        score += 1.0 if score and _stems(addon.category) <= stems else 0.0
    return score + 0.5 * len(described & stems) if score else 0.0


def fitting_addons(text: str, catalog: Catalog) -> list[str]:
    """Names of the catalog's addons that suit ``text``, best first: its name in the text, then its
    domains (direct before implied), then words of its description. A general addon (``concise``) never
    misfits, but is suggested only when the text names it."""
    stems, raw = _stems(text), classify(text)
    implied = _implied(raw)
    scored = [(score, name) for name, addon in catalog.addons.items()
              if (score := _addon_score(addon, stems, raw, implied)) > 0]
    return [name for _, name in sorted(scored, key=lambda pair: (-pair[0], pair[1]))]


# -- the plan as the lints see it -----------------------------------------------------------------------------

MODEL_KINDS = frozenset({"prompt", "plan"})


@dataclass(frozen=True)
class _Task:
    site: Site
    nodes: tuple[Node, ...]  # one per round
    reads: frozenset[str]  # ids of the tasks whose output it reads (itself included, for a loop)
    text: str  # the request, the prompt and the description: what the task is about

    @property
    def id(self) -> str:
        return self.site.task.id

    @property
    def source(self) -> str:
        return self.nodes[0].task.source if self.nodes[0].task is not None else ""

    @property
    def models(self) -> tuple[str, ...]:
        policies = self.nodes[0].policies
        return policies.models if policies is not None else ()

    @property
    def addons(self) -> tuple[str, ...]:
        policies = self.nodes[0].policies
        return policies.addons if policies is not None else ()


@dataclass(frozen=True)
class _Context:
    workflow: Workflow
    plan: Plan
    catalog: Catalog
    request: str
    tasks: tuple[_Task, ...]  # model tasks, in reading order
    sites: tuple[Site, ...]  # every task, in reading order
    readers: Mapping[str, frozenset[str]]  # per task: the other tasks and checks that read its output
    in_outputs: frozenset[str]  # tasks the workflow's outputs read


def _reads(bindings: Iterable[Mapping[str, Binding]], plan: Plan) -> frozenset[str]:
    """The ids of the tasks whose outputs these bindings read."""
    found: set[str] = set()
    for names in bindings:
        for name, binding in names.items():
            if binding.kind == "task":
                found |= {plan.nodes[producer].task_id for producer in binding.nodes if producer in plan.nodes}
            elif binding.kind == "none":  # a previous round's output, null in round 1
                found.add(name)
    return frozenset(found)


def _context(workflow: Workflow, plan: Plan, catalog: Catalog, request: str) -> _Context:
    sites, _ = collect_sites(workflow)
    by_task: dict[str, list[Node]] = defaultdict(list)
    for node in plan.nodes.values():
        by_task[node.task_id].append(node)
    readers: dict[str, set[str]] = defaultdict(set)
    for task_id, nodes in by_task.items():
        for read in _reads((node.bindings for node in nodes), plan) - {task_id}:
            readers[read].add(task_id)
    tasks = []
    for site in sites.sites:
        task, own = site.task, by_task.get(site.task.id, [])
        if task.kind not in MODEL_KINDS or not own:
            continue
        text = " ".join(part for part in (request, task.description, task.prompt, task.plan, task.system) if part)
        tasks.append(_Task(site, tuple(own), _reads((node.bindings for node in own), plan), text))
    in_outputs = _reads((spec.bindings for spec in plan.outputs.values()), plan)
    return _Context(workflow, plan, catalog, request, tuple(tasks), sites.sites,
                    {key: frozenset(value) for key, value in readers.items()}, in_outputs)


def _literal(source: str) -> str:
    """A template's own text: its ``{{ }}``, ``{% %}`` and ``{# #}`` taken out."""
    return _JINJA.sub(" ", source)


def _shown(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the lints ------------------------------------------------------------------------------------------------

def _identifier_prompt(context: _Context) -> Iterator[Lint]:
    for task in context.tasks:
        tokens = [token.strip(_PUNCTUATION) for token in _literal(task.source).split()]
        labels = [token for token in tokens if _IDENTIFIER.match(token)]
        plain = [token for token in tokens if token not in labels and any(c.isalpha() for c in token)]
        values = len(_VALUE.findall(task.source))  # "Combine {{ step1 }} and {{ step2 }}": each value a word
        if len(plain) >= MIN_WORDS or (plain and not labels and len(plain) + values >= MIN_WORDS):
            continue
        what = "prompt" if task.site.task.kind == "prompt" else "planning request"
        if labels:
            yield Lint("identifier-prompt", task.id,
                       f"The {what} of {task.id} is an identifier ({_shown(labels[0], 50)!r}), not an instruction: "
                       "a model cannot tell from a label what to produce.", _SENTENCE_HINT)
        elif not _passes_input_through(task, context.workflow):
            count = f"{len(plain)} word{'s' if len(plain) != 1 else ''}" if plain else "no words"
            yield Lint("identifier-prompt", task.id,
                       f"The {what} of {task.id} ({_shown(task.source)!r}) has {count} of its own: it is a label, "
                       "not an instruction.", _SENTENCE_HINT)


_SENTENCE_HINT = ("Write it as a full sentence that says what to produce and from what, for example "
                  "'Using these notes: {{ step1 }}, write a one-page summary of {{ request }} for a busy reader'.")


def _passes_input_through(task: _Task, workflow: Workflow) -> bool:
    """A prompt that hands an input (the request) to the model as the instruction, with a few words around it."""
    try:
        names = {reference.name for reference in template_references(task.source)}
    except TemplateError:
        return False
    return bool(names & set(workflow.inputs))


def _normalised(source: str) -> tuple[str, str]:
    """The prompt with whitespace and case normalised, and the same with every ``{{ }}`` as one placeholder."""
    plain = " ".join(source.lower().split())
    return plain, " ".join(_VALUE.sub("{{ }}", plain).split())


def _duplicate_prompt(context: _Context) -> Iterator[Lint]:
    first: dict[tuple[str, str | None, str], _Task] = {}
    for task in context.tasks:
        plain, shape = _normalised(task.source)
        key = (task.site.task.kind, task.site.task.when, shape)  # tasks under other conditions are alternatives
        original = first.setdefault(key, task)
        if original is task:
            continue
        same = ("the same prompt as" if _normalised(original.source)[0] == plain
                else "the same prompt, apart from the values it reads, as")
        yield Lint("duplicate-prompt", task.id,
                   f"{task.id} has {same} {original.id} ({_shown(task.source)!r}): the same work is done twice.",
                   f"Give {task.id} a job of its own (another part, angle or step of the request), or remove it; "
                   "a later task can then combine the different results.")


def _unread_output(context: _Context) -> Iterator[Lint]:
    for task in context.tasks:
        if context.readers.get(task.id) or task.id in context.in_outputs:
            continue
        where = ("it is not among the workflow's outputs" if context.workflow.outputs
                 else "the workflow declares no outputs")
        yield Lint("unread-output", task.id,
                   f"Nothing reads the output of {task.id}: no other task uses {{{{ {task.id} }}}} and {where}, "
                   "so its work is lost.",
                   f"Use {{{{ {task.id} }}}} in the prompt of a later task (the last task usually combines the "
                   "others), make it an output of the workflow, or remove the task.")


def _ignores_earlier(context: _Context) -> Iterator[Lint]:
    for task in context.tasks:
        if task.reads - {task.id} or not _after_others(task.site):
            continue
        earlier = _closest_earlier(task.site, context.sites, 4)
        listed = ", ".join(earlier[-3:]) + (" and others" if len(earlier) > 3 else "")
        inputs = any(binding.kind == "input" for node in task.nodes for binding in node.bindings.values())
        yield Lint("ignores-earlier", task.id,
                   f"{task.id} runs after {listed} but reads none of their outputs "
                   f"({'only the inputs' if inputs else 'nothing at all'}): the work done before it is wasted "
                   "for it.",
                   f"Use the earlier results in its prompt (for example {{{{ {earlier[-1]} }}}}), or, if it is "
                   "independent work, move it into the first stage beside the others.")


def _after_others(site: Site) -> bool:
    """Whether a task runs after another by the structure: it is not the first item of an inline stage it
    stands in (every item of a stage holds a task)."""
    return any(sequential and index > 0 for sequential, index in site.trail)


def _closest_earlier(site: Site, sites: tuple[Site, ...], count: int) -> list[str]:
    """The last ``count`` tasks that finish before ``site`` starts, in reading order."""
    found: list[str] = []
    for other in reversed(sites[: site.order]):
        if precedes(other.trail, site.trail):
            found.insert(0, other.task.id)
            if len(found) == count:
                break
    return found


def _task_domains(task: _Task) -> frozenset[str]:
    """What a task is about, by its words, and ``merge`` when it reads several earlier outputs."""
    merges = len(task.reads - {task.id}) >= MERGE_READS
    return classify(task.text) | ({"merge"} if merges else set())


def _about(domains: frozenset[str]) -> str:
    return ", ".join(sorted(domains)) if domains else "nothing a specialist is for"


def _model_misfit(context: _Context) -> Iterator[Lint]:
    from engine.planner import ALIAS_ROLES

    for task in context.tasks:
        domains = _task_domains(task)
        implied = _implied(domains)
        for alias in task.models:
            if _fits(alias, implied):
                continue
            fitting = _fitting_aliases(implied, context.catalog)
            yield Lint("model-misfit", task.id,
                       f"{task.id} uses {alias} ({ALIAS_ROLES.get(alias, 'a specialist')}), which does not fit it: "
                       f"the request and the prompt are about {_about(domains)}.",
                       f"Use a model that fits, such as {', '.join(fitting[:4])}." if fitting
                       else "Use a general-purpose model.")


def _fitting_aliases(domains: frozenset[str], catalog: Catalog) -> list[str]:
    """The catalog's aliases for ``domains``: its specialists first, then the generalists."""
    roles = alias_domains()
    specialists = sorted(alias for alias in catalog.models if roles.get(alias) and _fits(alias, domains))
    general = [alias for alias in ("medium_ai", "thinking_ai", "general_expert", "fast_ai") if alias in catalog.models]
    return specialists + general


def _addon_misfit(context: _Context) -> Iterator[Lint]:
    for task in context.tasks:
        if task.site.task.kind != "prompt":
            continue
        for name in task.addons:
            addon = context.catalog.addons.get(name)
            if addon is None or addon_fits(addon, task.text):
                continue
            better = [other for other in fitting_addons(task.text, context.catalog) if other not in task.addons]
            yield Lint("addon-misfit", task.id,
                       f"{task.id} uses the addon {name} ({addon.category}: {addon.description}), which has "
                       f"nothing to do with it: the request and the prompt are about {_about(classify(task.text))}.",
                       f"Remove {name}" + (f", or use an addon that fits, such as {', '.join(better[:3])}."
                                            if better else "."))


_LINTS: tuple[Callable[[_Context], Iterator[Lint]], ...] = (
    _identifier_prompt, _duplicate_prompt, _unread_output, _ignores_earlier, _model_misfit, _addon_misfit,
)


def lint_plan(workflow: Workflow, plan: Plan, catalog: Catalog, request: str) -> list[Lint]:
    """Every lint finding of a compiled workflow planned for ``request``, by task in reading order, then in
    the order of ``LINT_CODES``."""
    context = _context(workflow, plan, catalog, request)
    found = [lint for check in _LINTS for lint in check(context)]
    order = {task.id: index for index, task in enumerate(context.tasks)}
    codes = list(LINT_CODES)
    return sorted(found, key=lambda lint: (order.get(lint.task_id or "", -1), codes.index(lint.code)))
