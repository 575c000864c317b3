"""The workflow DSL (``dsl: orchestrion/v1``) as strict pydantic models.

Every field carries a description: they become the documentation of the
published JSON Schema. Policies (``model``, ``retry``, ``timeout``...) follow
one rule everywhere: a field that is absent inherits from ``defaults`` (then
from the engine), a value overrides, and an explicit ``null`` switches it off.
Whether a field was given is read from pydantic's ``model_fields_set``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from engine.dsl.source import Origin

DSL_VERSION = "orchestrion/v1"
TaskKind = Literal["prompt", "call", "workflow", "plan", "generate"]
TASK_KINDS: tuple[TaskKind, ...] = ("prompt", "call", "workflow", "plan")  # the keys that give a task its kind
# (`generate: image|video` with a `prompt` is the fifth kind: a prompt that asks for media instead of text)

# The one list of names no input, task id or `for_each` item (`as`) may take, each with why:
# a template would read them as something else.
RESERVED_NAMES: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys(("and", "or", "not", "in", "is", "if", "else", "elif"), "a Jinja keyword"),
    **dict.fromkeys(("true", "false", "none", "True", "False", "None"), "a Jinja constant"),
    **dict.fromkeys(("range", "dict", "lipsum", "cycler", "joiner", "namespace"), "a Jinja function"),
    **dict.fromkeys(("self", "super", "caller", "varargs", "kwargs"), "a name Jinja binds in blocks and macros"),
    "loop": "`loop.round` in a repeated stage (and Jinja's loop variable)",
    "item": "the current item of a `for_each`",
})


def why_reserved(name: str) -> str | None:
    """Why ``name`` cannot be given to an input, a task or an item, or None if it can."""
    why = RESERVED_NAMES.get(name)
    return None if why is None else f"{name!r} is a reserved name: it is {why}"


Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
ModelAlias = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$", max_length=128)]
FunctionName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*([.:][A-Za-z_][A-Za-z0-9_]*)*$")
]
ModelChain = Annotated[list[ModelAlias], Field(min_length=1, json_schema_extra={"uniqueItems": True})]
JsonSchema = dict[str, Any]


class FieldError(ValueError):
    """Raised by validators to point at a field below the validated object."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class StrictModel(BaseModel):
    # strict: "100" is not 100, so pydantic agrees with the JSON Schema.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


TransientKind = Literal["rate_limit", "server_error", "timeout", "connection"]
FailureAction = Literal["retry", "fallback", "retry_then_fallback"]


class RetryPolicy(StrictModel):
    """Exponential backoff with jitter. Fields left out inherit from `defaults.retry`."""

    max_attempts: int | None = Field(None, ge=1, le=100, description="Attempts in all, the first included.")
    initial_delay: float | None = Field(None, ge=0, description="Seconds before the first retry.")
    backoff: float | None = Field(None, ge=1, description="Factor the delay grows by after each attempt.")
    max_delay: float | None = Field(None, ge=0, description="Cap in seconds on one delay, applied after jitter.")
    jitter: Literal["full", "none"] | None = Field(
        None, description="`full`: each delay is random between 0 and its exponential value."
    )
    max_elapsed: float | None = Field(
        None, gt=0, description="Total seconds of retrying for the task, apart from each attempt's `timeout`."
    )
    on: dict[TransientKind, FailureAction] | None = Field(
        None, description="What a transient error does, per class: `retry` the same model (never the next), "
        "`fallback` to the next model of the chain at once (retried only when there is none), or "
        "`retry_then_fallback`. Classes left out inherit; by default `connection`, `timeout` and "
        "`server_error` fall back at once and `rate_limit` retries first.",
    )


class OutputSpec(StrictModel):
    """What a task returns: text by default, JSON validated against `schema` if given."""

    schema_: JsonSchema | None = Field(
        None, alias="schema",
        description="JSON Schema (2020-12) the output must match; the task then returns parsed JSON.",
    )

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: JsonSchema | None) -> JsonSchema | None:
        if value is not None:
            _check_json_schema(value, ())
        return value


# A duration: a positive number and its unit, seconds, minutes, hours or days (`90s`, `10m`, `1.5h`, `7d`).
# No lookahead for "not zero" (pydantic's regex engine has none): a nonzero digit before or after the point.
Duration = Annotated[str, StringConstraints(
    pattern=r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)[smhd]$")]
DURATION_UNITS: Mapping[str, int] = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400})


