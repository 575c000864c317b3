"""Pass 3: each task's effective policies: the task's own, else `defaults`, else the engine's.

One rule for every policy: a field the task leaves out inherits, a value
overrides, an explicit ``null`` switches it off. ``retry`` merges field by field,
and so does ``cache`` (``true`` is an object with no field given).
"""

from __future__ import annotations

from typing import Any

from engine.compiler.plan import CacheSpec, NodePolicies, RetrySpec
from engine.dsl.models import CachePolicy, Policies, RetryPolicy, Task, duration_seconds

# An unreachable, hanging or failing provider sends the call to the next model at once (retrying it
# with backoff is for when there is none); a rate limit says "wait", so it is retried first.
ENGINE_RETRY = RetrySpec(max_attempts=4, initial_delay=1.0, backoff=2.0, max_delay=30.0,
                         jitter="full", max_elapsed=None,
                         on=(("connection", "fallback"), ("timeout", "fallback"), ("server_error", "fallback"),
                             ("rate_limit", "retry_then_fallback")))
ENGINE_TIMEOUT = 120.0
VIDEO_TIMEOUT = 900.0  # a video is made in minutes: a `generate: video` task waits this long unless told
_UNSET = object()


def resolve_policies(task: Task, defaults: Policies) -> NodePolicies:
    model = _pick("model", task, defaults, None)
    models = (model,) if isinstance(model, str) else tuple(model or ())
    return NodePolicies(
        models=models if task.kind in ("prompt", "plan", "generate") else (),
        timeout=_pick("timeout", task, defaults, VIDEO_TIMEOUT if task.generate == "video" else ENGINE_TIMEOUT),
        retry=_retry(task, defaults),
        critical=_pick("critical", task, defaults, True) is not False,
        cache=_cache(task, defaults) if task.kind == "prompt" else None,
        hedge_after=_pick("hedge_after", task, defaults, None),
        temperature=_pick("temperature", task, defaults, None),
        max_tokens=_pick("max_tokens", task, defaults, None),
        system=_pick("system", task, defaults, None),
        addons=tuple(_pick("addons", task, defaults, None) or ()),
    )


def _pick(name: str, task: Task, defaults: Policies, engine_default: Any) -> Any:
    for level in (task, defaults):
        if name in level.model_fields_set:
            return getattr(level, name)
    return engine_default


def _cache(task: Task, defaults: Policies) -> CacheSpec | None:
    levels: list[CachePolicy] = []
    for level in (task, defaults):
        if "cache" in level.model_fields_set:
            setting = level.cache
            if setting is None or setting is False:
                if not levels:
                    return None  # switched off at the nearest level that sets it
                break
            levels.append(CachePolicy() if setting is True else setting)
    if not levels:
        return None
    ttl = next((level.ttl for level in levels if "ttl" in level.model_fields_set), None)
    return CacheSpec(None if ttl is None else duration_seconds(ttl))


def _retry(task: Task, defaults: Policies) -> RetrySpec | None:
    levels: list[RetryPolicy] = []
    for level in (task, defaults):
        if "retry" in level.model_fields_set:
            if level.retry is None:
                if not levels:
                    return None  # switched off at the nearest level that sets it
                break
            levels.append(level.retry)
    fields: dict[str, Any] = {}
    for name in RetrySpec.__slots__:
        if name == "on":
            continue
        value = next((getattr(level, name) for level in levels if _given(level, name)), _UNSET)
        fields[name] = getattr(ENGINE_RETRY, name) if value is _UNSET else value
    actions: dict[str, str] = dict(ENGINE_RETRY.on)  # per class: the engine's, then `defaults`, then the task's
    for given in reversed(levels):
        actions.update({kind: action for kind, action in (given.on or {}).items()})
    return RetrySpec(**fields, on=tuple(sorted(actions.items())))


def _given(level: RetryPolicy, name: str) -> bool:
    # Inside `retry`, null switches off only the time budget; elsewhere it inherits.
    return name in level.model_fields_set and (getattr(level, name) is not None or name == "max_elapsed")
