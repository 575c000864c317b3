"""An Engine as plain data, to build its twin in another process (a Ray actor, a Dask worker).

    recipe = EngineRecipe.of(engine)      # here: refuses what cannot cross, with the reason
    data = recipe.to_dict()               # plain data: pickles (the keys stay SecretStr inside)
    twin = EngineRecipe.from_dict(data).build()   # there: an Engine that runs workflows as this one

What crosses: the configuration (``EngineConfig.model_dump``: providers, aliases, gates, retry and
breaker rules, where rate limits are counted, the cost cap across runs), the registered functions
by importable name (``module:qualname``, imported where the twin is built), the prices, the run
store's URL, the addon and template folders (paths: the other machine needs the same files), the
run bounds (``max_tasks``, ``max_depth``), the render and planner limits. What does not, and is
refused: model clients given as objects (``Engine(models=...)``: configure them as providers
instead), a run store given as an object (give its URL), a ``memory:`` store (it would stay in
each worker), a cost cap across runs (``budget.max_cost_usd``) without ``budget.storage`` (each
worker would spend up to it), and functions that cannot be imported by name (lambdas, closures,
``functools.partial``, functions of ``__main__``). What is left behind: listeners
(``add_listener``, tracing) see only the runs of this process.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.dsl.models import DEFAULT_MAX_DEPTH, DEFAULT_MAX_TASKS
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.core import Engine


@dataclass(frozen=True)
class EngineRecipe:
    """What builds an Engine elsewhere; every field is plain data."""

    config: dict[str, Any]  # EngineConfig.model_dump(exclude_unset=True)
    functions: dict[str, str] = field(default_factory=dict)  # the name tasks use -> "module:qualname"
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)  # alias -> Price's fields
    store: str | None = None  # a database URL ("" for the default file), None for no store
    addon_dirs: tuple[str, ...] = ()
    template_dirs: tuple[str, ...] = ()
    max_tasks: int = DEFAULT_MAX_TASKS
    max_depth: int = DEFAULT_MAX_DEPTH
    render_limits: dict[str, Any] = field(default_factory=dict)
    planner_limits: dict[str, Any] = field(default_factory=dict)
    artifacts: str | None = None  # the folder generated media go to (each worker writes there: share it)

    @classmethod
    def of(cls, engine: Engine) -> EngineRecipe:
        """``engine``'s recipe; ConfigError names what cannot cross to another process, and why."""
        from engine.routing import BUILTIN_FUNCTIONS

        if engine._models_given:
            raise ConfigError("this engine's model clients were given as objects (Engine(models=...)), which "
                              "do not cross to another process: configure them as providers (EngineConfig "
                              "`providers:` and `models:`; kind `fake` for a test)")
        store = engine._store_url
        if engine.store is not None and store is None:
            raise ConfigError("this engine's run store was given as an object, which does not cross to another "
                              "process: give its URL (Engine(store='postgresql+asyncpg://...')) or no store")
        if store is not None and store.startswith("memory:"):
            raise ConfigError("a `memory:` run store would stay inside each worker, out of reach: give a database "
                              "every worker reaches (postgresql+asyncpg://...), or no store")
        budget = engine.config.budget
        if budget.max_cost_usd is not None and budget.storage is None:
            raise ConfigError(f"the cost cap of ${budget.max_cost_usd} (budget.max_cost_usd) is kept in this process "
                              "alone: each worker would spend up to it. Share it through Redis "
                              "(budget: {storage: redis://..., key: NAME}) so the workers count one spend")
        functions = {name: function_reference(name, function) for name, function in engine.functions.items()
                     if BUILTIN_FUNCTIONS.get(name) is not function}
        services = engine._services
        return cls(
            config=engine.config.model_dump(exclude_unset=True),
            functions=functions,
            prices={alias: dataclasses.asdict(price) for alias, price in engine.prices.items()},
            store=store,
            addon_dirs=tuple(str(Path(folder).resolve()) for folder in engine.addon_dirs),
            template_dirs=tuple(str(Path(folder).resolve()) for folder in engine.template_dirs),
            max_tasks=services.max_tasks,
            max_depth=services.max_depth,
            render_limits=dataclasses.asdict(services.renderer.limits),
            planner_limits=dataclasses.asdict(engine.planner_limits),
            artifacts=str(services.artifacts) if services.artifacts is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineRecipe:
        return cls(**{**data, "addon_dirs": tuple(data.get("addon_dirs", ())),
                      "template_dirs": tuple(data.get("template_dirs", ()))})

    def build(self) -> Engine:
        """The Engine this recipe describes, its functions imported here (ImportError if one is not)."""
        from engine.config import EngineConfig
        from engine.core import Engine
        from engine.model.prices import Price
        from engine.planner import PlannerLimits
        from engine.templating import RenderLimits

        return Engine(
            EngineConfig.model_validate(self.config),
            functions={name: resolve_function(reference) for name, reference in self.functions.items()},
            prices={alias: Price(**fields) for alias, fields in self.prices.items()},
            store=self.store,
            addon_dirs=[Path(folder) for folder in self.addon_dirs],
            template_dirs=[Path(folder) for folder in self.template_dirs],
            render_limits=RenderLimits(**self.render_limits) if self.render_limits else None,
            planner_limits=PlannerLimits(**self.planner_limits) if self.planner_limits else None,
            max_tasks=self.max_tasks,
            max_depth=self.max_depth,
            artifacts=self.artifacts,
        )


def function_reference(name: str, function: Callable[..., Any]) -> str:
    """``module:qualname`` of a registered function, checked to import back to the same object here."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    why = None
    if not isinstance(module, str) or not isinstance(qualname, str):
        why = f"a {type(function).__name__} has no importable name"
    elif "<lambda>" in qualname or "<locals>" in qualname:
        why = f"{qualname} is a lambda or a function defined inside another one"
    elif module == "__main__":
        why = "it is defined in the script being run (__main__), which the workers do not run"
    else:
        try:
            found = resolve_function(f"{module}:{qualname}")
        except (ImportError, AttributeError):
            found = None
        if found is not function:
            why = f"{module}:{qualname} does not import back to it"
    if why is not None:
        raise ConfigError(f"function {name!r} cannot be sent to another process: {why}. Register a function "
                          "defined at the top level of an importable module, installed on the workers")
    return f"{module}:{qualname}"


def resolve_function(reference: str) -> Callable[..., Any]:
    """The object ``module:qualname`` names (ImportError or AttributeError if there is none)."""
    module_name, _, qualname = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ImportError(f"{reference} is a {type(target).__name__}, not a function")
    return target  # type: ignore[no-any-return]