def duration_seconds(value: float | str) -> float:
    """A `Duration` (or a number of seconds) in seconds."""
    if isinstance(value, str):
        return float(value[:-1]) * DURATION_UNITS[value[-1]]
    return float(value)


class CachePolicy(StrictModel):
    """The response cache's settings. Fields left out inherit from `defaults.cache`."""

    ttl: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Duration | None = Field(
        None, description="How long an answer is kept: seconds, or a duration such as `90s`, `10m`, `1h`, `7d`. "
        "Absent: inherited from `defaults.cache`, else kept until `orchestrion cache clear`; `null`: kept until "
        "cleared.",
    )


class Policies(StrictModel):
    """Settings a task inherits from `defaults`; `null` switches one off."""

    model: ModelAlias | ModelChain | None = Field(
        None, description="Model alias, or a list of aliases tried in order as a fallback chain."
    )
    system: str | None = Field(None, description="System prompt (a Jinja template).")
    addons: list[Identifier] | None = Field(
        None, description="Names of prompt addons (files in `addons/`) added to the system prompt."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = Field(None, ge=1, description="Cap on the tokens the model generates.")
    timeout: float | None = Field(None, gt=0, description="Seconds allowed for one attempt.")
    retry: RetryPolicy | None = Field(None, description="Retry policy; `null` means a single attempt.")
    critical: bool | None = Field(
        None, description="If true (the default) a failure fails the run; if false the output is null."
    )
    hedge_after: float | None = Field(
        None, gt=0, description="Seconds after which a model of the fallback chain that has not answered is "
        "joined by the next one, asked the same; the first answer wins and the other call is cancelled "
        "(both are paid for). For chains of two or more models.",
    )
    cache: bool | CachePolicy | None = Field(
        None, description="The response cache, for `prompt` tasks: `true` (or an object) answers a request "
        "asked before, exactly (same model behind the alias, messages, temperature, max_tokens, output schema), "
        "from the cache at no cost, and keeps each new valid answer; `false` or `null` switch it off.",
    )

    @field_validator("model")
    @classmethod
    def _chain_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError("a model appears twice in the fallback chain")
        return value


# Fields that belong to one kind of task, and the kinds that accept each.
KIND_FIELDS: dict[str, frozenset[str]] = {
    "model": frozenset({"prompt", "plan", "generate"}),
    "system": frozenset({"prompt"}),
    "addons": frozenset({"prompt"}),
    "temperature": frozenset({"prompt", "plan"}),
    "max_tokens": frozenset({"prompt", "plan"}),
    "hedge_after": frozenset({"prompt", "plan"}),
    "cache": frozenset({"prompt"}),  # a planner's answers are checked by the planner, not kept
    "output": frozenset({"prompt", "call"}),
    "with_": frozenset({"call", "workflow"}),
    "images": frozenset({"prompt"}),
    "size": frozenset({"generate"}),
    "count": frozenset({"generate"}),
    "seconds": frozenset({"generate"}),
    "aspect_ratio": frozenset({"generate"}),
}
IMAGE_INPUT_KEYS = frozenset({"type", "description", "title", "default"})  # of an input `{type: image}`


class Task(Policies):
    """A unit of work. Its kind is given by which of `prompt`, `call`, `workflow`, `plan` it has."""

    id: Identifier = Field(description="Unique name of the task; later templates refer to its output by it.")
    description: str | None = Field(None, description="What the task is for (shown in graphs).")
    prompt: str | None = Field(None, description="An LLM call: the user message, a Jinja template.")
    call: FunctionName | None = Field(None, description="A Python function registered with the engine.")
    workflow: str | None = Field(
        None, min_length=1, description="Another workflow to run: a template name or a path to its file."
    )
    plan: str | None = Field(
        None, description="A request for the master planner (a Jinja template); the workflow it "
        "writes is validated, then run.",
    )
    with_: dict[str, Any] | None = Field(
        None, alias="with", description="Arguments of `call`, or inputs of `workflow`; strings are templates."
    )
    images: list[str] | None = Field(
        None, max_length=32, description="Images sent with the prompt: Jinja expressions naming `type: image` "
        "inputs or outputs of `generate: image` tasks (a list of them counts each). Every model of the task's "
        "chain must read images (`vision: true` in its configuration).",
    )
    generate: Literal["image", "video"] | None = Field(
        None, description="Make media instead of text: `prompt` describes it; the output names the files written "
        "under the run's artefact folder (`path`, `media_type`, `bytes`; a list when `count` > 1). The model "
        "must be configured with `generates: [image]` or `[video]`.",
    )
    size: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")] | None = Field(
        None, description="`generate: image`: width x height in pixels, such as `1024x1024`.")
    count: int | None = Field(None, ge=1, le=10, description="`generate: image`: how many images.")
    seconds: int | None = Field(None, ge=1, le=60, description="`generate: video`: its length in seconds.")
    aspect_ratio: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]?:[1-9][0-9]?$")] | None = Field(
        None, description="`generate: video`: its aspect ratio, such as `16:9`.")
    output: OutputSpec | None = Field(None, description="Shape of the output.")
    when: str | None = Field(None, description="Jinja expression; if false the task is skipped.")
    for_each: str | None = Field(
        None, description="Jinja expression giving a list: the task runs once per item; "
        "its output is the list of results, in order.",
    )
    as_: Identifier | None = Field(None, alias="as", description="Name of the current item (default `item`).")
    max_concurrency: int | None = Field(None, ge=1, description="Items of `for_each` run at once.")
    after: list[Identifier] = Field(
        default_factory=list, description="Ids of tasks that must finish first (ordering without data)."
    )

    @property
    def kind(self) -> TaskKind:
        if self.generate is not None:
            return "generate"
        return next(kind for kind in TASK_KINDS if getattr(self, kind) is not None)

    @model_validator(mode="after")
    def _one_kind(self) -> Task:
        given = [kind for kind in TASK_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"a task needs exactly one of prompt, call, workflow, plan (found: {found})")
        kind: str = given[0]
        if self.generate is not None:
            if kind != "prompt":
                raise FieldError(("generate",), f"`generate` goes with a `prompt` describing the {self.generate}, "
                                 f"not with `{kind}`")
            kind = "generate"
            self._check_generation()
        for name, kinds in KIND_FIELDS.items():
            if name in self.model_fields_set and kind not in kinds:
                key = name.rstrip("_")
                raise FieldError((key,), f"`{key}` does not apply to a `{kind}` task")
        for name in ("as_", "max_concurrency"):
            if name in self.model_fields_set and self.for_each is None:
                raise FieldError((name.rstrip("_"),), "needs `for_each`")
        return self

    def _check_generation(self) -> None:
        other = "image" if self.generate == "video" else "video"
        for name in (("size", "count") if self.generate == "video" else ("seconds", "aspect_ratio")):
            if getattr(self, name) is not None:
                hint = ("a video is shaped by `aspect_ratio` and `seconds`" if other == "image"
                        else "images are shaped by `size` and `count`")
                raise FieldError((name,), f"`{name}` is for `generate: {other}`, not `generate: {self.generate}` "
                                 f"({hint})")


