"""What a workflow may refer to: model aliases, addons, templates and functions.

The compiler checks names against a Catalog. The engine builds one from its
configuration; the command line uses ``Catalog.default()``: the default model
aliases plus the addons and templates shipped with Orchestrion and any folders
given. The catalog also resolves what a ``workflow:`` task names (one rule, for
the compiler's checks and the runtime alike) and reads the file, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.addons import Addon, load_addons
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.dsl.models import Workflow

# Every alias the seed systems' documents use, so their workflows validate as they are; and the
# image and video models of the marketing template (Imagen and Veo in the seed).
MEDIA_ALIASES = frozenset({"image_ai", "video_ai"})
DEFAULT_MODEL_ALIASES = frozenset({
    "categorizer_ai", "fast_ai", "medium_ai", "thinking_ai", "code_ai", "research_ai",
    "product_ai", "image_analysis_ai", "finance_expert", "technical_expert",
    "general_expert", "router", "aggregator",
}) | MEDIA_ALIASES
TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Catalog:
    """Names a workflow may use. An empty field means "none known", not "anything goes"."""

    models: frozenset[str] = DEFAULT_MODEL_ALIASES
    addons: Mapping[str, Addon] = field(default_factory=dict)
    templates: Mapping[str, Path] = field(default_factory=dict)
    functions: frozenset[str] = frozenset()
    vision: frozenset[str] = frozenset()  # aliases that read images
    generators: Mapping[str, frozenset[str]] = field(default_factory=dict)  # "image"/"video" -> aliases that make it
    # Whether the two above are known: an engine knows what its models do; `orchestrion validate` without a
    # configuration knows only the names, so it does not check what they can do.
    check_abilities: bool = True
    _loaded: dict[Path, tuple[int, Workflow]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def default(
        cls,
        addon_dirs: Iterable[Path] = (),
        template_dirs: Iterable[Path] = (),
        models: Iterable[str] = (),
        functions: Iterable[str] = (),
        *,
        vision: Iterable[str] = (),
        generators: Mapping[str, Iterable[str]] | None = None,
        check_abilities: bool = True,
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
                   frozenset(BUILTIN_FUNCTIONS) | frozenset(functions), frozenset(vision),
                   {media: frozenset(aliases) for media, aliases in (generators or {}).items()}, check_abilities)


    @property
    def text_models(self) -> frozenset[str]:
        """The aliases a prompt task may use: all but the media models (the default media aliases, and any
        alias configured to generate that does not also read images)."""
        makers = frozenset().union(*self.generators.values()) if self.generators else frozenset()
        return self.models - MEDIA_ALIASES - (makers - self.vision)

    def workflow_file(self, reference: str, base: Path | None = None) -> Path:
        """The file a ``workflow:`` reference names: a path (relative to ``base``, the referring
        workflow's folder, else the current one), or a template's name. ConfigError if unknown."""
        if is_workflow_path(reference):
            return (base if base is not None else Path.cwd()) / reference
        if reference not in self.templates:
            raise ConfigError(f"unknown template {reference!r}")
        return self.templates[reference]

    def has_workflow(self, reference: str, base: Path | None = None) -> bool:
        try:
            return self.workflow_file(reference, base).is_file()
        except ConfigError:
            return False

    def load_workflow(self, reference: str, base: Path | None = None) -> Workflow:
        """The workflow a reference names, read once (again if its file changed)."""
        from engine.dsl.loader import load_workflow

        path = self.workflow_file(reference, base)
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return load_workflow(path)  # the loader says what is wrong with the path
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        workflow = load_workflow(path)
        self._loaded[path] = (stamp, workflow)
        return workflow


def is_workflow_path(reference: str) -> bool:
    """A ``workflow:`` reference is a path if it has a folder or a workflow file's suffix; else a name."""
    return "/" in reference or reference.endswith(TEMPLATE_SUFFIXES)


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
