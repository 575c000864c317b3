"""The front door: `engine.__all__` is the public API and importing it configures nothing."""

from __future__ import annotations

import logging
import subprocess
import sys

import engine


def test_all_names_exist_and_are_sorted() -> None:
    assert sorted(engine.__all__, key=str.casefold) == sorted(set(engine.__all__), key=str.casefold)
    for name in engine.__all__:
        assert hasattr(engine, name), name


def test_public_names_are_exactly_all() -> None:
    public = {name for name in vars(engine) if not name.startswith("_")}
    modules = {"addons", "catalog", "compiler", "dsl", "errors", "graph", "schema", "templating", "cli"}
    assert public - modules == set(engine.__all__) - {"__version__"}


def test_error_tree_has_one_root() -> None:
    for name in ("WorkflowError", "CatalogError", "TemplateError", "TemplateLimitError", "TemplateSecurityError"):
        assert issubclass(getattr(engine, name), engine.OrchestrionError)


def test_import_configures_no_logging() -> None:
    code = "import logging, engine; print(len(logging.getLogger().handlers), logging.getLogger().level)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", str(logging.WARNING)]
