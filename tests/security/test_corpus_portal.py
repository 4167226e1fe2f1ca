"""The bad-input corpus against the portal: REST (uvicorn on a port) and Socket.IO.

Every REST case gets a 4xx with a JSON error body (never a 500); every
Socket.IO case is refused at connect with a reason; nothing is written to
Redis or SQL by the whole batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
import socketio

from cfn.portal.auth import AUDIENCE, ISSUER, load_secret, mint_token
from tests.portal.conftest import RunningPortal
from tests.security.corpus import BAD_IDS, deep_json, redis_snapshot, sql_counts
from tests.support.servers import RedisServer

FORGED_KEY = b"f" * 64

#: (name, method, path, headers kind, body): headers kind is a role or a token kind.
RestCase = tuple[str, str, str, str, Any]


def _token(portal: RunningPortal, kind: str) -> str | None:
    secret = load_secret(portal.settings)
    now = int(time.time())
    base = {"sub": "tester", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 600}
    tokens: dict[str, str | None] = {
        "none": None,
        "operator": mint_token(secret, "tester", "operator"),
        "admin": mint_token(secret, "root", "admin"),
        "agent-t1": mint_token(secret, "impl-1-1", "agent", "sec-t1"),
        "forged": mint_token(FORGED_KEY, "tester", "admin"),
        "expired": jwt.encode({**base, "role": "admin", "exp": now - 3600}, secret, "HS256"),
        "audience": jwt.encode({**base, "role": "admin", "aud": "other"}, secret, "HS256"),
        "alg-none": jwt.encode({**base, "role": "admin"}, None, "none"),
        "role-root": jwt.encode({**base, "role": "root"}, secret, "HS256"),
        "agent-no-task": jwt.encode({**base, "role": "agent"}, secret, "HS256"),
        "sub-traversal": jwt.encode({**base, "role": "admin", "sub": "../x"}, secret, "HS256"),
        "task-glob": jwt.encode({**base, "role": "agent", "task_id": "sec-*"}, secret, "HS256"),
        "no-exp": jwt.encode(
            {k: v for k, v in base.items() if k != "exp"} | {"role": "admin"}, secret, "HS256"
        ),
        "garbage": "not.a.jwt",
        "huge": "a." + "b" * 6000 + ".c",
        "hs512": jwt.encode({**base, "role": "admin"}, secret + b"x" * 64, "HS512"),
    }
    return tokens[kind]


AUTH_KINDS = [
    "none", "forged", "expired", "audience", "alg-none", "role-root", "agent-no-task",
    "sub-traversal", "task-glob", "no-exp", "garbage", "huge", "hs512",
]  # fmt: skip


def _cases() -> list[RestCase]:
    cases: list[RestCase] = []
    for kind in AUTH_KINDS:
        cases.append((f"auth-{kind}", "GET", "/api/tasks", kind, None))
    cases += [
        ("auth-basic", "GET", "/api/tasks", "basic", None),
        ("auth-bearer-empty", "GET", "/api/tasks", "bearer-empty", None),
        ("cross-task-status", "GET", "/api/tasks/sec-t2/status", "agent-t1", None),
        ("cross-task-agents", "GET", "/api/agents/sec-t2", "agent-t1", None),
        ("agent-creates-task", "POST", "/api/tasks/create", "agent-t1", {"epic": "x"}),
        ("agent-decides", "POST", "/api/tasks/sec-t1/decision", "agent-t1",
         {"decision": "PROCEED"}),
        ("agent-mints", "POST", "/api/tokens", "agent-t1", {"sub": "x", "role": "admin"}),
        ("operator-mints", "POST", "/api/tokens", "operator", {"sub": "x", "role": "admin"}),
        ("agent-metrics", "GET", "/api/metrics/agents", "agent-t1", None),
        ("agent-spawns", "POST", "/api/agents/spawn", "agent-t1",
         {"agentId": "a1", "taskId": "sec-t1"}),
    ]  # fmt: skip
    for n, bad in enumerate(BAD_IDS):
        if not bad or bad in {".", ".."}:
            continue  # not a path segment (the router normalises or 404s it)
        seg = quote(bad, safe="")
        cases.append((f"status-id-{n}", "GET", f"/api/tasks/{seg}/status", "operator", None))
        cases.append((f"agents-id-{n}", "GET", f"/api/agents/{seg}", "operator", None))
        cases.append((f"stop-id-{n}", "DELETE", f"/api/agents/{seg}", "operator", None))
    for n, bad in enumerate([*BAD_IDS, "a\x00b"]):
        cases.append(
            (
                f"create-task-id-{n}",
                "POST",
                "/api/tasks/create",
                "operator",
                {"epic": "x", "task_id": bad},
            )
        )
        cases.append(
            (
                f"spawn-ids-{n}",
                "POST",
                "/api/agents/spawn",
                "operator",
                {"agentId": bad, "taskId": "sec-t1"},
            )
        )
    create = "/api/tasks/create"
    cases += [
        ("create-not-json", "POST", create, "operator", b"{epic: x"),
        ("create-array", "POST", create, "operator", b"[1, 2]"),
        ("create-deep", "POST", create, "operator", deep_json(100_000).encode()),
        ("create-huge", "POST", create, "operator",
         json.dumps({"epic": "x" * 3_000_000}).encode()),
        ("create-epic-int", "POST", create, "operator", {"epic": 5}),
        ("create-epic-empty", "POST", create, "operator", {"epic": ""}),
        ("create-implementers-str", "POST", create, "operator", {"epic": "x", "implementers": "3"}),
        ("create-implementers-0", "POST", create, "operator", {"epic": "x", "implementers": 0}),
        ("create-implementers-bool", "POST", create, "operator",
         {"epic": "x", "implementers": True}),
        ("create-mode", "POST", create, "operator", {"epic": "x", "mode": "chaos"}),
        ("create-extra", "POST", create, "operator", {"epic": "x", "admin": True}),
        ("create-cost-str", "POST", create, "operator", {"epic": "x", "cost_sensitive": "yes"}),
        ("create-provider-traversal", "POST", create, "operator",
         {"epic": "x", "provider": "../../x"}),
        ("create-nan", "POST", create, "operator", b'{"epic": "x", "implementers": NaN}'),
        ("create-empty", "POST", create, "operator", b""),
        ("decision-word", "POST", "/api/tasks/sec-t1/decision", "operator",
         {"decision": "MAYBE"}),
        ("decision-reason-long", "POST", "/api/tasks/sec-t1/decision", "operator",
         {"decision": "ABORT", "reason": "r" * 5000}),
        ("decision-bad-task", "POST", "/api/tasks/sec*/decision", "operator",
         {"decision": "ABORT"}),
        ("decision-not-waiting", "POST", "/api/tasks/sec-t1/decision", "operator",
         {"decision": "ABORT"}),
        ("token-role", "POST", "/api/tokens", "admin", {"sub": "x", "role": "root"}),
        ("token-ttl-0", "POST", "/api/tokens", "admin", {"sub": "x", "role": "operator",
                                                         "ttl": 0}),
        ("token-ttl-str", "POST", "/api/tokens", "admin", {"sub": "x", "role": "operator",
                                                           "ttl": "60"}),
        ("token-sub", "POST", "/api/tokens", "admin", {"sub": "a b", "role": "operator"}),
        ("token-task", "POST", "/api/tokens", "admin", {"sub": "x", "role": "agent",
                                                        "task_id": "../t"}),
        ("token-agent-no-task", "POST", "/api/tokens", "admin", {"sub": "x", "role": "agent"}),
        ("tasks-limit-0", "GET", "/api/tasks?limit=0", "operator", None),
        ("tasks-limit-word", "GET", "/api/tasks?limit=all", "operator", None),
        ("tasks-limit-huge", "GET", "/api/tasks?limit=99999999999999999999", "operator", None),
        ("stop-task-query", "DELETE", "/api/agents/a1?taskId=..%2F..", "operator", None),
        ("unknown-task", "GET", "/api/tasks/sec-nope/status", "operator", None),
    ]  # fmt: skip
    return cases


CASES = _cases()


def _headers(portal: RunningPortal, kind: str) -> dict[str, str]:
    if kind == "basic":
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    if kind == "bearer-empty":
        return {"Authorization": "Bearer"}
    token = _token(portal, kind)
    return {"Authorization": f"Bearer {token}"} if token else {}


SOCKET_CASES: list[tuple[str, Any, str]] = [
    ("sio-auth-none", None, "auth"),
    ("sio-auth-string", "token", "auth"),
    ("sio-auth-list", ["a"], "auth"),
    ("sio-auth-empty", {}, "token"),
    ("sio-token-none", {"taskId": "sec-t1", "token": None}, "token"),
    ("sio-token-int", {"taskId": "sec-t1", "token": 5}, "token"),
    ("sio-token-dict", {"taskId": "sec-t1", "token": {"a": 1}}, "token"),
    ("sio-forged", {"taskId": "sec-t1", "token": "forged"}, "signature"),
    ("sio-expired", {"taskId": "sec-t1", "token": "expired"}, "expired"),
    ("sio-alg-none", {"taskId": "sec-t1", "token": "alg-none"}, "token"),
    ("sio-garbage", {"taskId": "sec-t1", "token": "garbage"}, "token"),
    ("sio-cross-task", {"taskId": "sec-t2", "token": "agent-t1"}, "sec-t1"),
    ("sio-unknown-task", {"taskId": "sec-nope", "token": "operator"}, "no task"),
    ("sio-task-int", {"taskId": 5, "token": "operator"}, "task id"),
    ("sio-task-list", {"taskId": ["sec-t1"], "token": "operator"}, "task id"),
    *[
        (f"sio-task-bad-{n}", {"taskId": bad, "token": "operator"}, "task id")
        for n, bad in enumerate(BAD_IDS[:12])
    ],
]


@pytest.fixture(scope="module")
def portal_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("portal-corpus")
    server = RedisServer(root / "redis").start()
    env = {
        "REDIS_URL": server.url,
        "CFN_STATE_DIR": str(root / ".cfn"),
        "CFN_AGENTS_DIR": str(root / "agents"),
        "CFN_PORTAL_MCP": "off",
    }
    (root / "agents").mkdir()
    outcomes: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        from cfn.settings import Settings

        portal = RunningPortal(Settings(), worker=False).start()
        try:
            client = server.client()
            # Two tasks exist (queued through the API, so both Redis and SQL know them).
            with portal.client("operator") as http:
                for task_id in ("sec-t1", "sec-t2"):
                    reply = http.post("/api/tasks/create", json={"epic": "e", "task_id": task_id})
                    assert reply.status_code == 202, reply.text
            before = (redis_snapshot(client), sql_counts(root / ".cfn"))
            with httpx.Client(base_url=portal.url, timeout=60) as http:
                for name, method, path, kind, body in CASES:
                    kwargs: dict[str, Any] = {"headers": _headers(portal, kind)}
                    if isinstance(body, bytes):
                        kwargs["content"] = body
                        kwargs["headers"]["Content-Type"] = "application/json"
                    elif body is not None:
                        kwargs["json"] = body
                    outcomes[name] = http.request(method, path, **kwargs)
            outcomes.update(_socket_outcomes(portal))
            after = (redis_snapshot(client), sql_counts(root / ".cfn"))
            outcomes["__unchanged__"] = (before == after, before, after)
            client.close()
            yield outcomes
        finally:
            portal.stop()
            server.stop()


def _socket_outcomes(portal: RunningPortal) -> dict[str, Any]:
    import asyncio

    async def one(auth: Any) -> str:
        if isinstance(auth, dict) and isinstance(auth.get("token"), str):
            auth = {**auth, "token": _token(portal, auth["token"])}
        sio = socketio.AsyncClient(reconnection=False)
        reasons: list[Any] = []
        sio.on("connect_error", reasons.append, namespace="/cfn-loop")
        try:
            await sio.connect(portal.url, namespaces=["/cfn-loop"], auth=auth, wait_timeout=10)
        except socketio.exceptions.ConnectionError as exc:
            return f"refused: {exc} {reasons}"
        finally:
            await sio.disconnect()
        return "connected"

    async def every() -> dict[str, Any]:
        return {name: await one(auth) for name, auth, _why in SOCKET_CASES}

    return asyncio.run(every())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rest_case(portal_run: dict[str, Any], case: RestCase) -> None:
    reply: httpx.Response = portal_run[case[0]]
    assert 400 <= reply.status_code < 500, (case[:3], reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/json"), reply.text[:300]
    body = reply.json()
    assert isinstance(body, dict) and body, reply.text[:300]
    text = json.dumps(body)
    assert "Traceback" not in text and "internal" not in text.lower()


@pytest.mark.parametrize(
    ("name", "why"), [(n, w) for n, _a, w in SOCKET_CASES], ids=[c[0] for c in SOCKET_CASES]
)
def test_socket_case(portal_run: dict[str, Any], name: str, why: str) -> None:
    got: str = portal_run[name]
    assert got.startswith("refused: "), got
    assert why.lower() in got.lower(), got


def test_portal_corpus_wrote_nothing(portal_run: dict[str, Any]) -> None:
    same, before, after = portal_run["__unchanged__"]
    assert same, f"before {before}\nafter {after}"
    assert len(CASES) + len(SOCKET_CASES) >= 100


def test_rest_corpus_does_not_need_paths(tmp_path: Path) -> None:
    """The corpus names are unique (each case is reported on its own)."""
    names = [c[0] for c in CASES] + [c[0] for c in SOCKET_CASES]
    assert len(names) == len(set(names))
