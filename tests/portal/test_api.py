"""REST and Socket.IO refusals: bad bodies, unknown ids, wrong roles, expired and
forged tokens. Each is a 4xx with a JSON error, and nothing changes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import socketio

from cfn.loop.journal import SqlJournal
from cfn.loop.state import Checkpoint, TaskOptions
from cfn.portal.auth import load_secret, mint_token, verify_token
from cfn.settings import Settings
from cfn.store.records import AgentRecord
from cfn.store.repository import Store
from tests.portal.conftest import RunningPortal, task_body
from tests.support.servers import RedisServer

CFN = [sys.executable, "-m", "cfn"]


def _seed_task(settings: Settings, task_id: str, tmp_path: Path, agents: list[str]) -> None:
    """A task in SQL (as an orchestrator would have written it), not queued or running."""
    with Store.open(settings) as store:
        journal = SqlJournal(store)
        options = TaskOptions(
            task_id=task_id, epic="Build it", mode="mvp", workspace=str(tmp_path / task_id)
        )
        journal.create_task(options, Checkpoint())
        journal.save_checkpoint(task_id, Checkpoint(), "running")
        for agent_id in agents:
            journal.save_agent(
                AgentRecord(task_id, agent_id, "implementer", 3, 1, None, "offline", None, "done")
            )


def _state(settings: Settings, redis_server: RedisServer) -> tuple[dict[str, int], int, list[str]]:
    with Store.open(settings) as store:
        counts = store.row_counts()
    client = redis_server.client()
    queue = client.xlen("queue:tasks") if client.exists("queue:tasks") else 0
    return counts, queue, sorted(client.keys("queue:task:*"))


def test_tokens_are_checked(portal: RunningPortal) -> None:
    secret = b"x" * 48
    forged = mint_token(secret, "mallory", "admin")
    now = time.time()
    real = load_secret(portal.settings)
    expired = mint_token(real, "old", "operator", None, 60, now=now - 3600)
    wrong_aud = jwt.encode(
        {"sub": "x", "aud": "other", "iss": "cfn", "iat": int(now), "exp": int(now) + 60,
         "role": "admin"},
        real,
        algorithm="HS256",
    )
    none_alg = jwt.encode(
        {"sub": "x", "aud": "cfn-agents", "iss": "cfn", "iat": int(now),
         "exp": int(now) + 60, "role": "admin"},
        None,
        algorithm="none",
    )
    cases = {
        None: "no token",
        "Basic abc": "Bearer",
        "Bearer not-a-jwt": "invalid token",
        f"Bearer {forged}": "signature",
        f"Bearer {expired}": "expired",
        f"Bearer {wrong_aud}": "audience",
        f"Bearer {none_alg}": "invalid token",
    }
    with portal.client(role=None) as http:
        for header, words in cases.items():
            headers = {"Authorization": header} if header else {}
            for method, path in (
                ("GET", "/api/tasks/t1/status"),
                ("POST", "/api/tasks/create"),
                ("GET", "/api/health/system"),
                ("GET", "/metrics"),
            ):
                reply = http.request(method, path, headers=headers, json=task_body())
                assert reply.status_code == 401, (header, path, reply.text)
                body = reply.json()
                assert body["error"] == "unauthorized" and words in body["message"], body
                assert reply.headers["www-authenticate"] == "Bearer"
        # The bare endpoint and the page need no token.
        assert http.get("/api/ping").json() == {"ok": True}
        assert "CFN Loop portal" in http.get("/").text
        assert http.get("/static/socket.io.min.js").status_code == 200
        docs = http.get("/openapi.json").json()
        for path in ("/api/agents/spawn", "/api/agents/{taskId}", "/api/agents/{agentId}",
                     "/api/tasks/create", "/api/tasks/{taskId}/status",
                     "/api/tasks/{taskId}/decision", "/api/metrics/agents",
                     "/api/metrics/tasks", "/api/health/system"):
            assert path in docs["paths"], path
        assert http.get("/docs").status_code == 200


def test_roles_and_agent_scope(
    portal: RunningPortal, portal_settings: Settings, tmp_path: Path, redis_server: RedisServer
) -> None:
    _seed_task(portal_settings, "mine", tmp_path, ["impl-1-1"])
    _seed_task(portal_settings, "other", tmp_path, ["impl-1-1"])
    before = _state(portal_settings, redis_server)
    agent = portal.client("agent", sub="impl-1-1", task_id="mine")
    with agent:
        assert agent.get("/api/tasks/mine/status").status_code == 200
        assert agent.get("/api/agents/mine").json()["agents"][0]["agentId"] == "impl-1-1"
        assert [t["taskId"] for t in agent.get("/api/tasks").json()["tasks"]] == ["mine"]
        for method, path, body in (
            ("GET", "/api/tasks/other/status", None),
            ("GET", "/api/agents/other", None),
        ):
            reply = agent.request(method, path, json=body)
            assert reply.status_code == 403, path
            assert reply.json()["error"] == "forbidden" and "'mine'" in reply.json()["message"]
        for method, path, body in (
            ("POST", "/api/tasks/create", task_body()),
            ("POST", "/api/tasks/mine/decision", {"decision": "PROCEED"}),
            ("DELETE", "/api/agents/impl-1-1?taskId=mine", None),
            ("POST", "/api/agents/spawn", {"agentId": "x", "taskId": "mine"}),
            ("GET", "/api/metrics/agents", None),
            ("GET", "/api/metrics/tasks", None),
            ("GET", "/metrics", None),
            ("POST", "/api/tokens", {"sub": "x", "role": "admin"}),
        ):
            reply = agent.request(method, path, json=body)
            assert reply.status_code == 403, (path, reply.text)
            assert "needs" in reply.json()["message"]
    with portal.client("operator") as op:
        reply = op.post("/api/tokens", json={"sub": "x", "role": "admin"})
        assert reply.status_code == 403
    assert _state(portal_settings, redis_server) == before
    with portal.client("admin") as admin:
        minted = admin.post(
            "/api/tokens", json={"sub": "impl-9-9", "role": "agent", "task_id": "mine"}
        ).json()
        me = verify_token(load_secret(portal_settings), minted["token"])
        assert (me.sub, me.role, me.task_id) == ("impl-9-9", "agent", "mine")
        assert admin.get("/metrics").text.count("cfn_portal_requests_total") >= 1


@pytest.mark.parametrize(
    "body, words",
    [
        ({}, "epic: Field required"),
        ({"epic": ""}, "epic"),
        ({"epic": "x", "mode": "huge"}, "mode"),
        ({"epic": "x", "decision": "coin"}, "decision"),
        ({"epic": "x", "complexity": "extreme"}, "complexity"),
        ({"epic": "x", "cost_sensitive": "yes"}, "cost_sensitive"),
        ({"epic": "x", "implementers": 0}, "implementers"),
        ({"epic": "x", "implementers": "2"}, "implementers"),
        ({"epic": "x", "surprise": 1}, "surprise"),
        ({"epic": "x" * 20_001}, "epic"),
        ({"epic": "x", "task_id": "a b"}, "task id"),
        ({"epic": "x", "task_id": "../etc"}, "task id"),
        ({"epic": "x", "provider": "no such"}, "provider"),
        # a well-formed name no route knows: refused at the door, not queued to fail later
        ({"epic": "x", "provider": "nope-provider"}, "unknown provider 'nope-provider'"),
    ],
)
def test_bad_task_bodies_change_nothing(
    portal: RunningPortal, portal_settings: Settings, redis_server: RedisServer,
    body: dict[str, object], words: str,
) -> None:
    before = _state(portal_settings, redis_server)
    with portal.client() as http:
        reply = http.post("/api/tasks/create", json=body)
    assert 400 <= reply.status_code < 500, reply.text
    error = reply.json()
    assert error["error"] in ("invalid_body", "invalid_input") and words in error["message"], error
    assert _state(portal_settings, redis_server) == before


def test_not_json_and_unknown_ids(
    portal: RunningPortal, portal_settings: Settings, tmp_path: Path, redis_server: RedisServer
) -> None:
    _seed_task(portal_settings, "t-a", tmp_path, ["impl-1-1", "solo"])
    _seed_task(portal_settings, "t-b", tmp_path, ["impl-1-1"])
    before = _state(portal_settings, redis_server)
    with portal.client() as http:
        reply = http.post(
            "/api/tasks/create", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert reply.status_code == 422 and reply.json()["error"] == "invalid_body"
        for method, path, body, status in (
            ("GET", "/api/tasks/nope/status", None, 404),
            ("GET", "/api/agents/nope", None, 404),
            ("POST", "/api/tasks/nope/decision", {"decision": "PROCEED"}, 404),
            ("GET", "/api/tasks/bad%20id/status", None, 400),
            ("DELETE", "/api/agents/ghost", None, 404),
            ("DELETE", "/api/agents/solo?taskId=t-b", None, 404),
            ("POST", "/api/agents/spawn", {"agentId": "a", "taskId": "nope"}, 404),
            ("POST", "/api/agents/spawn", {"agentId": "solo", "taskId": "t-a"}, 409),
            ("POST", "/api/agents/spawn", {"agentId": "a b", "taskId": "t-a"}, 400),
            ("POST", "/api/agents/spawn",
             {"agentId": "a", "taskId": "t-a", "provider": "nope-provider"}, 400),
            ("POST", "/api/tasks/t-a/decision", {"decision": "MAYBE"}, 422),
            ("POST", "/api/tasks/t-a/decision", {"decision": "PROCEED"}, 409),
            ("GET", "/api/no/such/route", None, 404),
        ):
            reply = http.request(method, path, json=body)
            assert reply.status_code == status, (path, reply.text)
            assert reply.json()["message"], reply.text
        # An id used by two tasks needs ?taskId=.
        reply = http.delete("/api/agents/impl-1-1")
        assert reply.status_code == 409 and "t-a, t-b" in reply.json()["message"]
        assert _state(portal_settings, redis_server) == before
        reply = http.delete("/api/agents/impl-1-1", params={"taskId": "t-b"})
        assert reply.status_code == 202 and reply.json()["stopped"] is False  # it was done
        # A duplicate task id is refused while queued, and once it exists.
        created = http.post("/api/tasks/create", json=task_body(task_id="t-a"))
        assert created.status_code == 409 and "exists" in created.json()["message"]


async def test_socket_refusals(portal: RunningPortal, portal_settings: Settings,
                               tmp_path: Path) -> None:
    _seed_task(portal_settings, "seen", tmp_path, [])
    cases = [
        (None, "auth must be"),
        ({"taskId": "seen"}, "no token"),
        ({"taskId": "seen", "token": mint_token(b"y" * 40, "m", "admin")}, "signature"),
        ({"taskId": "other", "token": portal.token("agent", sub="a", task_id="seen")}, "'seen'"),
        ({"taskId": "nope", "token": portal.token()}, "no task"),
        ({"taskId": "a:b", "token": portal.token()}, "invalid task id"),
    ]
    for auth, words in cases:
        client = socketio.AsyncClient(reconnection=False)
        refusals: list[object] = []
        client.on("connect_error", refusals.append, namespace="/cfn-loop")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                portal.url, namespaces=["/cfn-loop"], auth=auth, transports=["websocket"],
                wait_timeout=10,
            )
        assert refusals and words in str(refusals[0]), (auth, refusals)
        await client.disconnect()


def test_cli_token_and_worker_flags(portal_settings: Settings) -> None:
    out = subprocess.run(
        [*CFN, "token", "--sub", "impl-1-1", "--role", "agent", "--task-id", "t9"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    claims = jwt.decode(out, options={"verify_signature": False})
    assert claims["sub"] == "impl-1-1" and claims["aud"] == "cfn-agents"
    assert claims["task_id"] == "t9" and claims["role"] == "agent"
    assert 3590 <= claims["exp"] - claims["iat"] <= 3600
    secret_file = portal_settings.state_dir / "portal" / "jwt.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert secret_file.read_text().strip() not in out
    for argv, words in (
        (["token", "--sub", "x", "--role", "god"], "--role must be one of"),
        (["token", "--sub", "x", "--role", "agent"], "needs a task id"),
        (["token", "--sub", "a:b", "--role", "operator"], "invalid token subject"),
    ):
        proc = subprocess.run([*CFN, *argv], capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and words in proc.stderr, (argv, proc.stderr)
        assert proc.stderr.startswith("[ERROR]")
    help_text = subprocess.run([*CFN, "worker", "--help"], capture_output=True, text=True).stdout
    assert "--concurrency" in help_text


#: What an agent could leave in its own heartbeat key (its ACL lets it SET it).
HOSTILE_BEATS = {
    "nan": '{"ts": NaN, "pid": 7, "status": "running"}',
    "infinity": '{"ts": 1e400, "pid": -1, "status": "running"}',
    "deep": "[" * 50_000 + "]" * 50_000,
    "huge": json.dumps({"ts": 1.0, "status": "x" * 100_000}),
    "list": "[1, 2]",
    "types": '{"ts": "yesterday", "pid": true, "status": {"a": 1}}',
    "not-json": "\x00\xff garbage",
}


def test_hostile_heartbeats_leave_status_answering(
    portal: RunningPortal, portal_settings: Settings, redis_server: RedisServer, tmp_path: Path
) -> None:
    agents = sorted(HOSTILE_BEATS)
    _seed_task(portal_settings, "t-beats", tmp_path, agents)
    client = redis_server.client()
    for agent, value in HOSTILE_BEATS.items():
        client.set(f"swarm:t-beats:heartbeat:{agent}", value, px=60_000)
    with portal.client() as http:
        status = http.get("/api/tasks/t-beats/status")
        listed = http.get("/api/agents/t-beats")
    assert status.status_code == 200, status.text
    assert listed.status_code == 200, listed.text
    beats = {a["agentId"]: a["heartbeat"] for a in status.json()["agents"]}
    assert set(beats) == set(agents)
    for agent, beat in beats.items():
        if beat is not None:  # fields that are not what they should be read as None
            assert beat["ts"] is None and beat["ageSeconds"] is None, (agent, beat)
            assert beat["status"] in (None, "running"), (agent, beat)
