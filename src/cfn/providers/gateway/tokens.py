"""The LLM gateway's per-agent tokens.

Minted at spawn, by whoever starts the agent (the loop's launcher, ``cfn
spawn-agent``), after the router has chosen the agent's route. A token is a
JWT (HS256) under the gateway's own secret (``<state>/llm-gateway/secret``,
0600, created once) with:

``sub``        the agent id
``task``       the task id
``provider``   the routed provider, ``model`` the routed model
``providers``  every provider the agent may be served by (the route and its
               fallback chain); a request naming another one is refused (403)
``aud``        ``cfn-llm`` (an MCP token is refused here, and the other way round)
``exp``/``iat``/``jti``

Agents send it as ``x-api-key`` (Anthropic SDKs, Claude Code) or
``Authorization: Bearer`` (OpenAI SDKs). The provider keys themselves stay in
the gateway's process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from cfn import keys
from cfn.errors import AuthError, ConfigError, InvalidInputError
from cfn.providers.routes import MODEL_NAME, validate_provider_name
from cfn.settings import Settings
from cfn.system.secrets import read_or_create

ISSUER = "cfn"
AUDIENCE = "cfn-llm"
ALGORITHM = "HS256"
MIN_SECRET = 32
MAX_TOKEN = 8192
VERIFIED_CACHE = 4096


@dataclass(frozen=True)
class LlmClaims:
    """What a verified gateway token says about its bearer."""

    agent_id: str
    task_id: str
    provider: str
    model: str
    providers: tuple[str, ...]
    expires_at: int = 0
    token_id: str = ""


def secret_path(settings: Settings) -> Path:
    return settings.state_dir / "llm-gateway" / "secret"


def _providers(values: Iterable[object]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidInputError("providers must be names")
        out.append(validate_provider_name(value))
    return tuple(dict.fromkeys(out))


def _model(value: object) -> str:
    if not isinstance(value, str) or MODEL_NAME.fullmatch(value) is None:
        raise InvalidInputError(f"not a model name: {value!r}")
    return value


class LlmTokenAuthority:
    """Mints and verifies gateway tokens under one secret."""

    def __init__(self, secret: bytes, *, leeway: float = 5.0) -> None:
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"the LLM gateway secret must be at least {MIN_SECRET} bytes")
        self._secret = secret
        self.leeway = leeway
        self._verified: dict[str, LlmClaims] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> LlmTokenAuthority:
        return cls(read_or_create(secret_path(settings)))

    def mint(
        self,
        agent_id: str,
        task_id: str,
        *,
        provider: str,
        model: str,
        providers: Iterable[str] = (),
        ttl: float = 3600,
        now: float | None = None,
    ) -> str:
        keys.validate_id(agent_id, "agent id")
        keys.validate_id(task_id, "task id")
        chosen = validate_provider_name(provider)
        allowed = _providers([chosen, *providers])
        if isinstance(ttl, bool) or not 0 < ttl <= 30 * 24 * 3600:
            raise InvalidInputError("token ttl must be from 1 s to 30 days")
        issued = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": agent_id,
            "task": task_id,
            "provider": chosen,
            "model": _model(model),
            "providers": list(allowed),
            "iat": issued,
            "exp": issued + int(ttl),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> LlmClaims:
        """The token's claims; ``AuthError`` (401) with the reason when it is not acceptable."""
        if not token:
            raise AuthError(
                "missing token: send the agent's cfn LLM token as 'x-api-key' or "
                "'Authorization: Bearer'"
            )
        known = self._verified.get(token)
        if known is not None:
            if time.time() <= known.expires_at + self.leeway:
                return known
            del self._verified[token]
            raise AuthError("expired token: the agent's LLM token has expired")
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> LlmClaims:
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise AuthError("malformed token: not a cfn LLM gateway token")
        try:  # the audience first, unverified, only to say why a token is refused
            claimed = jwt.decode(token, options={"verify_signature": False}).get("aud")
        except jwt.InvalidTokenError:
            claimed = None
        if claimed is not None and claimed != AUDIENCE:
            raise AuthError(
                f"token is not meant for the LLM gateway (audience {str(claimed)[:40]!r})"
            )
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
            raise AuthError("expired token: the agent's LLM token has expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("forged token: its signature does not match") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token is not meant for the LLM gateway (audience)") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        try:
            providers = data.get("providers") or ()
            if not isinstance(providers, list):
                raise InvalidInputError("providers must be a list")
            return LlmClaims(
                agent_id=keys.validate_id(data["sub"], "agent id"),
                task_id=keys.validate_id(data.get("task"), "task id"),
                provider=validate_provider_name(str(data.get("provider"))),
                model=_model(data.get("model")),
                providers=_providers(providers),
                expires_at=int(data["exp"]),
                token_id=str(data.get("jti", "")),
            )
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise AuthError(f"malformed token claims: {exc}") from None


def token_from_headers(api_key: str | None, authorization: str | None) -> str | None:
    """The token of ``x-api-key``, else of ``Authorization: Bearer <token>``."""
    if api_key and api_key.strip():
        return api_key.strip()
    if not authorization:
        return None
    kind, _, value = authorization.partition(" ")
    if kind.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
