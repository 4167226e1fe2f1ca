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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfn import keys
from cfn.errors import AuthError, InvalidInputError
from cfn.providers.routes import MODEL_NAME, validate_provider_name
from cfn.settings import Settings
from cfn.system.secrets import read_or_create
from cfn.system.signed import SignedTokens, Words

AUDIENCE = "cfn-llm"


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


def _claims(data: Mapping[str, Any]) -> LlmClaims:
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


WORDS = Words(
    missing="missing token: send the agent's cfn LLM token as 'x-api-key' or "
    "'Authorization: Bearer'",
    expired="expired token: the agent's LLM token has expired",
    malformed="malformed token: not a cfn LLM gateway token",
    audience="token is not meant for the LLM gateway",
)


class LlmTokenAuthority:
    """Mints and verifies gateway tokens under one secret (cfn.system.signed)."""

    def __init__(self, secret: bytes, *, leeway: float = 5.0) -> None:
        self._tokens = SignedTokens(
            secret,
            AUDIENCE,
            parse=_claims,
            expires_at=lambda c: c.expires_at,
            error=AuthError,
            words=WORDS,
            leeway=leeway,
            check_audience_first=True,
            what="LLM gateway secret",
        )

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
        claims = {
            "task": task_id,
            "provider": chosen,
            "model": _model(model),
            "providers": list(_providers([chosen, *providers])),
        }
        return self._tokens.mint(agent_id, claims, ttl, now)

    def verify(self, token: str | None) -> LlmClaims:
        """The token's claims; ``AuthError`` (401) with the reason when it is not acceptable."""
        return self._tokens.verify(token)


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
