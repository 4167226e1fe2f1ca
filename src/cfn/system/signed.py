"""Signed, expiring tokens (JWT, HS256) of one audience under one secret.

The MCP gateway's tokens (``cfn.mcp.tokens``) and the LLM gateway's
(``cfn.providers.gateway.tokens``) are both this: ``iss`` cfn, their own ``aud``,
``sub``, ``iat``, ``exp``, ``jti`` and the claims each adds. Minting, checking the
signature and the standard claims, turning each failure into one reason, and
remembering verified tokens until they expire are here once; each kind of
token keeps its own claims, its error type and the words of its messages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import jwt

from cfn.errors import CfnError, ConfigError, InvalidInputError

ISSUER = "cfn"
ALGORITHM = "HS256"
MIN_SECRET = 32
MAX_TOKEN = 8192
MAX_TTL = 30 * 24 * 3600
#: Verified tokens remembered per authority (cleared when full).
VERIFIED_CACHE = 4096

C = TypeVar("C")


@dataclass(frozen=True)
class Words:
    """What a kind of token's refusals say (each is a whole message)."""

    missing: str
    expired: str
    malformed: str
    audience: str
    forged: str = "forged token: its signature does not match"


class SignedTokens(Generic[C]):
    """Mints and verifies one audience's tokens; ``parse`` turns a verified payload into
    the claims (raising InvalidInputError, TypeError or ValueError when they are bad)."""

    def __init__(
        self,
        secret: bytes,
        audience: str,
        *,
        parse: Callable[[Mapping[str, Any]], C],
        expires_at: Callable[[C], int],
        error: type[CfnError],
        words: Words,
        leeway: float = 5.0,
        check_audience_first: bool = False,
        what: str = "signing secret",
    ) -> None:
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"the {what} must be at least {MIN_SECRET} bytes")
        self._secret = secret
        self.audience = audience
        self.leeway = leeway
        self._parse = parse
        self._expires_at = expires_at
        self._error = error
        self.words = words
        self._audience_first = check_audience_first
        # Verified tokens -> claims. A token's bytes fix its claims under one secret, so a
        # repeat (every request of a session carries the same token) needs only the
        # expiry check: saves the HMAC and the claim checks on the hot path.
        self._verified: dict[str, C] = {}

    def mint(self, subject: str, claims: Mapping[str, Any], ttl: float, now: float | None) -> str:
        if isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL:
            raise InvalidInputError("token ttl must be from 1 s to 30 days")
        issued = int(now if now is not None else time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": self.audience,
            "sub": subject,
            **claims,
            "iat": issued,
            "exp": issued + int(ttl),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> C:
        """The token's claims; the error type with the reason when it is not acceptable."""
        if not token:
            raise self._error(self.words.missing)
        known = self._verified.get(token)
        if known is not None:
            if time.time() <= self._expires_at(known) + self.leeway:
                return known
            del self._verified[token]
            raise self._error(self.words.expired)
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> C:
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise self._error(self.words.malformed)
        if self._audience_first:
            # Unverified, only to say why: another kind of cfn token is not a forgery.
            try:
                claimed = jwt.decode(token, options={"verify_signature": False}).get("aud")
            except jwt.InvalidTokenError:
                claimed = None
            if claimed is not None and claimed != self.audience:
                raise self._error(f"{self.words.audience} (audience {str(claimed)[:40]!r})")
        try:
            data = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=ISSUER,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise self._error(self.words.expired) from None
        except jwt.InvalidSignatureError:
            raise self._error(self.words.forged) from None
        except jwt.InvalidAudienceError:
            raise self._error(f"{self.words.audience} (audience)") from None
        except jwt.InvalidTokenError as exc:
            raise self._error(f"malformed token: {exc}") from None
        try:
            return self._parse(data)
        except (InvalidInputError, TypeError, ValueError, KeyError) as exc:
            raise self._error(f"malformed token claims: {exc}") from None
