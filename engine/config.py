"""The engine's configuration file (``orchestrion.yaml``), as pydantic models.

    providers:                          # named model services
      openrouter: {kind: openai, base_url: https://openrouter.ai/api/v1,
                   api_key: "${OPENROUTER_API_KEY}", rpm: 60, tpm: 200000}
      claude: {kind: anthropic, api_key: "${ANTHROPIC_API_KEY}"}
      google: {kind: gemini, api_key: "${GEMINI_API_KEY}"}
      local: {kind: llama_cpp}          # the embedded Gemma 3 270M model
      dry: {kind: fake}                 # FakeModel: scripted answers or an echo
    models:                             # alias -> provider, model name, window, prices
      fast_ai: {provider: openrouter, model: openai/gpt-4o-mini, context_window: 128000,
                input_price: 0.15, output_price: 0.60, cached_input_price: 0.075, tokenizer: o200k_base,
                vision: true}
      image_ai: {provider: google, model: gemini-2.5-flash-image, generates: [image], image_price: 0.039}
    default_provider: local             # answers every alias not listed under models
    gates:                              # by the rendered request's tokens, first match from the top
      - {above: 900000, deny: true}
      - {above: 200000, use: gemini_pro}
      - {above: 100000, use: thinking_ai}
    retry: {attempts: {rate_limit: 6, server_error: 4, timeout: 3, connection: 4}, retry_after_max: 60}
    breaker: {failures: 5, reset_timeout: 60, storage: "redis://127.0.0.1:6379/0"}
    rate_limits: {storage: "redis://127.0.0.1:6379/0"}   # providers' rpm/tpm held by every process together
    budget: {max_cost_usd: 25.0, storage: "redis://127.0.0.1:6379/0", key: batch-2026-11}  # across runs
    model_concurrency: {fast_ai: 4}

``${NAME}`` is replaced by the environment variable NAME; a missing one is an
error naming it. Keys are SecretStr: they never appear in a repr, a log line,
an event, a result or an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from engine.dsl.models import StrictModel
from engine.dsl.source import located_errors, read_document
from engine.errors import ConfigError, Path as DataPath, format_path
from engine.providers.settings import (  # re-exported: they are part of the configuration file
    PROVIDER_KINDS,
    FakeProviderConfig,
    HttpProviderConfig,
    LlamaCppProviderConfig,
    ProviderConfig,
)

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ModelConfig(StrictModel):
    """One model alias."""

    provider: str = Field(description="Name of a provider under `providers`.")
    model: str | None = Field(None, description="The provider's name for the model (default: the alias).")
    context_window: int | None = Field(None, ge=1, description="Tokens the model accepts, prompt and answer.")
    input_price: float = Field(0.0, ge=0, description="US dollars per million input tokens.")
    output_price: float = Field(0.0, ge=0, description="US dollars per million output tokens.")
    cached_input_price: float | None = Field(None, ge=0, description="Dollars per million cached input tokens.")
    tokenizer: Literal["cl100k_base", "o200k_base"] | None = Field(
        None, description="tiktoken vocabulary for counting tokens (OpenAI-family models).")
    vision: bool = Field(False, description="The model reads images: tasks with `images:` may use it (checked "
                         "before a run). Not the embedded Gemma 3 270M, which reads text only.")
    generates: list[Literal["image", "video"]] = Field(
        default_factory=list, description="What `generate:` tasks may ask of it: `image` (the OpenAI images API, "
        "Gemini image models), `video` (Gemini's Veo, a long-running operation).")
    image_price: float = Field(0.0, ge=0, description="US dollars per image it generates.")
    video_price: float = Field(0.0, ge=0, description="US dollars per second of video it generates.")


class GateRule(StrictModel):
    """Above ``above`` tokens, send the call to ``use``, or deny it."""

    above: int = Field(ge=0, description="Token count of the rendered request this rule starts above.")
    use: str | None = Field(None, description="Alias that takes the call instead.")
    deny: bool = Field(False, description="Refuse the call, before anything is spent.")

    @model_validator(mode="after")
    def _one_action(self) -> GateRule:
        if (self.use is None) == (not self.deny):
            raise ValueError("a gate either `use`s another alias or `deny`s, not both or neither")
        return self


TransientKind = Literal["rate_limit", "server_error", "timeout", "connection"]
DEFAULT_ATTEMPTS: dict[TransientKind, int] = {"rate_limit": 6, "server_error": 4, "timeout": 3, "connection": 4}


class RetryConfig(StrictModel):
    """Engine-wide retry rules; a task's own `retry` still caps its attempts."""

    attempts: dict[TransientKind, int] = Field(
        default_factory=lambda: dict(DEFAULT_ATTEMPTS),
        description="Attempts at most for each class of transient error.")
    retry_after_max: float = Field(60.0, ge=0, description="Longest `Retry-After` honoured, in seconds.")


