from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfn.errors import ConfigError, RouteFormatError, UnknownProviderError
from cfn.providers import parse_route
from cfn.providers.pricing import PriceTable
from cfn.providers.routes import SEED_ROUTES, load_route_table, parse_fallbacks
from cfn.providers.types import Usage
from cfn.settings import Settings, load_settings
from tests.providers.conftest import MakeSettings


def test_default_table_is_the_seeds(make_settings: MakeSettings) -> None:
    table = load_route_table(make_settings())
    real = [str(r) for name, r in table.routes.items() if name != "offline"]
    assert real == list(SEED_ROUTES)
    assert str(table.routes["offline"]) == "offline:cfn-offline-1"
    assert table.specs["max"].kind == "anthropic"
    assert table.specs["zai"].kind == "openai"


@pytest.mark.parametrize(
    "text",
    ["zai", "zai:", ":glm-4.6", "ZAI:glm", "zai:glm 4.6", "za i:glm", "", "zai:-x", 42],
)
def test_malformed_routes(text: object) -> None:
    with pytest.raises(RouteFormatError, match=r"route|provider"):
        parse_route(text)


def test_route_model_may_hold_colons_and_slashes() -> None:
    assert parse_route("ollama:llama3:8b").model == "llama3:8b"
    assert parse_route("openrouter:anthropic/claude-3-5-sonnet").provider == "openrouter"


def test_provider_routes_env_overrides_in_the_seeds_spelling(
    monkeypatch: pytest.MonkeyPatch, make_settings: MakeSettings
) -> None:
    monkeypatch.setenv("PROVIDER_ROUTES", '(\n  "zai:glm-4.5"\n  "kimi:kimi-k2"\n)')
    table = load_route_table(make_settings())
    assert str(table.routes["zai"]) == "zai:glm-4.5"
    assert str(table.routes["kimi"]) == "kimi:kimi-k2"
    assert str(table.routes["xai"]) == "xai:grok-beta"
    assert "PROVIDER_ROUTES" in table.sources


def test_unknown_provider_in_routes(make_settings: MakeSettings) -> None:
    with pytest.raises(UnknownProviderError, match="nosuch"):
        load_route_table(make_settings(provider_routes=["nosuch:model-1"]))


def test_providers_file_routes_fallbacks_prices_and_local_provider(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    path = tmp_path / "custom.json"
    path.write_text(
        json.dumps(
            {
                "providers": {"local": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                "routes": {"local": "qwen2.5-coder:7b", "zai": "glm-4.5"},
                "fallbacks": {"zai": ["local"]},
                "prices": {"glm-4.5": [0.5, 1.5]},
            }
        )
    )
    table = load_route_table(make_settings(cfn_providers_file=path, provider_routes=["kimi:k2"]))
    assert str(table.routes["local"]) == "local:qwen2.5-coder:7b"
    assert [str(r) for r in table.chain(table.routes["zai"])] == [
        "zai:glm-4.5",
        "local:qwen2.5-coder:7b",
    ]
    assert table.prices.price("zai", "glm-4.5", paid=True).cost(Usage(1_000_000, 0)) == 0.5
    assert table.specs["local"].paid is False
    assert str(table.routes["kimi"]) == "kimi:k2"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "providers file"),
        ("[]", "JSON object"),
        ('{"rutes": {}}', "unknown section"),
        ('{"routes": "zai:x"}', "routes must be"),
        ('{"providers": {"zai": {"base_url": "http://x"}}}', "built in"),
        ('{"providers": {"loc": {"base_url": "ftp://x"}}}', "http"),
        ('{"prices": {"m": [1]}}', "price for 'm'"),
        ('{"prices": {"m": [1, -2]}}', ">= 0"),
    ],
)
def test_bad_providers_file(
    tmp_path: Path, make_settings: MakeSettings, content: str, match: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_route_table(make_settings(cfn_providers_file=path))


def test_missing_providers_file_is_named(tmp_path: Path, make_settings: MakeSettings) -> None:
    with pytest.raises(ConfigError, match="CFN_PROVIDERS_FILE"):
        load_route_table(make_settings(cfn_providers_file=tmp_path / "nope.json"))


def test_fallback_chains_from_env() -> None:
    assert parse_fallbacks("zai=kimi,openrouter; kimi=") == {
        "zai": ("kimi", "openrouter"),
        "kimi": (),
    }
    with pytest.raises(RouteFormatError, match="provider=next"):
        parse_fallbacks("zai->kimi")
    with pytest.raises(RouteFormatError):
        parse_fallbacks("zai=Kimi!")


def test_unknown_fallback_provider(make_settings: MakeSettings) -> None:
    with pytest.raises(UnknownProviderError, match="ghost"):
        load_route_table(make_settings(cfn_provider_fallbacks="zai=ghost"))


def test_offline_is_never_a_fallback(make_settings: MakeSettings) -> None:
    table = load_route_table(make_settings(cfn_provider_fallbacks="zai=offline,kimi"))
    assert [r.provider for r in table.chain(table.routes["zai"])] == ["zai", "kimi"]


def test_prices_lookup_and_unknown_paid_model() -> None:
    prices = PriceTable()
    price = prices.price("openrouter", "anthropic/claude-3-5-sonnet", paid=True)
    assert price.cost(Usage(1000, 1000)) == pytest.approx(0.018)
    # the ``vendor/`` prefix is dropped as a last resort
    assert prices.price("max", "anthropic/claude-3-opus-20240229", paid=True).output_per_mtok == 75
    with pytest.raises(UnknownProviderError, match="CFN_PRICE_TABLE"):
        prices.price("zai", "glm-9", paid=True)
    assert prices.price("ollama", "llama3", paid=False).cost(Usage(10**6, 10**6)) == 0


def test_price_table_env(make_settings: MakeSettings) -> None:
    table = load_route_table(
        make_settings(cfn_price_table='{"glm-4.6": {"input": 1, "output": 2}}')
    )
    assert table.prices.price("zai", "glm-4.6", paid=True).output_per_mtok == 2
    with pytest.raises(ConfigError, match="CFN_PRICE_TABLE"):
        load_route_table(make_settings(cfn_price_table="{oops"))


def test_bad_provider_settings_are_one_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFN_TASK_BUDGET_USD", "-1")
    monkeypatch.setenv("ZAI_API_STYLE", "soap")
    with pytest.raises(ConfigError, match=r"CFN_TASK_BUDGET_USD.*ZAI_API_STYLE"):
        load_settings()


def test_keys_are_never_in_repr(make_settings: MakeSettings) -> None:
    settings: Settings = make_settings(zai_api_key="sk-very-secret")
    table = load_route_table(settings)
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in repr(table.specs["zai"])
    assert table.specs["zai"].has_credentials
