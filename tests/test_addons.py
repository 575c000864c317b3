"""The prompt addons shipped in addons/: they load, are well-formed, are listed, and reach the model."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

import engine
import engine.testing
from engine.addons import Addon, load_addons
from engine.cli import main
from tests.conftest import ROOT

ADDONS_DIR = ROOT / "addons"

CATEGORIES = frozenset({
    "content_creation", "marketing", "social_media", "business", "research",
    "code", "design", "data", "education", "communication",
})

# The addons the systems Orchestrion replaces documented; workflows ported from them name these.
SEED_ADDONS = {
    "content_creation": {"blog_writing", "headline_optimization", "storytelling", "case_study"},
    "marketing": {"email_campaigns", "ad_copy", "landing_page", "value_proposition"},
    "social_media": {"instagram", "linkedin", "tiktok", "twitter"},
    "business": {"business_proposal", "executive_presentation", "swot_analysis", "customer_persona"},
    "research": {"research"},
}

DOC = {
    "dsl": "orchestrion/v1",
    "name": "a",
    "defaults": {"model": "fast_ai"},
    "stages": [{"type": "inline", "tasks": [{"id": "t", "prompt": "x", "addons": ["blog_writing"]}]}],
}


def _doc(*addons: str) -> dict:
    doc = copy.deepcopy(DOC)
    doc["stages"][0]["tasks"][0]["addons"] = list(addons)
    return doc


@pytest.fixture(scope="module")
def addons() -> dict[str, Addon]:
    return load_addons(ADDONS_DIR)


def test_every_file_in_the_folder_loads(addons: dict[str, Addon]) -> None:
    files = [path for path in ADDONS_DIR.iterdir() if path.is_file() and not path.name.startswith(".")]
    assert all(path.suffix in (".yaml", ".yml") for path in files), "only addon files belong in addons/"
    assert sorted(path.stem for path in files) == sorted(addons)
    assert len(files) == len(addons)  # no two files share a stem (x.yaml and x.yml)
    assert len(addons) >= 48


@pytest.mark.parametrize("path", sorted([*ADDONS_DIR.glob("*.yaml"), *ADDONS_DIR.glob("*.yml")]), ids=lambda p: p.stem)
def test_addon_is_well_formed(path: Path, addons: dict[str, Addon]) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.isascii(), "plain ASCII only (no smart quotes or dashes)"
    addon = addons[path.stem]
    assert addon.name == path.stem
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", addon.name)
    assert addon.category in CATEGORIES
    assert addon.description.strip() and "\n" not in addon.description.strip()
    lines = [line for line in addon.prompt.strip().splitlines() if line.strip()]
    assert 3 <= len(lines) <= 6, f"{addon.name}: the prompt should be 3-6 lines, is {len(lines)}"
    assert not re.search(r"lorem ipsum|\bTODO\b|\bFIXME\b|\[insert", addon.prompt, re.IGNORECASE)


def test_names_and_prompts_are_unique(addons: dict[str, Addon]) -> None:
    files = sorted([*ADDONS_DIR.glob("*.yaml"), *ADDONS_DIR.glob("*.yml")])
    stems = [path.stem for path in files]
    assert len(stems) == len(set(stems))
    prompts = [addon.prompt.strip() for addon in addons.values()]
    assert len(prompts) == len(set(prompts))


def test_every_category_is_used(addons: dict[str, Addon]) -> None:
    assert {addon.category for addon in addons.values()} == CATEGORIES


@pytest.mark.parametrize("category", sorted(SEED_ADDONS))
def test_seed_addons_are_present_in_their_category(category: str, addons: dict[str, Addon]) -> None:
    for name in sorted(SEED_ADDONS[category]):
        assert name in addons, f"missing addon {name!r}"
        assert addons[name].category == category


def test_cli_lists_every_addon_sorted_by_category(capsys: pytest.CaptureFixture[str],
                                                  addons: dict[str, Addon]) -> None:
    assert main(["addons"]) == 0
    rows = [line.split(None, 2) for line in capsys.readouterr().out.splitlines()]
    listed = {name: (category, description) for category, name, description in rows}
    for addon in addons.values():
        assert listed[addon.name] == (addon.category, addon.description)
    keys = [(category, name) for category, name, _ in rows]
    assert keys == sorted(keys)
    categories = [category for category, _ in keys]
    seen = [category for index, category in enumerate(categories) if index == 0 or categories[index - 1] != category]
    assert len(seen) == len(set(seen)), "each category is listed as one group"


def test_unknown_addon_fails_validation() -> None:
    with pytest.raises(engine.WorkflowError) as caught:
        engine.compile_workflow(engine.load_workflow(_doc("blog_writting")), engine.Catalog.default())
    assert [p.code for p in caught.value.problems] == ["unknown-addon"]


def test_unknown_default_addon_fails_validation() -> None:
    doc = _doc()
    doc["defaults"]["addons"] = ["no_such_addon"]
    with pytest.raises(engine.WorkflowError) as caught:
        engine.compile_workflow(engine.load_workflow(doc), engine.Catalog.default())
    assert "unknown-addon" in [p.code for p in caught.value.problems]


def test_every_addon_compiles(addons: dict[str, Addon]) -> None:
    plan = engine.compile_workflow(engine.load_workflow(_doc(*sorted(addons))), engine.Catalog.default())
    assert plan is not None


def test_addon_text_reaches_the_model(addons: dict[str, Addon]) -> None:
    fake = engine.testing.FakeModel()
    engine.Engine(models=fake).run_sync(DOC)
    system = fake.calls[0].messages[0]
    assert system.role == "system"
    assert addons["blog_writing"].prompt.strip() in system.content


def test_several_addons_reach_the_model_in_order(addons: dict[str, Addon]) -> None:
    fake = engine.testing.FakeModel()
    engine.Engine(models=fake).run_sync(_doc("research", "concise"))
    content = fake.calls[0].messages[0].content
    first, second = addons["research"].prompt.strip(), addons["concise"].prompt.strip()
    assert first in content and second in content
    assert content.index(first) < content.index(second)
