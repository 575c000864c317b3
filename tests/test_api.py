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


def test_dir_is_exactly_all() -> None:
    assert dir(engine) == sorted(engine.__all__)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        engine.NotAThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as error:
        assert "NotAThing" in str(error)
    else:
        raise AssertionError("no AttributeError")


def test_import_engine_loads_no_heavy_module() -> None:
    code = ("import sys, engine; heavy = ['jinja2', 'anyio', 'pydantic', 'structlog', 'tenacity', 'ruamel.yaml', "
            "'jsonschema']; print([name for name in heavy if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_error_tree_has_one_root() -> None:
    for name in ("WorkflowError", "CatalogError", "TemplateError", "TemplateLimitError", "TemplateSecurityError"):
        assert issubclass(getattr(engine, name), engine.OrchestrionError)


def test_import_configures_no_logging() -> None:
    code = "import logging, engine; print(len(logging.getLogger().handlers), logging.getLogger().level)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", str(logging.WARNING)]


def test_the_three_lists_of_public_names_agree() -> None:
    """``__all__``, the lazy table and the type checkers' imports name the same things, from the same modules."""
    import ast
    from pathlib import Path

    source = Path(engine.__file__).read_text(encoding="utf-8")
    guarded = next(node for node in ast.parse(source).body
                   if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    typed = {alias.asname or alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert typed == engine._EXPORTS
    assert set(engine.__all__) == {*engine._EXPORTS, "__version__"}
    for name, module in engine._EXPORTS.items():  # each name is defined where the table says
        assert getattr(__import__(module, fromlist=[name]), name) is getattr(engine, name)


def test_compiler_internals_are_not_exported() -> None:
    for name in ("Binding", "Node", "NodeId", "NodePolicies", "RetrySpec"):
        assert name not in engine.__all__
    for name in ("EngineConfig", "ChatReply", "PlanOutcome", "RunFailedError"):
        assert name in engine.__all__
    assert issubclass(engine.RunFailedError, engine.OrchestrionError)