class BreakerConfig(StrictModel):
    """Circuit breakers, one per model endpoint."""

    failures: int = Field(5, ge=1, description="Consecutive failures that open the breaker.")
    reset_timeout: float = Field(60.0, gt=0, description="Seconds open before one trial call is let through.")
    storage: str | None = Field(None, description="`redis://host:port/db` to share breaker state across processes.")

    @model_validator(mode="after")
    def _storage_is_redis(self) -> BreakerConfig:
        _redis_url(self.storage, "breaker.storage")
        return self


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(value: str | None, where: str) -> str | None:
    if value is not None and not value.startswith(REDIS_SCHEMES):
        raise ValueError(f"{where} is a Redis URL: redis://[:password@]host:port/db, rediss://... or unix://...")
    return value


class RateLimitConfig(StrictModel):
    """Where the providers' ``rpm``/``tpm`` windows are kept."""

    storage: str | None = Field(
        None, description="`redis://host:port/db` to hold each provider's rpm/tpm across every process (workers, "
        "Ray actors) that uses this Redis: together they stay under the limits. Each provider's window is keyed "
        "by its name under `providers`, so workers name it the same. Absent: each process keeps its own window. "
        "If Redis cannot be reached, calls go on limited by their own process (a warning is logged) and Redis is "
        "tried again after a few seconds.")

    @model_validator(mode="after")
    def _storage_is_redis(self) -> RateLimitConfig:
        _redis_url(self.storage, "rate_limits.storage")
        return self


class BudgetConfig(StrictModel):
    """A cost cap across runs: every run of the engine (and, with ``storage``, of every process) together."""

    max_cost_usd: float | None = Field(
        None, ge=0, description="US dollars that the model calls of every run together may spend; a call that "
        "would pass it fails with BudgetExceededError (estimated and reserved before the call, settled on its "
        "real usage after it), and a batch stops starting runs once a call was refused. Each run's own "
        "`limits.max_cost_usd` still holds. Absent: no cap across runs.")
    storage: str | None = Field(
        None, description="`redis://host:port/db` to share the cap among processes (workers, Ray actors). "
        "Absent: the cap holds for this process's engine alone (and a Ray batch refuses it). If Redis cannot "
        "be reached, calls are refused (BudgetExceededError): spend that cannot be counted is not made.")
    key: str | None = Field(
        None, min_length=1, max_length=200, description="With `storage`: the name of what the cap counts "
        "(e.g. `batch-2026-11`); processes with the same key share one spend. Spend under a key is kept "
        "in Redis until deleted: a new key starts from nothing.")
    reservation_ttl: float = Field(
        900.0, gt=0, description="With `storage`: seconds a call's reservation is held if its process never "
        "settles it (it died); longer than any call, waits for rate limits included.")

    @model_validator(mode="after")
    def _coherent(self) -> BudgetConfig:
        _redis_url(self.storage, "budget.storage")
        if self.storage is not None and self.key is None:
            raise ValueError("budget.storage needs a `key` naming what the shared cap counts (e.g. the batch)")
        if self.storage is None and self.key is not None:
            raise ValueError("budget.key names a cap shared through `storage`: give budget.storage too")
        if self.storage is not None and self.max_cost_usd is None:
            raise ValueError("budget.storage shares a cap: give budget.max_cost_usd")
        return self


class StoreConfig(StrictModel):
    """Where runs, results, model calls and cached answers are kept."""

    url: str | None = Field(None, description="A database URL: `sqlite+aiosqlite:///path/runs.db` or "
                            "`postgresql+asyncpg://user@host/db`. Absent: a SQLite file in the user's data folder.")


