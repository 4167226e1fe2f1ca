"""Portal tokens: the seed's ``generate_agent_token`` as HS256 JWTs (PyJWT).

A token's claims are the seed's: ``sub`` (the agent id, or a person's name),
``aud`` = ``cfn-agents``, ``exp`` = now + 1 h by default, ``task_id`` and
``role``. Roles:

- ``agent``: one task only (``task_id`` is required); reads that task and
  its live events, nothing else.
- ``operator``: a person running tasks: every read (metrics too), creating
  tasks, decisions, spawning and stopping agents.
- ``admin``: an operator who may also mint tokens through the API.

The signing key is CFN_PORTAL_SECRET, or one generated on first use and kept
at ``<state>/portal/jwt.secret`` (mode 0600). It is never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt

from cfn import keys
from cfn.errors import AuthError, ConfigError, ForbiddenError, InvalidInputError
from cfn.settings import Settings

AUDIENCE = "cfn-agents"
ISSUER = "cfn"
ALGORITHM = "HS256"
ROLES: tuple[str, ...] = ("agent", "operator", "admin")
Role = Literal["agent", "operator", "admin"]
SECRET_FILE = "jwt.secret"  # noqa: S105 (a file name)
MIN_SECRET = 32
#: Clock skew tolerated between the minting and the checking machine.
LEEWAY = 5


def secret_path(settings: Settings) -> Path:
    return settings.state_dir / "portal" / SECRET_FILE


def load_secret(settings: Settings) -> bytes:
    """CFN_PORTAL_SECRET, or the generated one (created once, 0600, race-free)."""
    if settings.cfn_portal_secret is not None:
        value = settings.cfn_portal_secret.get_secret_value().encode()
        if len(value) < MIN_SECRET:
            raise ConfigError(
                f"CFN_PORTAL_SECRET must be at least {MIN_SECRET} characters (HS256 needs a "
                "long key); unset it to have cfn generate one"
            )
        return value
    path = secret_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    value = path.read_bytes().strip()
    if len(value) < MIN_SECRET:
        raise ConfigError(f"{path} holds no usable key; delete it to have a new one generated")
    return value


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    sub: str
    role: Role
    task_id: str | None
    exp: int

    @property
    def is_person(self) -> bool:
        return self.role in ("operator", "admin")

    def require(self, *roles: Role) -> Principal:
        if self.role not in roles:
            raise ForbiddenError(
                f"role {self.role!r} may not do this; it needs {' or '.join(roles)}"
            )
        return self

    def require_task(self, task_id: str) -> Principal:
        """Agents see their own task only; people see every task."""
        if self.role == "agent" and self.task_id != task_id:
            raise ForbiddenError(
                f"this agent token is for task {self.task_id!r}, not {task_id!r}"
            )
        return self


def _check_role(role: object) -> Role:
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role  # type: ignore[return-value]


def mint_token(
    secret: bytes,
    sub: str,
    role: str,
    task_id: str | None = None,
    ttl: float = 3600.0,
    now: float | None = None,
) -> str:
    """The seed's ``generate_agent_token``: sub, aud=cfn-agents, exp=now+ttl, task_id, role."""
    keys.validate_id(sub, "token subject")
    checked = _check_role(role)
    if checked == "agent" and task_id is None:
        raise InvalidInputError("an agent token needs a task id (--task-id)")
    if task_id is not None:
        keys.validate_id(task_id, "task id")
    if not 0 < ttl <= 366 * 24 * 3600:
        raise InvalidInputError(f"token lifetime must be 1 s to 366 days, got {ttl!r}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": issued,
        "exp": issued + int(ttl),
        "role": checked,
        "task_id": task_id,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: bytes, token: object) -> Principal:
    """A verified principal, or AuthError saying exactly what is wrong with the token."""
    if not isinstance(token, str) or not token.strip():
        raise AuthError("no token: send 'Authorization: Bearer <token>' (mint one: cfn token)")
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": ["sub", "aud", "exp", "iat", "role"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired: mint a new one (cfn token)") from None
    except jwt.InvalidAudienceError:
        raise AuthError(f"token audience is not {AUDIENCE!r}") from None
    except jwt.InvalidSignatureError:
        raise AuthError(
            "token signature does not verify: not minted with this portal's key"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    role = claims.get("role")
    if role not in ROLES:
        raise AuthError(f"token role {role!r} is not one of {', '.join(ROLES)}")
    sub = claims.get("sub")
    task_id = claims.get("task_id")
    try:
        keys.validate_id(sub, "token subject")
        if task_id is not None:
            keys.validate_id(task_id, "task id")
    except InvalidInputError as exc:
        raise AuthError(f"token claims are malformed: {exc}") from None
    if role == "agent" and task_id is None:
        raise AuthError("agent token without a task_id claim")
    return Principal(sub=str(sub), role=role, task_id=task_id, exp=int(claims["exp"]))


class Verifier:
    """:func:`verify_token` with verified tokens remembered until they expire.

    A request's JWT check (PyJWT's decode: base64, JSON, HMAC, claims) costs
    about as much as the rest of a cheap request; people and agents send the
    same token again and again. A token string verified once is kept (up to
    ``size``, least recently used out first) with its principal and is
    accepted again only while ``now < exp + LEEWAY`` — PyJWT's own expiry rule —
    so a remembered token expires exactly when a re-verified one would. Any
    other string (a forged or altered token) is not in the map and is verified
    in full. The map holds only what verification already accepted.
    """

    def __init__(self, secret: bytes, size: int = 4096) -> None:
        self.secret = secret
        self.size = size
        self._known: OrderedDict[str, Principal] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, token: object) -> Principal:
        if isinstance(token, str):
            with self._lock:
                known = self._known.get(token)
                if known is not None:
                    if time.time() < known.exp + LEEWAY:
                        self._known.move_to_end(token)
                        return known
                    del self._known[token]
        principal = verify_token(self.secret, token)
        assert isinstance(token, str)  # verify_token accepted it
        with self._lock:
            self._known[token] = principal
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        return principal


