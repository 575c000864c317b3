"""Model providers: one module per wire format, one Protocol (``engine.ModelClient``).

Every kind is registered by name in ``PROVIDER_KINDS`` (``settings.py``), the
fake one included; ``build_provider`` imports a kind's module only when a
provider of that kind is configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.errors import ConfigError
from engine.providers.settings import PROVIDER_KINDS

if TYPE_CHECKING:
    from engine.model.client import ModelClient
    from engine.providers.settings import ProviderConfig


def build_provider(name: str, config: ProviderConfig, models: Mapping[str, str]) -> ModelClient:
    """The client for one configured provider; ``models`` maps its aliases to the provider's model names."""
    kind = PROVIDER_KINDS.get(config.kind)
    if kind is None:
        raise ConfigError(f"provider {name!r}: unknown kind {config.kind!r} (kinds: {', '.join(PROVIDER_KINDS)})")
    module, _, attribute = kind.client.partition(":")
    client_class = getattr(importlib.import_module(module), attribute)
    client: ModelClient = client_class.from_settings(name, config, models)
    return client