class PlannerConfig(StrictModel):
    """How the master planner writes workflows."""

    mode: Literal["auto", "guided", "free"] = Field(
        "auto", description="`free`: the model writes the workflow in the DSL (for capable models); `guided`: "
        "a template or a pattern is chosen (by keywords, or by the model from an enum) and the prompts are "
        "written from skeletons, for small models; `auto`: guided when the planner's alias runs in process "
        "(llama_cpp), free otherwise.")
    choose_with_model: bool = Field(
        False, description="Guided mode: when no keyword decides the pattern, ask the planner model to choose one "
        "(a constrained choice). Off by default: the packaged 270M model chose worse than the fixed rule.")


class EngineConfig(StrictModel):
    """An engine's providers, model aliases, gates and resilience settings."""

    providers: dict[str, ProviderConfig] = Field(default_factory=dict, description="Model services by name.")
    models: dict[str, ModelConfig] = Field(default_factory=dict, description="Model aliases.")
    default_provider: str | None = Field(None, description="Provider for aliases not under `models`.")
    gates: list[GateRule] = Field(default_factory=list, description="Token gates, checked from the top.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retry rules.")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Circuit breaker rules.")
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig,
                                         description="Where the providers' rpm/tpm limits are counted.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="A cost cap across runs and processes.")
    model_concurrency: dict[str, int] = Field(default_factory=dict, description="Calls at once per alias.")
    planner: PlannerConfig = Field(default_factory=PlannerConfig, description="The master planner.")
    artifacts: str | None = Field(
        None, description="Folder for generated media (and image inputs given as bytes or URLs), one folder per "
        "run. Absent: `artifacts` beside the default run store, in the user's data folder.")
    store: StoreConfig | None = Field(None, description="The run store for `orchestrion` commands (absent: a SQLite "
                                      "file in the user's data folder; null: keep nothing). Engine(store=...) in code.")

    @model_validator(mode="after")
    def _names_exist(self) -> EngineConfig:
        named = {f"models.{alias}.provider": model.provider for alias, model in self.models.items()}
        if self.default_provider is not None:
            named["default_provider"] = self.default_provider
        for where, provider in named.items():
            if provider not in self.providers:
                known = ", ".join(self.providers) or "none"
                raise ValueError(f"{where}: unknown provider {provider!r} (providers: {known})")
        for index, gate in enumerate(self.gates):
            if gate.use is not None and gate.use not in self.models and self.default_provider is None:
                raise ValueError(f"gates[{index}].use: unknown model alias {gate.use!r}")
        return self


def embedded_config() -> EngineConfig:
    """The configuration of ``Engine()`` given nothing: every alias on the local model, in process."""
    return EngineConfig(providers={"local": LlamaCppProviderConfig(kind="llama_cpp")}, default_provider="local")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> EngineConfig:
    """Read and validate an engine configuration file; ConfigError says what and where."""
    path = Path(path)
    document = read_document(path, ConfigError, "configuration")
    if isinstance(document.data, dict) and {"dsl", "stages", "workflow"} & document.data.keys():
        raise ConfigError(f"{path} looks like a workflow, not an engine configuration (providers, models, gates...): "
                          "give a workflow as the FILE to run, and a configuration to --config")
    environ = os.environ if environ is None else environ
    data = _substitute(document.data, (), environ, lambda where: str(document.source.locate(where)))
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(located_errors(exc.errors(), document.source, _without_kind_tag)) from None


def _without_kind_tag(loc: DataPath) -> DataPath:
    """``providers.dry.fake.latency`` -> ``providers.dry.latency``: the union's tag is not in the document."""
    if loc[:1] == ("providers",) and len(loc) > 2 and loc[2] in PROVIDER_KINDS:
        return loc[:2] + loc[3:]
    return loc


def _substitute(value: Any, path: DataPath, environ: Mapping[str, str], locate: Any) -> Any:
    """Replace ``${NAME}`` in every string by the environment variable NAME."""
    if isinstance(value, dict):
        return {key: _substitute(item, (*path, key), environ, locate) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, (*path, index), environ, locate) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{locate(path)}: {format_path(path)}: the environment variable {name} is not set")
        return environ[name]

    return _ENV_REFERENCE.sub(lookup, value)


__all__ = [
    "BreakerConfig", "BudgetConfig", "EngineConfig", "FakeProviderConfig", "GateRule", "HttpProviderConfig",
    "LlamaCppProviderConfig", "ModelConfig", "ProviderConfig", "RateLimitConfig", "RetryConfig", "load_config",
]