# --- dashboard login codes ------------------------------------------------------------

#: Lifetime of a login code: the printed link is opened right away, or printed again.
LOGIN_TTL = 600
LOGIN_PURPOSE = b"cfn-portal-login-code\x00"
LOGIN_ROLES: tuple[str, ...] = ("operator", "admin")


@dataclass(frozen=True)
class LoginCode:
    """A verified login code: who it signs in, until when, and for how long a session."""

    sub: str
    role: Role
    exp: int
    session_ttl: int
    nonce: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _login_mac(secret: bytes, payload: str) -> bytes:
    return hmac.new(secret, LOGIN_PURPOSE + payload.encode(), hashlib.sha256).digest()[:16]


def mint_login_code(
    secret: bytes,
    sub: str,
    role: str = "operator",
    *,
    session_ttl: float = 12 * 3600,
    ttl: float = LOGIN_TTL,
    now: float | None = None,
) -> str:
    """A single-use, short-lived code for the dashboard link (not a bearer token).

    ``payload.mac``: the payload (subject, role, expiry, session lifetime, a
    random nonce) and a truncated HMAC-SHA256 of it under the portal's key with
    a purpose prefix, so no JWT verifies as a code and no code as a JWT. The
    portal exchanges it once (``POST /api/login``) for a session token; the
    nonce is then marked used in Redis until the code expires.
    """
    keys.validate_id(sub, "login subject")
    if role not in LOGIN_ROLES:
        raise InvalidInputError(
            f"a login code is for people: role must be {' or '.join(LOGIN_ROLES)}, got {role!r}"
        )
    if not 0 < ttl <= 24 * 3600:
        raise InvalidInputError(f"login code lifetime must be 1 s to 1 day, got {ttl!r}")
    if not 60 <= session_ttl <= 366 * 24 * 3600:
        raise InvalidInputError(f"session lifetime must be 60 s to 366 days, got {session_ttl!r}")
    issued = int(time.time() if now is None else now)
    body = {
        "s": sub,
        "r": role,
        "e": issued + int(ttl),
        "t": int(session_ttl),
        # hex: a nonce is an id (keys.validate_id), and an id may not start with "-"
        "n": secrets.token_hex(12),
    }
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_b64(_login_mac(secret, payload))}"


def read_login_code(secret: bytes, code: object, now: float | None = None) -> LoginCode:
    """The code's contents when its MAC verifies and it has not expired; else AuthError.

    Single use is the caller's part (the portal marks the nonce used in Redis).
    """
    if not isinstance(code, str) or not code.strip():
        raise AuthError("no login code: open the link `cfn portal link` prints")
    payload, dot, mac = code.strip().partition(".")
    try:
        given = _unb64(mac)
    except ValueError:
        given = b""
    if not dot or not hmac.compare_digest(given, _login_mac(secret, payload)):
        raise AuthError("login code does not verify: not made by this portal, or altered")
    try:
        body = json.loads(_unb64(payload))
        sub = keys.validate_id(body["s"], "login subject")
        role = body["r"]
        exp = int(body["e"])
        session_ttl = int(body["t"])
        nonce = keys.validate_id(body["n"], "login code nonce")
    except (ValueError, KeyError, TypeError, InvalidInputError) as exc:
        raise AuthError(f"login code is malformed: {exc}") from None
    if role not in LOGIN_ROLES:
        raise AuthError(f"login code role {role!r} is not one of {', '.join(LOGIN_ROLES)}")
    if (time.time() if now is None else now) >= exp + LEEWAY:
        raise AuthError(
            "login code expired: print a new link with `cfn portal link` "
            "(or `cfn portal --detach`, which reuses the running portal)"
        )
    return LoginCode(sub=sub, role=role, exp=exp, session_ttl=session_ttl, nonce=nonce)
