from __future__ import annotations

import pytest

from cfn.errors import InvalidInputError, MissingCredentialsError, UnknownProviderError
from cfn.profiles import builtin_profiles
from cfn.providers import TaskTraits, select_provider
from cfn.providers.routes import load_route_table
from cfn.settings import Settings
from tests.providers.conftest import MakeSettings

ALL_KEYS = {
    "zai_api_key": "k",
    "moonshot_api_key": "k",
    "anthropic_api_key": "k",
    "openrouter_api_key": "k",
}


def pick(settings: Settings, agent: str = "coder", **task: object):  # type: ignore[no-untyped-def]
    return select_provider(
        agent,
        TaskTraits(**task),  # type: ignore[arg-type]
        settings=settings,
        table=load_route_table(settings),
        profiles=builtin_profiles(),
    )


def test_custom_routing_off_sends_everyone_to_default(make_settings: MakeSettings) -> None:
    d = pick(make_settings(**ALL_KEYS), "system-architect", complexity="high")
    assert str(d.route) == "kimi:kimi-latest"
    assert "CFN_CUSTOM_ROUTING" in d.explain()


def test_seed_order_profile_then_complexity_then_cost_then_default(
    make_settings: MakeSettings,
) -> None:
    s = make_settings(cfn_custom_routing=True, **ALL_KEYS)
    profile = pick(s, "system-architect", complexity="low", cost_sensitive=True)
    assert str(profile.route) == "anthropic:claude-3-5-sonnet-20241022"
    assert "agent profile 'system-architect' names provider 'anthropic'" in profile.explain()
    assert "model 'claude-3-5-sonnet-20241022' from the agent profile" in profile.explain()
    high = pick(s, "coder", complexity="high", cost_sensitive=True)
    assert high.provider == "anthropic"
    assert "HIGH_COMPLEXITY_PROVIDER=anthropic" in high.explain()
    cheap = pick(s, "coder", complexity="medium", cost_sensitive=True)
    assert str(cheap.route) == "zai:glm-4.6"
    assert "COST_PROVIDER=zai" in cheap.explain()
    plain = pick(s, "coder")
    assert str(plain.route) == "kimi:kimi-latest"
    assert "DEFAULT_PROVIDER=kimi" in plain.explain()
    assert [str(r) for r in plain.chain] == [
        "kimi:kimi-latest",
        "zai:glm-4.6",
        "openrouter:anthropic/claude-3-5-sonnet",
    ]


def test_env_names_of_the_seed_steer_selection(
    monkeypatch: pytest.MonkeyPatch, make_settings: MakeSettings
) -> None:
    monkeypatch.setenv("CFN_CUSTOM_ROUTING", "true")
    monkeypatch.setenv("HIGH_COMPLEXITY_PROVIDER", "openrouter")
    monkeypatch.setenv("COST_PROVIDER", "kimi")
    monkeypatch.setenv("DEFAULT_PROVIDER", "zai")
    s = make_settings(**ALL_KEYS)
    assert pick(s, complexity="high").provider == "openrouter"
    assert pick(s, cost_sensitive=True).provider == "kimi"
    assert pick(s).provider == "zai"


def test_loop_agent_ids_find_their_role_profile(make_settings: MakeSettings) -> None:
    s = make_settings(cfn_custom_routing=True, **ALL_KEYS)
    d = pick(s, "system-architect-3-2")
    assert d.profile is not None and d.profile.id == "system-architect"
    assert "no agent profile matches 'impl-2-1'" in pick(s, "impl-2-1").explain()


def test_unknown_provider_and_bad_complexity(make_settings: MakeSettings) -> None:
    with pytest.raises(UnknownProviderError, match="known providers are"):
        pick(make_settings(default_provider="nosuch"))
    with pytest.raises(InvalidInputError, match="complexity"):
        pick(make_settings(), complexity="extreme")


def test_no_keys_at_all_means_offline_and_says_so(make_settings: MakeSettings) -> None:
    d = pick(make_settings(cfn_custom_routing=True), "system-architect")
    assert d.offline and d.problem is None
    assert "OFFLINE" in d.label
    assert "ANTHROPIC_API_KEY is not set and no real provider has a key" in d.explain()
    assert d.chain == (d.route,)


def test_offline_is_never_chosen_silently_when_a_real_key_exists(
    make_settings: MakeSettings,
) -> None:
    d = pick(make_settings(zai_api_key="k"), "coder")
    assert d.provider == "kimi" and not d.offline
    assert d.problem is not None and "MOONSHOT_API_KEY (or KIMI_API_KEY)" in d.problem
    with pytest.raises(MissingCredentialsError, match="set MOONSHOT_API_KEY"):
        d.require_callable()


def test_offline_when_no_keys_can_be_switched_off(make_settings: MakeSettings) -> None:
    d = pick(make_settings(cfn_offline_when_no_keys=False))
    with pytest.raises(MissingCredentialsError, match="MOONSHOT_API_KEY"):
        d.require_callable()


def test_alternative_key_variables(make_settings: MakeSettings) -> None:
    table = load_route_table(make_settings(kimi_api_key="k1", anthropic_api_key="k2"))
    assert table.specs["kimi"].has_credentials
    assert table.specs["max"].has_credentials  # falls back to ANTHROPIC_API_KEY
    own = load_route_table(make_settings(max_api_key="m", anthropic_api_key="a"))
    key = own.specs["max"].key
    assert key is not None and key.get_secret_value() == "m"


def test_explicit_provider_wins(make_settings: MakeSettings) -> None:
    s = make_settings(**ALL_KEYS)
    d = select_provider(
        "coder",
        TaskTraits(),
        settings=s,
        table=load_route_table(s),
        profiles=builtin_profiles(),
        provider="offline",
    )
    assert d.offline and "chosen explicitly" in d.explain()


def test_a_claude_code_model_tier_is_not_sent_as_a_model(make_settings: MakeSettings) -> None:
    """A subagent file's `model: sonnet` beside `provider: zai` names no zai model: the
    route table's model serves it (a Claude Code file works unchanged)."""
    from cfn.profiles import ProfileSet, parse_markdown_profile

    text = "---\nname: coder\ndescription: writes code\nprovider: zai\nmodel: sonnet\n---\nCode.\n"
    profile = parse_markdown_profile(text, "coder.md")
    s = make_settings(cfn_custom_routing=True, **ALL_KEYS)
    decision = select_provider(
        "coder",
        TaskTraits(),
        settings=s,
        table=load_route_table(s),
        profiles=ProfileSet({"coder": profile}, {"coder": "coder.md"}),
    )
    assert str(decision.route) == "zai:glm-4.6"
    assert "model tier 'sonnet' of profile 'coder' is Claude Code's" in decision.explain()
