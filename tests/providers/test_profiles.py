from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfn.errors import ProfileError
from cfn.profiles import load_profiles, parse_profile
from tests.providers.conftest import MakeSettings

SEED_PROFILE = {
    "id": "system-architect",
    "name": "System Architect",
    "provider": "anthropic",
    "model": "claude-3-5-sonnet-20241022",
    "temperature": 0.3,
    "max_tokens": 8192,
}


def test_seed_profile_file_loads_from_a_team_subfolder(
    tmp_path: Path, make_settings: MakeSettings
) -> None:
    team = tmp_path / "agents" / "cfn-dev-team"
    team.mkdir(parents=True)
    (team / "system-architect.json").write_text(json.dumps({**SEED_PROFILE, "temperature": 0.5}))
    (team / "security.json").write_text(json.dumps({"id": "security", "name": "Sec"}))
    profiles = load_profiles(make_settings())
    arch = profiles.get("system-architect")
    assert arch is not None and arch.temperature == 0.5
    assert profiles.source("system-architect").endswith("system-architect.json")
    assert profiles.get("security") is not None
    assert profiles.get("coder") is not None  # built-ins stay
    assert profiles.get("nobody") is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"providr": "zai"}, "unknown field 'providr'"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "lots"}, "max_tokens"),
        ({"id": "bad id!"}, "agent id"),
        ({"provider": "Anthropic "}, "provider"),
        ({"model": ""}, "model"),
        ({"name": None}, "name"),
    ],
)
def test_bad_profile_fields(change: dict[str, object], match: str) -> None:
    with pytest.raises(ProfileError, match=match):
        parse_profile({**SEED_PROFILE, **change}, "test.json")


def test_all_problems_in_one_error() -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile({"id": "x", "temperature": -1, "colour": "red"}, "x.json")
    text = str(info.value)
    assert "x.json" in text and "name: required" in text
    assert "temperature" in text and "unknown field 'colour'" in text


def test_bad_files(tmp_path: Path, make_settings: MakeSettings) -> None:
    agents = tmp_path / "agents"
    (agents / "a.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        load_profiles(make_settings())
    (agents / "a.json").write_text("[1, 2]")
    with pytest.raises(ProfileError, match="expected a JSON object"):
        load_profiles(make_settings())
    (agents / "a.json").write_text(json.dumps({"id": "dup", "name": "A"}))
    (agents / "b.json").write_text(json.dumps({"id": "dup", "name": "B"}))
    with pytest.raises(ProfileError, match="defined twice"):
        load_profiles(make_settings())


def test_missing_agents_dir(tmp_path: Path, make_settings: MakeSettings) -> None:
    with pytest.raises(ProfileError, match="CFN_AGENTS_DIR"):
        load_profiles(make_settings(cfn_agents_dir=tmp_path / "nope"))