class Repeat(StrictModel):
    """Run the stage again, at most `max_rounds` times in all, until `until` holds."""

    max_rounds: int = Field(ge=1, le=100, description="Rounds at most, the first included.")
    until: str | None = Field(
        None, description="Jinja expression checked after each round; true ends the loop."
    )


def _stage_item_tag(value: Any) -> str:
    if isinstance(value, dict):
        return "stage" if "type" in value else "task"
    return "stage" if isinstance(value, Stage) else "task"


StageItem = Annotated[
    Annotated[Task, Tag("task")] | Annotated["Stage", Tag("stage")],
    Discriminator(_stage_item_tag),
]


class Stage(StrictModel):
    """A group of tasks: `linear` runs them in parallel, `inline` one after another."""

    type: Literal["linear", "inline"] = Field(
        description="`linear`: items run in parallel; `inline`: items run in order."
    )
    name: str | None = Field(None, description="Label shown in graphs.")
    description: str | None = Field(None, description="What the stage is for.")
    tasks: list[StageItem] = Field(
        min_length=1, description="Tasks, or nested stages (an object with `type`) in place of tasks."
    )
    repeat: Repeat | None = Field(None, description="Run the stage as a bounded loop.")


# The engine's bounds on a whole run, nested runs included, when `limits:` does not set them.
DEFAULT_MAX_TASKS = 10_000
DEFAULT_MAX_DEPTH = 8


