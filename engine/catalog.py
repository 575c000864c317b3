"""What a workflow may refer to: model aliases, addons, templates and functions.

The compiler checks names against a Catalog. The engine builds one from its
configuration; the command line uses ``Catalog.default()``: the default model
aliases plus the addons and templates shipped with Orchestrion and any folders
given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.addons import Addon, load_addons

# Every alias the seed systems' documents use, so their workflows validate as they are.
DEFAULT_MODEL_ALIASES = frozenset({
    "categorizer_ai", "fast_ai", "medium_ai", "thinking_ai", "code_ai", "research_ai",
    "product_ai", "image_analysis_ai", "finance_expert", "technical_expert",
    "general_expert", "router", "aggregator",
})
TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Catalog:
    """Names a workflow may use. An empty field means "none known", not "anything goes"."""

    models: frozenset[str] = DEFAULT_MODEL_ALIASES
    addons: Mapping[str, Addon] = field(default_factory=dict)
    templates: Mapping[str, Path] = field(default_factory=dict)
    functions: frozenset[str] = frozenset()

    @classmethod
    def default(
        cls,
        addon_dirs: Iterable[Path] = (),
        template_dirs: Iterable[Path] = (),
        models: Iterable[str] = (),
        functions: Iterable[str] = (),
    ) -> Catalog:
        """Built-in addons and templates, then those of the given folders (later wins)."""
        addons: dict[str, Addon] = {}
        for folder in (builtin_dir("addons"), *addon_dirs):
            if folder is not None and folder.is_dir():
                addons.update(load_addons(folder))
        templates: dict[str, Path] = {}
        for folder in (builtin_dir("templates"), *template_dirs):
            if folder is not None and folder.is_dir():
                templates.update(find_templates(folder))
        from engine.routing import BUILTIN_FUNCTIONS

        return cls(DEFAULT_MODEL_ALIASES | frozenset(models), addons, templates,
                   frozenset(BUILTIN_FUNCTIONS) | frozenset(functions))


def find_templates(folder: Path) -> dict[str, Path]:
    """Workflow files in ``folder`` by name (the file's stem)."""
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix in TEMPLATE_SUFFIXES}


def builtin_dir(name: str) -> Path | None:
    """The ``addons``/``templates`` folder shipped with Orchestrion.

    In a wheel they are packaged under ``engine/_builtin``; in a source checkout
    (editable install) they are the top-level folders of the repository.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "_builtin" / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    return None
