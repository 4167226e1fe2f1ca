"""Signed MCP tokens.

The seed's token is ``agent-${AGENT_ID}-${TASK_ID}-${TIMESTAMP}``: anyone who
knows (or guesses) an agent id, a task id and roughly when it started can
forge one, and it says nothing about what its bearer may do. cfn's tokens are
JWTs signed with HMAC-SHA256 under a secret (MCP_AUTH_TOKEN, or one generated
once and kept 0600 under the state dir) and carry the agent id, task id,
skills, scope and expiry; every server verifies them itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from cfn import keys
from cfn.errors import ConfigError, InvalidInputError, McpAuthError
from cfn.settings import Settings
from cfn.system.secrets import read_or_create

ISSUER = "cfn"
AUDIENCE = "cfn-mcp"
ALGORITHM = "HS256"
SCOPES = ("read", "write")
SECRET_FILE = "secret"  # noqa: S105 (a file name)
MIN_SECRET = 32
MAX_TOKEN = 8192
#: Verified tokens remembered per process (cleared when full).
VERIFIED_CACHE = 4096


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


class TokenAuthority:
    """Mints and verifies tokens under one secret."""

    def __init__(self, secret: bytes, *, leeway: float = 5.0) -> None:
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"the MCP signing secret must be at least {MIN_SECRET} bytes")
        self._secret = secret
        self.leeway = leeway
        # Verified tokens -> claims. A token's bytes fix its claims under one secret, so a
        # repeat (every request of an MCP session carries the same token) needs only the
        # expiry check: saves the HMAC and claim checks on the hot path (~0.1-0.2 ms).
        self._verified: dict[str, Claims] = {}

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
        if isinstance(ttl, bool) or not 0 < ttl <= 30 * 24 * 3600:
            raise InvalidInputError("token ttl must be from 1 s to 30 days")
        issued = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": agent_id,
            "task": task_id,
            "skills": list(_check_skills(skills)),
            "scope": sorted(_check_scope(scope)),
            "iat": issued,
            "exp": issued + int(ttl),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> Claims:
        """The token's claims; McpAuthError with the reason when it is not acceptable."""
        if not token:
            raise McpAuthError("missing token: send 'Authorization: Bearer <token>'")
        known = self._verified.get(token)
        if known is not None:
            if time.time() <= known.expires_at + self.leeway:
                return known
            del self._verified[token]
            raise McpAuthError("expired token: mint a new one (cfn mcp token)")
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise McpAuthError("malformed token: not a cfn MCP token (JWT)")
        try:
            data = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise McpAuthError("expired token: mint a new one (cfn mcp token)") from None
        except jwt.InvalidSignatureError:
            raise McpAuthError("forged token: its signature does not match") from None
        except jwt.InvalidAudienceError:
            raise McpAuthError("token is not meant for cfn MCP servers (audience)") from None
        except jwt.InvalidTokenError as exc:
            raise McpAuthError(f"malformed token: {exc}") from None
        try:
            return Claims(
                agent_id=keys.validate_id(data["sub"], "agent id"),
                task_id=keys.validate_id(data.get("task"), "task id"),
                skills=_check_skills(data.get("skills") or ()),
                scope=_check_scope(data.get("scope") or ("read",)),
                expires_at=int(data["exp"]),
                issued_at=int(data["iat"]),
                token_id=str(data.get("jti", "")),
            )
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise McpAuthError(f"malformed token claims: {exc}") from None


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
