"""The options commands share, and the one place that turns them into an Engine or a Catalog.

Every command sees the same things: the built-in addons and templates, then
``./addons`` and ``./templates``, then ``--addons``/``--templates`` folders
(later wins), and the model aliases of the configuration file (``--config``,
default ``./orchestrion.yaml`` if it exists). So a workflow that validates
also runs, and ``--dry-run`` differs from a real run only in who answers.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `orchestrion --help` should not load pydantic
    from engine.catalog import Catalog
    from engine.config import EngineConfig
    from engine.core import Engine

DEFAULT_CONFIG = Path("orchestrion.yaml")

_FOLDERS: dict[str, Any] = {"action": "append", "type": Path, "default": [], "metavar": "DIR"}
_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "addons": ("--addons", {
        **_FOLDERS, "help": "another folder of addon files (the built-ins and ./addons are always read)"}),
    "templates": ("--templates", {
        **_FOLDERS, "help": "another folder of workflow templates (the built-ins and ./templates are always read)"}),
    "model": ("--model", {
        "action": "append", "default": [], "metavar": "ALIAS",
        "help": "another model alias (`orchestrion run` takes its aliases from the configuration)"}),
    "function": ("--function", {
        "action": "append", "default": [], "metavar": "NAME",
        "help": "the name of a function `call:` tasks may use (`orchestrion run` knows only orchestrion's own: "
                "others are registered from Python)"}),
    "store": ("--store", {
        "metavar": "URL",
        "help": "the run store: a database URL (sqlite+aiosqlite:///runs.db, postgresql+asyncpg://...), or "
                "`none` to keep nothing (default: the configuration's `store`, else a SQLite file in the user's "
                "data folder)"}),
    "config": ("--config", {
        "type": Path, "metavar": "FILE",
        "help": f"engine configuration: providers and model aliases (default: ./{DEFAULT_CONFIG} if it exists)"}),
}


def add_options(parser: argparse.ArgumentParser, *names: str) -> None:
    """Give a command the shared options ``names`` (keys of ``_OPTIONS``), in one group."""
    group = parser.add_argument_group("what the engine knows")
    for name in names:
        flag, settings = _OPTIONS[name]
        group.add_argument(flag, **settings)


def build_engine(args: argparse.Namespace, *, secrets: bool = True) -> Engine:
    """The engine a command runs with; with ``--dry-run`` every alias is answered by the fake model.
    ``secrets=False`` for an engine that calls no model, such as the one ``models`` lists."""
    from engine.core import Engine

    dry_run = getattr(args, "dry_run", False)
    config = engine_config(args, secrets=secrets and not dry_run)
    if dry_run:
        config = _dry(config)
    max_cost = getattr(args, "max_cost", None)
    if max_cost is not None:
        config = _capped(config, max_cost)
    addons, templates = _folders(args)
    return Engine(config, addon_dirs=addons, template_dirs=templates, store=store_url(args, config))


def store_url(args: argparse.Namespace, config: EngineConfig | None = None) -> str | None:
    """Where a command keeps runs: ``--store``, else the configuration's ``store`` (``store: null``: nowhere),
    else the default file (the empty string). None keeps nothing."""
    flag = getattr(args, "store", None)
    if flag is not None:
        return None if flag.lower() == "none" else flag
    if config is None and "config" in args:
        config = engine_config(args, secrets=False)
    if config is not None and "store" in config.model_fields_set:
        return None if config.store is None else config.store.url or ""
    return ""


def build_catalog(args: argparse.Namespace) -> Catalog:
    """What a workflow may refer to, for the commands that check workflows without running them."""
    from engine.catalog import Catalog

    config = engine_config(args, secrets=False)
    addons, templates = _folders(args)
    models = config.models if config is not None else {}
    return Catalog.default(
        addon_dirs=addons,
        template_dirs=templates,
        models=[*getattr(args, "model", ()), *models],
        functions=getattr(args, "function", ()),
        vision=[alias for alias, model in models.items() if model.vision],
        generators={media: [alias for alias, model in models.items() if media in model.generates]
                    for media in ("image", "video")},
        # Without a configuration only the names are known: what each model can do is checked by `run`.
        check_abilities=config is not None,
    )


def engine_config(args: argparse.Namespace, *, secrets: bool = True) -> EngineConfig | None:
    """The configuration file's contents, or None without one (the embedded default).

    Without ``secrets``, a ``${NAME}`` whose variable is not set reads as empty: validating
    workflows, listing models and dry runs need the aliases, not the keys (CI has none).
    """
    if "config" not in args:  # a command without the option, such as `addons`
        return None
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    if path is None:
        return None
    from engine.config import load_config

    return load_config(path, None if secrets else _EnvironmentWithoutSecrets())


def _folders(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    here = Path.cwd()
    return [here / "addons", *getattr(args, "addons", ())], [here / "templates", *getattr(args, "templates", ())]


def _dry(config: EngineConfig | None) -> EngineConfig:
    """``config`` with one fake provider in place of every provider: the aliases, windows, prices and
    gates stay, nothing is sent anywhere, and neither breaker state, rate limits nor the cost cap are
    shared (a dry run spends nothing of a real cap; its cap, if any, holds in this process)."""
    from engine.config import EngineConfig, FakeProviderConfig

    config = config if config is not None else EngineConfig()
    return config.model_copy(update={
        "providers": {"dry": FakeProviderConfig(kind="fake")},
        "default_provider": "dry",
        "models": {alias: model.model_copy(update={"provider": "dry"}) for alias, model in config.models.items()},
        "breaker": config.breaker.model_copy(update={"storage": None}),
        "rate_limits": config.rate_limits.model_copy(update={"storage": None}),
        "budget": config.budget.model_copy(update={"storage": None, "key": None}),
    })


def _capped(config: EngineConfig | None, max_cost: float) -> EngineConfig:
    """``config`` (the embedded default if None) with ``budget.max_cost_usd`` set to ``max_cost``: where the
    cap is kept (``budget.storage``, ``key``) stays as configured."""
    from engine.config import embedded_config

    config = config if config is not None else embedded_config()
    budget = config.budget.model_copy(update={"max_cost_usd": max_cost})
    return config.model_copy(update={"budget": budget})


class _EnvironmentWithoutSecrets(Mapping[str, str]):
    """``os.environ`` where a variable that is not set is the empty string."""

    def __getitem__(self, name: str) -> str:
        return os.environ.get(name, "")

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)
