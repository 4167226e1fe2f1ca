"""Hypothesis-driven fuzzing of the parsers that take outside input.

Each parser either accepts its input (and then the result obeys the rules) or
raises cfn's own error with a message: never another exception. The default
profile keeps the example counts moderate; ``@pytest.mark.long`` runs more.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfn import keys
from cfn.agents.context import AgentContext, generate_cli_context
from cfn.coordination import completion
from cfn.errors import AgentContextError, AuthError, CfnError, InvalidIdError, McpAuthError
from cfn.mcp.routing import parse_skill_mapping
from cfn.mcp.tokens import TokenAuthority
from cfn.portal.auth import AUDIENCE, ISSUER, verify_token
from cfn.profiles import load_profile_file, parse_profile
from cfn.settings import Settings, load_settings

EXAMPLES = 100
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LONG = settings(
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SECRET = b"s" * 48
GLOB = set("*?[]\\")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip
# Ids: mostly near-valid ones (the interesting edge), plus anything at all.
ids = st.one_of(
    st.text(alphabet="abcAZ09._-*?[]:/\\\n\x00 é", max_size=140),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True),
)


# --- keys -------------------------------------------------------------------------------


def check_id(value: str) -> None:
    try:
        got = keys.validate_id(value)
    except InvalidIdError as exc:
        assert "invalid" in str(exc)
        return
    assert got == value and keys.ID_PATTERN.fullmatch(value) and value not in {".", ".."}
    built = [
        keys.coord_complete(value),
        keys.coord_payload(value, value),
        keys.heartbeat(value, value),
        keys.context(value, value),
        keys.usage_agent(value, value),
    ]
    for key in built:
        assert not GLOB & set(key) and "\n" not in key and "\x00" not in key
    # No separator smuggled through the id: coord:{task}:payload:{agent} has exactly three.
    assert keys.coord_payload(value, value).count(":") == 3
    assert ":" not in value and "/" not in value


@FAST
@given(ids)
def test_fuzz_validate_id(value: str) -> None:
    check_id(value)


@FAST
@given(st.text(max_size=80))
def test_fuzz_validate_channel(value: str) -> None:
    try:
        keys.validate_channel(value)
    except InvalidIdError:
        return
    assert not GLOB & set(value) and 0 < len(value) <= keys.CHANNEL_MAX


# --- completion payloads ------------------------------------------------------------------


def check_payload(raw: str) -> None:
    item = completion.AgentResult("a1", "success")
    completion.judge_payload(item, raw)  # the collector's parser of one payload
    if item.ok:
        assert item.confidence is not None and 0.0 <= item.confidence <= 1.0
        payload = json.loads(raw)
        assert payload["confidence"] == item.confidence
    else:
        assert item.reason


@FAST
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps)))
def test_fuzz_completion_payload(raw: str) -> None:
    check_payload(raw)


@FAST
@given(json_values, json_values)
def test_fuzz_confidence(confidence: Any, other: Any) -> None:
    value, why = completion.parse_confidence({"confidence": confidence, "x": other})
    assert (value is None) != (why is None)
    if value is not None:
        assert 0.0 <= value <= 1.0 and not isinstance(confidence, bool)


# --- the agent context ----------------------------------------------------------------------


def _valid_context(tmp: Path) -> dict[str, Any]:
    ctx = generate_cli_context(
        "t1", "a1", settings=Settings(cfn_state_dir=tmp), redis_host="127.0.0.1",
        redis_port=6379, workspace=tmp,
    )  # fmt: skip
    return ctx.to_dict()


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    node: Any = data
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            return data
        node = node[part]
    if isinstance(node, dict):
        node[path[-1]] = value
    return data


def _paths(data: Any, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    if not isinstance(data, dict):
        return [list(prefix)] if prefix else []
    found = [list(prefix)] if prefix else []
    for key, value in data.items():
        found += _paths(value, (*prefix, key))
    return found


def check_context(text: str) -> None:
    try:
        ctx = AgentContext.from_json(text)
    except AgentContextError as exc:
        assert str(exc).startswith("agent context")
        return
    keys.validate_id(ctx.task_id)
    keys.validate_id(ctx.agent_id)
    assert ctx.coordination.channels.complete == keys.coord_complete(ctx.task_id)


@FAST
@given(st.data())
def test_fuzz_context_fields(tmp_path: Path, data: st.DataObject) -> None:
    base = _valid_context(tmp_path)
    path = data.draw(st.sampled_from(_paths(base)))
    value = data.draw(st.one_of(json_values, ids))
    check_context(json.dumps(_set_path(json.loads(json.dumps(base)), path, value)))


@FAST
@given(st.one_of(st.text(max_size=300), json_values.map(json.dumps)))
def test_fuzz_context_text(text: str) -> None:
    check_context(text)


# --- profiles -------------------------------------------------------------------------------


@FAST
@given(st.dictionaries(st.sampled_from(["id", "name", "temperature", "max_tokens", "provider",
                                         "model", "instructions", "tools", "x"]),
                       json_values, max_size=6))  # fmt: skip
def test_fuzz_profile_object(data: dict[str, Any]) -> None:
    try:
        profile = parse_profile(data, "fuzz")
    except CfnError as exc:
        assert "agent profile fuzz" in str(exc)
        return
    keys.validate_id(profile.id, "profile id")


@FAST
@given(
    st.sampled_from([".json", ".md"]),
    st.one_of(
        st.text(max_size=300),
        json_values.map(json.dumps),
        st.builds(lambda head, body: f"---\n{head}\n---\n{body}", st.text(max_size=80),
                  st.text(max_size=80)),
    ),
)  # fmt: skip
def test_fuzz_profile_file(tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(CfnError):
        load_profile_file(path, allow_plain_markdown=True)


# --- tokens -----------------------------------------------------------------------------------


def check_portal_token(token: object) -> None:
    try:
        who = verify_token(SECRET, token)
    except AuthError as exc:
        assert str(exc)
        return
    keys.validate_id(who.sub)
    assert who.role in ("agent", "operator", "admin")
    assert who.role != "agent" or who.task_id is not None


@FAST
@given(st.one_of(st.text(max_size=200), st.integers(), st.none(), json_values))
def test_fuzz_portal_token_text(token: object) -> None:
    check_portal_token(token)


@FAST
@given(st.dictionaries(st.sampled_from(["sub", "role", "task_id", "aud", "iss", "exp", "iat",
                                         "x"]), json_values, max_size=8))  # fmt: skip
def test_fuzz_portal_token_claims(claims: dict[str, Any]) -> None:
    """Claims signed with the real key: only well-formed ones are accepted."""
    now = int(time.time())
    full = {"aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 60, **claims}
    try:
        token = jwt.encode(full, SECRET, "HS256")
    except (TypeError, ValueError):
        return  # not encodable as a JWT at all
    check_portal_token(token)


@FAST
@given(
    st.one_of(st.text(max_size=200), st.none()),
    st.dictionaries(st.sampled_from(["sub", "task", "skills", "scope", "aud", "iss", "exp",
                                     "iat", "jti"]), json_values, max_size=9),
)  # fmt: skip
def test_fuzz_mcp_token(text: str | None, claims: dict[str, Any]) -> None:
    authority = TokenAuthority(SECRET)
    for token in (text, _mcp_signed(claims)):
        if token is None and text is not None:
            continue
        try:
            got = authority.verify(token)
        except McpAuthError as exc:
            assert str(exc)
            continue
        keys.validate_id(got.agent_id)
        keys.validate_id(got.task_id)
        assert got.skills and "read" in got.scope


def _mcp_signed(claims: dict[str, Any]) -> str | None:
    now = int(time.time())
    real = TokenAuthority(SECRET).mint("a1", "t1", ["redis-management"])
    aud = jwt.decode(real, options={"verify_signature": False})["aud"]
    full = {"aud": aud, "iss": "cfn", "iat": now, "exp": now + 60, **claims}
    try:
        return jwt.encode(full, SECRET, "HS256")
    except (TypeError, ValueError):
        return None


# --- configuration ------------------------------------------------------------------------------

SETTINGS_ENV = [
    "REDIS_CONNECT_TIMEOUT", "AGENT_TIMEOUT", "CFN_REDIS_SENTINELS", "CFN_REDIS_AGENT_ACL",
    "CFN_AGENT_HEARTBEAT_INTERVAL", "AGENT_CPU_LIMIT", "REDIS_MAX_RETRIES_PER_REQUEST",
    "CFN_CONTEXT_MAX_BYTES", "CFN_REDIS_PORT", "CFN_AGENT_CGROUPS", "REDIS_LAZY_CONNECT",
]  # fmt: skip
env_text = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=30
) | st.sampled_from(["nan", "inf", "-1", "0", "1e309", "true", "1,2", "[]", "{}", "on"])


@contextlib.contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@FAST
@given(st.dictionaries(st.sampled_from(SETTINGS_ENV), env_text, min_size=1, max_size=3))
def test_fuzz_settings_env(tmp_path: Path, values: dict[str, str]) -> None:
    with env({**values, "CFN_STATE_DIR": str(tmp_path)}):
        try:
            loaded = load_settings()
        except CfnError as exc:
            assert str(exc).startswith("invalid configuration")
            return
    assert loaded.redis_connect_timeout > 0 and loaded.agent_timeout > 0


@FAST
@given(st.one_of(st.text(max_size=100), json_values.map(json.dumps)))
def test_fuzz_skill_mapping(text: str) -> None:
    try:
        mapping = parse_skill_mapping(text)
    except CfnError as exc:
        assert "MCP_SKILL_MAPPING" in str(exc)
        return
    assert mapping and all(isinstance(v, tuple) for v in mapping.values())


# --- the long profile ----------------------------------------------------------------------------


@pytest.mark.long
@LONG
@given(ids, st.text(max_size=400), st.one_of(st.text(max_size=300), st.none()))
def test_fuzz_long(value: str, raw: str, token: str | None) -> None:
    check_id(value)
    check_payload(raw)
    check_context(raw)
    check_portal_token(token)
