"""Signed MCP tokens.

The seed's token is ``agent-${AGENT_ID}-${TASK_ID}-${TIMESTAMP}``: anyone who
knows (or guesses) an agent id, a task id and roughly when it started can
forge one, and it says nothing about what its bearer may do. cfn's tokens are
JWTs signed with HMAC-SHA256 under a secret (MCP_AUTH_TOKEN, or one generated
once and kept 0600 under the state dir) and carry the agent id, task id,
skills, scope and expiry; every server verifies them itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn import keys
from cfn.errors import ConfigError, InvalidInputError, McpAuthError
from cfn.settings import Settings
from cfn.system.secrets import read_or_create
from cfn.system.signed import MIN_SECRET, SignedTokens, Words

AUDIENCE = "cfn-mcp"
SCOPES = ("read", "write")
SECRET_FILE = "secret"  # noqa: S105 (a file name)


@dataclass(frozen=True)
class Claims:
    """What a verified token says about its bearer."""

    agent_id: str
    task_id: str
    skills: tuple[str, ...]
    scope: frozenset[str] = field(default_factory=lambda: frozenset({"read"}))
    expires_at: int = 0
    issued_at: int = 0
    token_id: str = ""

    @property
    def can_write(self) -> bool:
        return "write" in self.scope


def secret_path(settings: Settings) -> Path:
    return settings.state_dir / "mcp" / SECRET_FILE


def load_secret(settings: Settings) -> bytes:
    """MCP_AUTH_TOKEN, else ``<state>/mcp/secret`` (created once, 0600)."""
    if settings.mcp_auth_token is not None:
        value = settings.mcp_auth_token.get_secret_value()
        if len(value) < MIN_SECRET:
            raise ConfigError(
                f"MCP_AUTH_TOKEN is too short to sign tokens: use at least {MIN_SECRET} "
                "random characters (e.g. `openssl rand -hex 32`)"
            )
        return value.encode()
    return read_or_create(secret_path(settings))


def _check_skills(skills: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(keys.validate_id(s, "skill") for s in skills))
    if not out:
        raise InvalidInputError("a token needs at least one skill (e.g. redis-management)")
    return out


def _check_scope(scope: Iterable[str]) -> frozenset[str]:
    values = frozenset(scope)
    unknown = values - set(SCOPES)
    if unknown or not values:
        raise InvalidInputError(
            f"scope must be one or more of {', '.join(SCOPES)}; got {sorted(values) or 'none'}"
        )
    return values | {"read"}


def _claims(data: Mapping[str, Any]) -> Claims:
    return Claims(
        agent_id=keys.validate_id(data["sub"], "agent id"),
        task_id=keys.validate_id(data.get("task"), "task id"),
        skills=_check_skills(data.get("skills") or ()),
        scope=_check_scope(data.get("scope") or ("read",)),
        expires_at=int(data["exp"]),
        issued_at=int(data["iat"]),
        token_id=str(data.get("jti", "")),
    )


WORDS = Words(
    missing="missing token: send 'Authorization: Bearer <token>'",
    expired="expired token: mint a new one (cfn mcp token)",
    malformed="malformed token: not a cfn MCP token (JWT)",
    audience="token is not meant for cfn MCP servers",
)


class TokenAuthority:
    """Mints and verifies tokens under one secret (cfn.system.signed)."""

    def __init__(self, secret: bytes, *, leeway: float = 5.0) -> None:
        self._tokens = SignedTokens(
            secret,
            AUDIENCE,
            parse=_claims,
            expires_at=lambda c: c.expires_at,
            error=McpAuthError,
            words=WORDS,
            leeway=leeway,
            what="MCP signing secret",
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthority:
        return cls(load_secret(settings))

    def mint(
        self,
        agent_id: str,
        task_id: str,
        skills: Iterable[str],
        *,
        scope: Iterable[str] = ("read",),
        ttl: float = 3600,
        now: float | None = None,
    ) -> str:
        keys.validate_id(agent_id, "agent id")
        keys.validate_id(task_id, "task id")
        claims = {
            "task": task_id,
            "skills": list(_check_skills(skills)),
            "scope": sorted(_check_scope(scope)),
        }
        return self._tokens.mint(agent_id, claims, ttl, now)

    def verify(self, token: str | None) -> Claims:
        """The token's claims; McpAuthError with the reason when it is not acceptable."""
        return self._tokens.verify(token)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
