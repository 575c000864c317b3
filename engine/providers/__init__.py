"""Model providers: one module per wire format, one Protocol (``engine.ModelClient``).

``build_clients`` turns an EngineConfig into a client per alias. Each kind's
module is imported only when a provider of that kind is configured, so httpx
and llama-cpp-python cost nothing to an engine that does not use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.config import EngineConfig, ProviderConfig
    from engine.runtime.model import ModelClient


def build_provider(name: str, config: ProviderConfig, models: Mapping[str, str]) -> ModelClient:
    """The client for one configured provider; ``models`` maps its aliases to the provider's model names."""
    if config.kind == "fake":
        from engine.testing import FakeModel

        return FakeModel(config.answers, echo=config.echo, latency=config.latency)
    if config.kind == "openai":
        from engine.providers.openai import OpenAIProvider

        return OpenAIProvider(name, config, models)
    if config.kind == "anthropic":
        from engine.providers.anthropic import AnthropicProvider

        return AnthropicProvider(name, config, models)
    if config.kind == "gemini":
        from engine.providers.gemini import GeminiProvider

        return GeminiProvider(name, config, models)
    if config.kind == "llama_cpp":
        from engine.providers.llama_cpp import LlamaCppProvider

        return LlamaCppProvider(name, config)
    raise ConfigError(f"provider {name!r}: unknown kind {config.kind!r}")


def build_clients(config: EngineConfig, aliases: set[str]) -> dict[str, ModelClient]:
    """A client for every alias: the listed ones, and ``aliases`` through the default provider."""
    routes = {alias: (model.provider, model.model or alias) for alias, model in config.models.items()}
    if config.default_provider is not None:
        for alias in aliases - routes.keys():
            routes[alias] = (config.default_provider, alias)
    providers = {}
    for name, provider in config.providers.items():
        served = {alias: model for alias, (owner, model) in routes.items() if owner == name}
        if served or name == config.default_provider:
            providers[name] = build_provider(name, provider, served)
    return {alias: providers[owner] for alias, (owner, _) in routes.items()}
