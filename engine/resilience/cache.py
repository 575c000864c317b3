"""The response cache: a request answered before is answered again from the run store, at no cost.

It is a request-level stage, after the gate and before the retry
(``ModelPipeline._cached``): a hit spends no attempt, no breaker trial, no
budget and no rate-limit slot, and adds no tokens or cost to the run; it is
announced (``CacheHit``) with the cost it saved, and a streamed call gets the
whole text as one ``TokenDelta``.

The key is a SHA-256 over what decides the answer: the model behind the alias
(``Clients.target``: provider kind, endpoint and the provider's model name, so
two aliases of one model share entries and a changed mapping misses) and every
field of the request but the alias itself (the rendered messages,
temperature, max_tokens, output schema; a field added to ``ModelRequest``
joins the key by itself). The key is taken before a cost limit bounds
``max_tokens``, so a run's remaining budget does not split entries.

Only answers are kept, never errors; a structured answer is kept once it
validated, under the request as first asked, with what it and its repairs
cost (a hit saves all of them). An answer cut short (``finish_reason``
``length``) of a request that set no ``max_tokens`` is not kept: what cut it
was not part of the request. Entries live in the engine's run store, or in
a ``MemoryStore`` of the engine's own; a store that fails raises
``StoreError``, as everywhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from engine.events import CacheHit, TokenDelta
from engine.model.client import ModelRequest, ModelResponse, Usage
from engine.model.media import Image
from engine.providers.settings import FakeProviderConfig, HttpProviderConfig, LlamaCppProviderConfig, ProviderConfig
from engine.store.base import RunStore
from engine.store.records import CacheEntry

if TYPE_CHECKING:
    from engine.resilience.call import Call
    from engine.resilience.provider import Clients

Clock = Callable[[], float]  # Unix seconds: entries outlive the process, so not a monotonic clock
KEY_VERSION = 1  # bumped when what the key covers changes: older entries then simply miss


class ResponseCache:
    """Looks requests up in a run store, and keeps the answers of those it had to ask."""

    def __init__(self, store: RunStore, clients: Clients, clock: Clock = time.time) -> None:
        self.store = store
        self.clients = clients
        self.clock = clock

    def key(self, request: ModelRequest) -> str:
        fields = {name: getattr(request, name) for name in _REQUEST_FIELDS}
        fields["model"] = self.clients.target(request.model)  # the model behind the alias, not the alias
        return hashlib.sha256(_KEY_JSON.encode([KEY_VERSION, fields]).encode()).hexdigest()

    async def lookup(self, key: str, request: ModelRequest, call: Call) -> str | None:
        """The text kept under ``key``, announced as a hit (and streamed, if the call streams); None on a miss."""
        entry = await self.store.cache_get(key, self.clock())
        response = _response(entry.response) if entry is not None else None
        if entry is None or response is None:
            return None
        run = call.run
        call.tally.model = request.model  # no attempt, no tokens, no cost: only who answered
        if run.stream_tokens and run.emit.active:
            run.emit(TokenDelta, task_id=call.task_id, attempt=call.tally.attempts, text=response.text)
        run.emit(CacheHit, task_id=call.task_id, attempt=call.tally.attempts, model=request.model,
                 saved_cost_usd=entry.cost_usd)
        if run.on_attempt is not None:  # a call answered for free: stats count it as a hit
            call.attempt_started = time.time()
            run.on_attempt(call, request.model, "ok", response, 0.0, cached=True)
        return response.text

    async def keep(self, key: str, request: ModelRequest, call: Call, response: ModelResponse,
                   cost_usd: float) -> None:
        """Keep ``response`` under ``key`` for the call's ttl, with what it cost."""
        if response.finish_reason == "length" and request.max_tokens is None:
            return
        policy, now = call.cache, self.clock()
        ttl = policy.ttl_s if policy is not None else None
        await self.store.cache_put(CacheEntry(key, request.model, dataclasses.asdict(response), now,
                                              None if ttl is None else now + ttl, cost_usd))


async def clear_cache(store: RunStore) -> int:
    """Delete every cached answer in ``store`` (``orchestrion cache clear``); how many there were."""
    return await store.cache_clear()


def model_target(provider: ProviderConfig, model: str, alias: str) -> str:
    """What answers an alias routed to ``provider`` as ``model``, for the cache's key: what decides the answers
    (the kind, and the endpoint or model file), not the provider's name in the configuration."""
    if isinstance(provider, HttpProviderConfig):
        return f"{provider.kind} {provider.base_url or '(default endpoint)'} {model} json:{provider.structured_output}"
    if isinstance(provider, LlamaCppProviderConfig):  # one model file answers every alias
        return (f"{provider.kind} {provider.model_path or '(packaged model)'} seed:{provider.seed} "
                f"prompt:{provider.prompt_format}")  # the same request in another format is another answer
    assert isinstance(provider, FakeProviderConfig)
    return f"{provider.kind} {model} alias:{alias}"  # its scripts are per alias


def _response(data: Mapping[str, Any]) -> ModelResponse | None:
    """A kept response back as a ModelResponse; None if it is not one (a store written by another version)."""
    try:
        usage = Usage(**data.get("usage", {}))
        response = ModelResponse(data["text"], usage, data.get("model", ""), data.get("finish_reason", "stop"))
    except (KeyError, TypeError):
        return None
    return response if isinstance(response.text, str) else None


def _plain(value: object) -> object:
    """JSON for what ``json`` does not know in a request: read-only mappings (a schema), messages."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Image):  # by content: the same picture from another file is the same request
        return {"image": hashlib.sha256(value.data).hexdigest(), "media_type": value.media_type}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    raise TypeError(f"cannot key a request holding a {type(value).__name__}")


_REQUEST_FIELDS = tuple(field.name for field in dataclasses.fields(ModelRequest))
# Made once (json.dumps with options builds an encoder per call); sorted keys: a schema's key order is not its meaning.
_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)
