"""From an EngineConfig to the parts an engine runs with: a client per alias, and the model pipeline.

The one place that knows both the configuration and the providers, so
neither has to know the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.catalog import DEFAULT_MODEL_ALIASES
from engine.config import EngineConfig, HttpProviderConfig
from engine.model.client import ModelClient
from engine.model.prices import Price
from engine.providers import build_provider
from engine.resilience.breaker import Breakers
from engine.resilience.cache import model_target
from engine.resilience.call import Sleep
from engine.resilience.cap import CostCap, MemoryCap, RedisCap
from engine.resilience.gates import Gatekeeper
from engine.resilience.pipeline import ModelPipeline, PipelineParts, build_pipeline
from engine.resilience.provider import Clients
from engine.resilience.ratelimit import Limiter, RateLimiter, SharedRateLimiter
from engine.resilience.redis_link import RedisLink
from engine.resilience.slots import Slot
from engine.secrets import Scrubber
from engine.store.base import RunStore

Routes = dict[str, tuple[str, str]]  # alias -> (provider name, the provider's model name)


def clients_for(config: EngineConfig, models: ModelClient | Mapping[str, ModelClient] | None) -> Clients:
    """The configured providers' clients, with ``models`` given directly over them (one client for
    every alias, or one per alias)."""
    aliases = set(DEFAULT_MODEL_ALIASES) | set(config.models)
    if isinstance(models, Mapping):
        return Clients({**build_clients(config, aliases), **models}, targets=model_targets(config, aliases, models))
    if models is not None:
        return Clients({}, default=models)
    return Clients(build_clients(config, aliases), targets=model_targets(config, aliases))


def model_targets(config: EngineConfig, aliases: set[str], given: Mapping[str, ModelClient] | None = None
                  ) -> dict[str, str]:
    """alias -> the model that answers it, for the response cache's key; aliases ``given`` a client
    directly are left out (their client does not answer as the configuration says)."""
    return {alias: model_target(config.providers[name], model, alias)
            for alias, (name, model) in provider_routes(config, aliases).items() if alias not in (given or {})}


def pipeline_for(config: EngineConfig, clients: Clients, breakers: Breakers, *, prices: Mapping[str, Price],
                 model_concurrency: Mapping[str, int], sleep: Sleep, store: RunStore | None = None,
                 links: Links | None = None, cap: CostCap | None = None) -> ModelPipeline:
    """``links``: the Redis links the shared rate limits use (made there as needed, closed by the engine)."""
    windows = {alias: model.context_window for alias, model in config.models.items()}
    routes = provider_routes(config, set(DEFAULT_MODEL_ALIASES))
    return build_pipeline(PipelineParts(
        clients=clients, prices=prices, breakers=breakers,
        gatekeeper=Gatekeeper(config.gates, windows, _configured_abilities(config)),
        tokenizers={alias: model.tokenizer for alias, model in config.models.items()},
        rate_limiters=rate_limiters(config, routes, {} if links is None else links),
        slots=slots(config, routes, model_concurrency), retry=config.retry, sleep=sleep, store=store, cap=cap,
    ))


Links = dict[str, RedisLink]  # Redis URL -> its link, one per server an engine talks to


def link(links: Links, url: str, what: str) -> RedisLink:
    """The link to ``url`` (made on first use; ConfigError without the redis client)."""
    found = links.get(url)
    if found is None:
        found = links[url] = RedisLink(url, what)
    return found


def cost_cap(config: EngineConfig, links: Links) -> CostCap | None:
    """The cost cap across runs that ``budget:`` asks for: in Redis with ``storage``, else in this process."""
    budget = config.budget
    if budget.max_cost_usd is None:
        return None
    if budget.storage is None:
        return MemoryCap(budget.max_cost_usd)
    assert budget.key is not None  # BudgetConfig requires it with storage
    return RedisCap(link(links, budget.storage, "budget.storage"), budget.key, budget.max_cost_usd,
                    reservation_ttl=budget.reservation_ttl)


def secrets(config: EngineConfig) -> Scrubber:
    """Every configured secret, by value: the providers' keys and the values of their extra headers."""
    found: list[str] = []
    for provider in config.providers.values():
        if isinstance(provider, HttpProviderConfig):
            if provider.api_key is not None:
                found.append(provider.api_key.get_secret_value())
            found += provider.headers.values()
    return Scrubber(found)


