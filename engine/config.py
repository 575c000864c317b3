"""The engine's configuration file (``orchestrion.yaml``), as pydantic models.

    providers:                  # named model services
      dry: {kind: fake}         # answered by FakeModel: scripted answers or an echo
    models:                     # alias -> provider, model name, window, prices
      fast_ai: {provider: dry, model: echo, context_window: 8192,
                input_price: 0.15, output_price: 0.60}
    default_provider: dry       # answers every alias not listed under models
    model_concurrency: {fast_ai: 4}

Only the ``fake`` provider kind exists so far; the HTTP providers and the
embedded local model plug into the same ``kind`` field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from engine.dsl.models import StrictModel
from engine.dsl.source import parse_document
from engine.errors import ConfigError, WorkflowError


class FakeProviderConfig(StrictModel):
    """Answers from ``engine.testing.FakeModel``: scripted per alias, else an echo."""

    kind: Literal["fake"] = Field(description="Provider kind.")
    answers: dict[str, Any] = Field(default_factory=dict,
                                    description="Scripted answers per alias (a list is served in order).")
    latency: float = Field(0.0, ge=0, description="Seconds each answer takes.")
    echo: bool = Field(True, description="Echo the prompt for aliases without answers.")


class ModelConfig(StrictModel):
    """One model alias."""

    provider: str = Field(description="Name of a provider under `providers`.")
    model: str | None = Field(None, description="The provider's name for the model (default: the alias).")
    context_window: int | None = Field(None, ge=1, description="Tokens the model accepts.")
    input_price: float = Field(0.0, ge=0, description="US dollars per million input tokens.")
    output_price: float = Field(0.0, ge=0, description="US dollars per million output tokens.")
    cached_input_price: float | None = Field(None, ge=0, description="Dollars per million cached input tokens.")


class EngineConfig(StrictModel):
    """An engine's providers, model aliases and limits."""

    providers: dict[str, FakeProviderConfig] = Field(default_factory=dict, description="Model services by name.")
    models: dict[str, ModelConfig] = Field(default_factory=dict, description="Model aliases.")
    default_provider: str | None = Field(None, description="Provider for aliases not under `models`.")
    model_concurrency: dict[str, int] = Field(default_factory=dict, description="Calls at once per alias.")

    @model_validator(mode="after")
    def _providers_exist(self) -> EngineConfig:
        named = {f"models.{alias}.provider": model.provider for alias, model in self.models.items()}
        if self.default_provider is not None:
            named["default_provider"] = self.default_provider
        for where, provider in named.items():
            if provider not in self.providers:
                known = ", ".join(self.providers) or "none"
                raise ValueError(f"{where}: unknown provider {provider!r} (providers: {known})")
        return self


def load_config(path: str | Path) -> EngineConfig:
    """Read and validate an engine configuration file; ConfigError says what and where."""
    path = Path(path)
    try:
        document = parse_document(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except WorkflowError as exc:
        raise ConfigError(str(exc.problems[0])) from None
    try:
        return EngineConfig.model_validate(document.data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = document.source.locate(tuple(error["loc"]))
            lines.append(f"{where}: {'.'.join(map(str, error['loc'])) or '<config>'}: {error['msg']}")
        raise ConfigError("\n".join(lines)) from None
