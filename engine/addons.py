"""Prompt addons: named fragments added to a task's system prompt.

An addon is a small YAML file, ``addons/<name>.yaml``::

    name: research
    description: Thorough research with sources and caveats
    category: research
    prompt: |
      Research the subject thoroughly...
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from engine.dsl.models import Identifier, StrictModel
from engine.dsl.source import located_errors, read_document
from engine.errors import CatalogError


class Addon(StrictModel):
    """A named prompt fragment."""

    name: Identifier = Field(description="Name tasks use in `addons:`; the file's stem.")
    description: str = Field(min_length=1, description="One line on what the addon does.")
    category: str = Field(min_length=1, description="Group it is listed under (research, marketing...).")
    prompt: str = Field(min_length=1, description="The text added to the system prompt.")


def load_addon(path: Path) -> Addon:
    """Read and validate one addon file; CatalogError names the file and line."""
    document = read_document(path, CatalogError, "addon")
    try:
        addon = Addon.model_validate(document.data)
    except ValidationError as exc:
        raise CatalogError(located_errors(exc.errors(), document.source)) from None
    if addon.name != path.stem:
        raise CatalogError(f"{path}: the addon is named {addon.name!r} but its file is {path.name!r}; "
                           "name the file after the addon")
    return addon


def load_addons(folder: Path) -> dict[str, Addon]:
    """Every ``*.yaml`` / ``*.yml`` addon in ``folder``, by name."""
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    return {addon.name: addon for addon in map(load_addon, files)}
