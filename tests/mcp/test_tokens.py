"""Tokens and skill routing, without servers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cfn.errors import ConfigError, InvalidInputError, McpAuthError, McpForbiddenError
from cfn.mcp.routing import (
    DEFAULT_SKILL_MAPPING,
    parse_skill_mapping,
    require_server,
    servers_for,
    skill_mapping,
)
from cfn.mcp.tokens import TokenAuthority, load_secret
from cfn.settings import Settings

SECRET = b"s" * 40


def test_round_trip_carries_agent_task_skills_scope_expiry() -> None:
    authority = TokenAuthority(SECRET)
    token = authority.mint("impl-1-1", "task-1", ["redis-management"], scope=["write"], ttl=60)
    claims = authority.verify(token)
    assert (claims.agent_id, claims.task_id, claims.skills) == (
        "impl-1-1",
        "task-1",
        ("redis-management",),
    )
    assert claims.can_write and claims.scope == {"read", "write"}
    assert claims.expires_at - claims.issued_at == 60


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("agent-impl-1-1-task-1-1700000000", "malformed"),  # the seed's guessable format
        ("a.b.c", "malformed"),
    ],
)
def test_missing_and_malformed_tokens(token: str | None, reason: str) -> None:
    with pytest.raises(McpAuthError, match=reason):
        TokenAuthority(SECRET).verify(token)


def test_forged_and_expired_tokens() -> None:
    forged = TokenAuthority(b"x" * 40).mint("a", "t", ["redis-management"])
    with pytest.raises(McpAuthError, match="forged"):
        TokenAuthority(SECRET).verify(forged)
    old = TokenAuthority(SECRET).mint("a", "t", ["redis-management"], ttl=10, now=1_000_000)
    with pytest.raises(McpAuthError, match="expired"):
        TokenAuthority(SECRET).verify(old)


def test_bad_mint_input() -> None:
    authority = TokenAuthority(SECRET)
    with pytest.raises(InvalidInputError):
        authority.mint("a b", "t", ["x"])
    with pytest.raises(InvalidInputError):
        authority.mint("a", "t", [])
    with pytest.raises(InvalidInputError, match="scope"):
        authority.mint("a", "t", ["x"], scope=["admin"])


def test_secret_generated_once_0600(tmp_path: Path) -> None:
    settings = Settings(cfn_state_dir=tmp_path / "state")
    first = load_secret(settings)
    assert load_secret(settings) == first and len(first) >= 32
    path = tmp_path / "state" / "mcp" / "secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ConfigError, match="too short"):
        load_secret(Settings(cfn_state_dir=tmp_path, mcp_auth_token="short"))


def test_skill_mapping_configurable_and_checked() -> None:
    assert skill_mapping(Settings()) == DEFAULT_SKILL_MAPPING
    seed = '{"skill_to_mcp_mapping": {"qa": ["playwright", "security-scanner"]}}'
    mapping = parse_skill_mapping(seed)
    assert servers_for(["qa"], mapping) == ["playwright", "security-scanner"]
    with pytest.raises(ConfigError, match="unknown server"):
        parse_skill_mapping('{"qa": ["nope"]}')
    with pytest.raises(ConfigError, match="not JSON"):
        parse_skill_mapping("{")
    claims = TokenAuthority(SECRET).verify(TokenAuthority(SECRET).mint("a", "t", ["qa"]))
    require_server(claims, "playwright", mapping)
    with pytest.raises(McpForbiddenError, match="may not use the n8n server"):
        require_server(claims, "n8n", mapping)


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    import cfn.system.signed as signed  # where tokens are verified (and the clock read)

    authority = TokenAuthority(b"s" * 32, leeway=0)
    token = authority.mint("impl-1-1", "task-1", ["redis-management"], ttl=60)
    first = authority.verify(token)
    assert authority.verify(token) is first  # the second check is the cache's
    later = first.expires_at + 1
    monkeypatch.setattr(signed.time, "time", lambda: float(later))
    with pytest.raises(McpAuthError, match="expired"):
        authority.verify(token)
    forged = TokenAuthority(b"f" * 32).mint("impl-1-1", "task-1", ["redis-management"])
    with pytest.raises(McpAuthError, match="forged"):
        authority.verify(forged)
