"""`orchestrion models`: every alias with its provider, window, prices and breaker state."""

from __future__ import annotations

import json
import sys

from engine import Engine, ModelError
from engine.catalog import DEFAULT_MODEL_ALIASES
from engine.cli import main
from engine.cli.models import model_rows
from engine.config import load_config
from engine.testing import FakeModel

CONFIG = """\
providers:
  router: {kind: openai, base_url: "https://openrouter.ai/api/v1", api_key: "${ORCHESTRION_TEST_UNSET_KEY}"}
  dry: {kind: fake}
models:
  fast_ai: {provider: router, model: openai/gpt-4o-mini, context_window: 128000, input_price: 0.15, output_price: 0.6}
  my_model: {provider: dry, input_price: 3, output_price: 15}
default_provider: dry
"""


def test_models_lists_each_alias_with_provider_window_and_prices(tmp_path, capsys) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text(CONFIG)  # its key is not set: listing needs no secret
    assert main(["models", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ALIAS", "PROVIDER", "KIND", "MODEL", "WINDOW", "IN", "$/M", "OUT", "$/M", "BREAKER"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["fast_ai"] == ["router", "openai", "openai/gpt-4o-mini", "128000", "0.15", "0.6", "closed"]
    assert rows["my_model"] == ["dry", "fake", "my_model", "-", "3", "15", "closed"]
    assert rows["thinking_ai"] == ["dry", "fake", "thinking_ai", "-", "0", "0", "closed"]
    assert set(rows) == DEFAULT_MODEL_ALIASES | {"my_model"}


def test_models_json_is_a_list_of_aliases(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "orchestrion.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)  # ./orchestrion.yaml is the default configuration
    assert main(["models", "--json"]) == 0
    rows = {row["alias"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["fast_ai"] == {
        "alias": "fast_ai", "provider": "router", "kind": "openai", "model": "openai/gpt-4o-mini",
        "context_window": 128000, "input_price": 0.15, "output_price": 0.6, "breaker": "closed"}


def test_without_configuration_every_default_alias_is_on_the_local_model_and_nothing_loads(
        tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # loading the model would fail
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["alias"] for row in rows] == sorted(DEFAULT_MODEL_ALIASES)
    assert {(row["provider"], row["kind"]) for row in rows} == {("local", "llama_cpp")}


def test_an_alias_no_provider_serves_is_listed_without_one(tmp_path, capsys) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake}\nmodels:\n  fast_ai: {provider: dry}\n")
    assert main(["models", "--json", "--config", str(config)]) == 0
    rows = {row["alias"]: row for row in json.loads(capsys.readouterr().out)}
    assert (rows["fast_ai"]["provider"], rows["thinking_ai"]["provider"], rows["thinking_ai"]["kind"]) == (
        "dry", None, None)


def test_the_breaker_column_shows_an_open_breaker(tmp_path) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake}\ndefault_provider: dry\nbreaker: {failures: 1}\n")
    failing = FakeModel({"fast_ai": ModelError("server_error", "down")})
    engine = Engine(load_config(config), models={"fast_ai": failing})
    flow = {"dsl": "orchestrion/v1", "name": "f", "defaults": {"retry": None},
            "stages": [{"type": "inline", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "hi"}]}]}
    assert engine.run_sync(flow).status == "failed"
    states = {row["alias"]: row["breaker"] for row in model_rows(engine)}
    assert (states["fast_ai"], states["thinking_ai"]) == ("open", "closed")