class Limits(StrictModel):
    """Bounds on one run of the workflow."""

    max_cost_usd: float | None = Field(None, ge=0, description="Stop before a call would pass this cost.")
    max_concurrency: int | None = Field(None, ge=1, description="Tasks running at once.")
    timeout: float | None = Field(None, gt=0, description="Seconds allowed for the whole run.")
    max_tasks: int | None = Field(
        None, ge=1, description="Task instances the whole run may start, nested workflows included: a task "
        "counts once, a `for_each` once per item, a task of a repeated stage once per round. Past it the run fails. "
        f"Absent or null: the engine's bound ({DEFAULT_MAX_TASKS:,} by default), which is also the most "
        "a workflow may set. Only the top-level run's value counts; a nested workflow's is not used.",
    )
    max_depth: int | None = Field(
        None, ge=1, le=64, description="How deep `workflow:` and `plan:` tasks may nest runs; one level "
        f"more fails the run. Absent or null: the engine's bound ({DEFAULT_MAX_DEPTH} by default), which is "
        "also the most a workflow may set. Only the top-level run's value counts.",
    )


class Workflow(StrictModel):
    """An Orchestrion workflow: stages of tasks that call models, functions, workflows or the planner."""

    schema_url: str | None = Field(None, alias="$schema", description="JSON Schema of this document.")
    dsl: Literal["orchestrion/v1"] = Field(description="Version of the DSL; always `orchestrion/v1`.")
    name: str = Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=128, description="Name of the workflow."
    )
    version: str = Field(
        "0.1.0", pattern=r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$", description="Semver of this definition."
    )
    description: str | None = Field(None, description="What the workflow does.")
    inputs: dict[Identifier, JsonSchema] = Field(
        default_factory=dict, description="Inputs, each a JSON Schema; one with a `default` is optional."
    )
    defaults: Policies = Field(default_factory=Policies, description="Policies every task inherits.")
    limits: Limits = Field(default_factory=Limits, description="Bounds on a run.")
    schedule: Literal["dataflow", "staged"] = Field(
        "dataflow", description="`dataflow`: a task starts once what it needs is done; "
        "`staged`: each stage waits for the previous one.",
    )
    stages: list[Stage] = Field(min_length=1, description="The stages, in order.")
    outputs: dict[Identifier, str] = Field(
        default_factory=dict, description="Named results of the run, each a Jinja template."
    )

    _origin: Any = PrivateAttr(None)

    @property
    def origin(self) -> Origin | None:
        """Where the workflow was loaded from (None for one built in code)."""
        origin: Origin | None = self._origin
        return origin

    @field_validator("inputs")
    @classmethod
    def _valid_inputs(cls, inputs: dict[str, JsonSchema]) -> dict[str, JsonSchema]:
        for name, schema in inputs.items():
            problem = why_reserved(name)
            if problem is not None:
                raise FieldError((name,), f"{problem}; choose another input name")
            if schema.get("type") == "image":
                _check_image_input(schema, (name,))
                continue
            _check_json_schema(schema, (name,))
            if "default" in schema:
                _check_instance(schema["default"], schema, (name, "default"))
        return inputs


def is_image_input(schema: Mapping[str, Any]) -> bool:
    """An input declared `{type: image}`: a path, a data: or https URL, or bytes, read as an image."""
    return schema.get("type") == "image"


def _check_image_input(schema: JsonSchema, path: tuple[str | int, ...]) -> None:
    for key in schema:
        if key not in IMAGE_INPUT_KEYS:
            raise FieldError((*path, key), f"an image input takes {', '.join(sorted(IMAGE_INPUT_KEYS))}, not `{key}`")
    if schema.get("default", None) is not None:
        raise FieldError((*path, "default"), "an image input's default can only be null (the input is then optional)")


def _check_json_schema(schema: JsonSchema, path: tuple[str | int, ...]) -> None:
    from jsonschema import Draft202012Validator, SchemaError  # 85 ms: only when a schema is given

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = tuple(exc.path)
        raise FieldError(path + where, f"not a valid JSON Schema: {exc.message}") from None


def _check_instance(value: Any, schema: JsonSchema, path: tuple[str | int, ...]) -> None:
    from jsonschema import Draft202012Validator

    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        raise FieldError(path, f"the default does not match the input's schema: {error.message}")


Stage.model_rebuild()