def slots(config: EngineConfig, routes: Routes, model_concurrency: Mapping[str, int]) -> dict[str, list[Slot]]:
    """alias -> its slots: its own ``model_concurrency``, then its HTTP provider's ``max_connections``."""
    found: dict[str, list[Slot]] = {alias: [(f"alias:{alias}", limit)] for alias, limit in model_concurrency.items()}
    for alias, (name, _) in routes.items():
        provider = config.providers[name]
        if isinstance(provider, HttpProviderConfig):
            found.setdefault(alias, []).append((f"provider:{name}", provider.max_connections))
    return found


def provider_routes(config: EngineConfig, aliases: set[str]) -> Routes:
    """alias -> (provider name, the provider's model name): the listed aliases, and ``aliases`` through
    the default provider."""
    routes = {alias: (model.provider, model.model or alias) for alias, model in config.models.items()}
    if config.default_provider is not None:
        for alias in aliases - routes.keys():
            routes[alias] = (config.default_provider, alias)
    return routes


def build_clients(config: EngineConfig, aliases: set[str]) -> dict[str, ModelClient]:
    """A client for every routed alias; aliases of one provider share its client."""
    routes = provider_routes(config, aliases)
    providers = {}
    for name, provider in config.providers.items():
        served = {alias: model for alias, (owner, model) in routes.items() if owner == name}
        if served or name == config.default_provider:
            providers[name] = build_provider(name, provider, served)
    return {alias: providers[owner] for alias, (owner, _) in routes.items()}


def _configured_abilities(config: EngineConfig) -> dict[str, frozenset[str]]:
    """What each alias under `models:` can do, for the gates: "vision", "image", "video"."""
    return {alias: frozenset({"vision"} if model.vision else set()) | frozenset(model.generates)
            for alias, model in config.models.items()}


def abilities(config: EngineConfig, clients: Clients) -> tuple[set[str], dict[str, set[str]]]:
    """The aliases that read images, and those that make each medium: as configured under `models:`,
    or as a client given directly says (``reads_images(alias)``, ``generates``; a client for every
    alias speaks for every alias the engine knows)."""
    vision: set[str] = {alias for alias, model in config.models.items() if model.vision}
    makers: dict[str, set[str]] = {}
    for alias, model in config.models.items():
        for media in model.generates:
            makers.setdefault(media, set()).add(alias)
    given = dict(clients.by_alias)
    if clients.default is not None:
        given.update(dict.fromkeys((DEFAULT_MODEL_ALIASES | set(config.models)) - given.keys(), clients.default))
    for alias, client in given.items():
        reads = getattr(client, "reads_images", None)
        if alias not in config.models and callable(reads) and reads(alias):
            vision.add(alias)
        for media in getattr(client, "generates", ()) if alias not in config.models else ():
            makers.setdefault(str(media), set()).add(alias)
    return vision, makers


def prices(config: EngineConfig) -> dict[str, Price]:
    return {alias: Price(m.input_price, m.output_price, m.cached_input_price, m.image_price, m.video_price)
            for alias, m in config.models.items()}


def rate_limiters(config: EngineConfig, routes: Routes, links: Links) -> dict[str, Limiter]:
    """One limiter per provider with limits, shared by every alias it serves: its window in Redis with
    ``rate_limits.storage``, else in this process."""
    storage = config.rate_limits.storage
    limiters: dict[str, Limiter] = {}
    for name, provider in config.providers.items():
        if provider.rpm or provider.tpm:
            limiters[name] = RateLimiter(provider.rpm, provider.tpm) if storage is None else SharedRateLimiter(
                link(links, storage, "rate_limits.storage"), name, provider.rpm, provider.tpm)
    return {alias: limiters[name] for alias, (name, _) in routes.items() if name in limiters}


def model_rows(config: EngineConfig, breakers: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per alias: provider, its kind and model name (None if no provider serves the alias),
    context window (None if not configured), dollars per million tokens, circuit breaker state."""
    from engine.model.prices import FREE

    aliases = set(DEFAULT_MODEL_ALIASES) | set(config.models)
    routes, costs = provider_routes(config, aliases), prices(config)
    rows = []
    for alias in sorted(aliases):
        provider, model = routes.get(alias, (None, None))
        settings, price = config.models.get(alias), costs.get(alias, FREE)
        rows.append({
            "alias": alias, "provider": provider, "kind": config.providers[provider].kind if provider else None,
            "model": model, "context_window": settings.context_window if settings is not None else None,
            "input_price": price.input, "output_price": price.output,
            "breaker": breakers.get(alias, {}).get("state", "closed"),  # a breaker exists once its alias is called
        })
    return rows
