"""The code's shape, checked: packages import one way, from the edges down to the DSL.

Every ``import`` in ``engine/`` counts, at module level or inside a function
(a late import hides a cycle, it does not remove one); only imports made for
the type checker alone (``if TYPE_CHECKING:``) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"

# Bottom to top. A unit may import units of its own layer or below, never above.
LAYERS: list[set[str]] = [
    {"errors", "events", "secrets", "suggest", "depth"},
    {"dsl", "templating", "routing"},
    {"addons", "catalog"},
    {"compiler", "schema", "graph"},
    {"model", "store"},
    {"providers"},
    {"config"},
    {"resilience"},
    {"runtime"},
    {"planner", "chat"},
    {"assembly", "batch", "batch_ray", "core", "recipe", "tracing"},
    {"testing", "cli", "server", "__main__"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``engine.runtime.scheduler`` -> ``runtime``; ``engine.core`` -> ``core``."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The engine modules ``path`` imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("engine.")}


def edges() -> set[tuple[str, str, str]]:
    """(importing unit, imported unit, importing module) across units."""
    found = set()
    for path in ENGINE.rglob("*.py"):
        name = module_name(path)
        if name == "engine":  # the front door re-exports everything, lazily
            continue
        for imported in imports(path):
            if unit_of(imported) != unit_of(name):
                found.add((unit_of(name), unit_of(imported), name))
    return found


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(path)) for path in ENGINE.rglob("*.py") if module_name(path) != "engine"}
    assert units == set(LAYER_OF), f"units without a layer: {units - set(LAYER_OF)}; gone: {set(LAYER_OF) - units}"


def test_imports_go_down_the_layers() -> None:
    upward = sorted(f"{module} imports {imported} (layer {LAYER_OF[imported]} over {LAYER_OF[unit]})"
                    for unit, imported, module in edges() if LAYER_OF[imported] > LAYER_OF[unit])
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (unit -> the units it imports) as a path that returns to its start, or None."""
    state: dict[str, str] = {}

    def visit(unit: str, trail: list[str]) -> list[str] | None:
        state[unit] = "open"
        for other in sorted(graph.get(unit, ())):
            if state.get(other) == "open":
                return [*trail[trail.index(other):], other]
            if other not in state and (found := visit(other, [*trail, other])) is not None:
                return found
        state[unit] = "done"
        return None

    for unit in sorted(graph):
        if unit not in state and (found := visit(unit, [unit])) is not None:
            return found
    return None


def test_no_import_cycle_between_units() -> None:
    graph: dict[str, set[str]] = {}
    for unit, imported, _ in edges():
        graph.setdefault(unit, set()).add(imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_production_code_never_imports_the_test_doubles() -> None:
    users = sorted(module for _, imported, module in edges() if imported == "testing")
    assert not users, f"engine.testing is imported by {users}"


def test_the_checks_see_late_imports_and_find_a_planted_cycle(tmp_path: Path) -> None:
    """The checks themselves work: a late import counts, a type-checking import does not, a cycle is found."""
    (tmp_path / "a.py").write_text("def f():\n    from engine.b import g\n", encoding="utf-8")
    (tmp_path / "b.py").write_text("from engine.a import f\nif TYPE_CHECKING:\n    from engine.c import h\n",
                                   encoding="utf-8")
    assert imports(tmp_path / "a.py") == {"engine.b"}
    assert imports(tmp_path / "b.py") == {"engine.a"}
    assert find_cycle({"model": {"errors"}, "runtime": {"model"}, "errors": set()}) is None
    assert find_cycle({"model": {"runtime"}, "runtime": {"resilience"}, "resilience": {"model"}}) == [
        "model", "runtime", "resilience", "model"]
