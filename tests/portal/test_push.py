"""Pushed live data, on real parts: heartbeats written by the agents' own heartbeat
code reach a /cfn-loop client as ``agent:heartbeat`` (a beat, its expiry, the full
set for a late client); the task list, queue and workers reach a /cfn-tasks client
as ``tasks:update`` (tasks run by ``cfn run`` shown as such, workers 0 only a
problem when a task waits). Dashboard login codes: single use, short-lived."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from cfn.agents.heartbeat import beat
from cfn.coordination.connection import RedisManager
from cfn.errors import AuthError
from cfn.loop.board import RedisBoard
from cfn.loop.journal import SqlJournal
from cfn.loop.orchestrator import JournalEventBus
from cfn.loop.state import Checkpoint, TaskOptions
from cfn.loop.worker import Worker
from cfn.portal.auth import (
    LEEWAY,
    Verifier,
    load_secret,
    mint_login_code,
    mint_token,
    read_login_code,
)
from cfn.settings import Settings
from cfn.store.repository import Store
from cfn.system.instances import instance_file
from tests.portal.conftest import RunningPortal, task_body

CFN = [sys.executable, "-m", "cfn"]


class Inbox:
    """Events of one Socket.IO client, awaited by predicate."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    def add(self, kind: str, data: dict[str, Any]) -> None:
        self.items.append((kind, data))
        self.changed.set()

    async def wait(self, kind: str, match: Any, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for k, data in self.items[seen:]:
                if k == kind and match(data):
                    return data
            seen = len(self.items)
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} matching within {timeout} s: {self.items}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


def _running_task(settings: Settings, task_id: str, tmp_path: Path) -> None:
    """A task as `cfn run` leaves it while it runs: in SQL, running, no queue entry."""
    with Store.open(settings) as store:
        journal = SqlJournal(store)
        options = TaskOptions(task_id=task_id, epic="Build it", mode="mvp",
                              workspace=str(tmp_path / task_id))
        journal.create_task(options, Checkpoint())
        journal.save_checkpoint(task_id, Checkpoint(), "running")


async def test_heartbeats_are_pushed_as_they_change(
    bare_portal: RunningPortal, portal_settings: Settings, tmp_path: Path
) -> None:
    _running_task(portal_settings, "hb-task", tmp_path)
    redis = RedisManager.from_settings(portal_settings)
    first, late = Inbox(), Inbox()
    clients = []
    try:
        for inbox in (first, late):
            client = socketio.AsyncClient(reconnection=False)
            client.on("agent:heartbeat", lambda d, i=inbox: i.add("agent:heartbeat", d),
                      namespace="/cfn-loop")
            clients.append(client)
        token = bare_portal.token(role="agent", sub="impl-1-1", task_id="hb-task")
        await clients[0].connect(bare_portal.url, namespaces=["/cfn-loop"],
                                 auth={"taskId": "hb-task", "token": token}, wait_timeout=10)
        # First the whole (empty) set, then each beat as the agent's own code writes it.
        await first.wait("agent:heartbeat", lambda d: d["full"] and d["heartbeats"] == {})
        await beat(redis, "hb-task", "impl-1-1", 0.5, status="running", pid=4242, ttl=3.0)
        got = await first.wait("agent:heartbeat", lambda d: "impl-1-1" in d["heartbeats"])
        assert got["taskId"] == "hb-task" and not got["full"]
        assert got["heartbeats"]["impl-1-1"]["status"] == "running"
        assert got["heartbeats"]["impl-1-1"]["pid"] == 4242
        assert abs(got["heartbeats"]["impl-1-1"]["ts"] - time.time()) < 10
        assert abs(got["serverTime"] - time.time()) < 10

        # A client that joins while the beat lives gets the full set at once.
        await beat(redis, "hb-task", "impl-2-1", 30, status="running")
        await first.wait("agent:heartbeat", lambda d: "impl-2-1" in d["heartbeats"])
        await clients[1].connect(bare_portal.url, namespaces=["/cfn-loop"],
                                 auth={"taskId": "hb-task", "token": bare_portal.token()},
                                 wait_timeout=10)
        full = await late.wait("agent:heartbeat", lambda d: d["full"])
        assert "impl-2-1" in full["heartbeats"]

        # impl-1-1 stops beating: its key expires (TTL 3 s) and the push says so.
        gone = await first.wait(
            "agent:heartbeat", lambda d: d["heartbeats"].get("impl-1-1", 0) is None
        )
        assert "impl-2-1" not in gone["heartbeats"]  # only what changed
        # A final beat ("done") is pushed to both clients.
        await beat(redis, "hb-task", "impl-2-1", 30, status="done")
        for inbox in (first, late):
            await inbox.wait(
                "agent:heartbeat",
                lambda d: (d["heartbeats"].get("impl-2-1") or {}).get("status") == "done",
            )
    finally:
        for client in clients:
            await client.disconnect()
        await redis.close()


async def test_task_list_queue_and_workers_are_pushed(
    bare_portal: RunningPortal, portal_settings: Settings, tmp_path: Path
) -> None:
    people, agent = Inbox(), Inbox()
    sockets = []
    try:
        for inbox, token in (
            (people, bare_portal.token()),
            (agent, bare_portal.token(role="agent", sub="impl-1-1", task_id="cli-task")),
        ):
            client = socketio.AsyncClient(reconnection=False)
            client.on("tasks:update", lambda d, i=inbox: i.add("tasks:update", d),
                      namespace="/cfn-tasks")
            await client.connect(bare_portal.url, namespaces=["/cfn-tasks"],
                                 auth={"token": token}, wait_timeout=10)
            sockets.append(client)
        first = await people.wait("tasks:update", lambda d: True)
        assert first["tasks"] == []
        # No worker and nothing waiting: workers 0 is no problem.
        assert first["queue"]["workers"] == 0 and first["queue"]["waiting"] == 0

        # A loop run by `cfn run`: SQL rows, then its event (as the orchestrator writes them).
        _running_task(portal_settings, "cli-task", tmp_path)
        redis = RedisManager.from_settings(portal_settings)
        with Store.open(portal_settings) as store:
            bus = JournalEventBus(SqlJournal(store), RedisBoard(redis))
            await bus.emit("cli-task", "task:created", epic="x")
        await redis.close()
        update = await people.wait("tasks:update", lambda d: d["tasks"])
        (task,) = update["tasks"]
        assert task["taskId"] == "cli-task" and task["status"] == "running"
        assert task["runner"] == {"kind": "cli"}
        mine = await agent.wait("tasks:update", lambda d: d["tasks"])
        assert [t["taskId"] for t in mine["tasks"]] == ["cli-task"] and mine["queue"] is None

        # A task created through the API, with no worker to take it: it waits, pushed.
        async with httpx.AsyncClient(base_url=bare_portal.url,
                                     headers=bare_portal.headers()) as http:
            reply = await http.post("/api/tasks/create", json=task_body(task_id="api-task"))
            assert reply.status_code == 202, reply.text
        waiting = await people.wait("tasks:update", lambda d: d["queue"]["waiting"] == 1)
        assert waiting["queue"]["workers"] == 0

        # A worker comes, takes it and runs it (a runner that starts the task as the
        # orchestrator does, then holds it): the list says which worker runs it.
        redis = RedisManager.from_settings(portal_settings)
        store = Store.open(portal_settings)
        release = asyncio.Event()

        async def runner(options: TaskOptions, _resume: bool) -> Any:
            journal = SqlJournal(store)
            await asyncio.to_thread(journal.create_task, options, Checkpoint())
            await asyncio.to_thread(journal.save_checkpoint, options.task_id, Checkpoint(),
                                    "running")
            bus = JournalEventBus(journal, RedisBoard(redis))
            await bus.emit(options.task_id, "task:created", epic="y")
            await release.wait()  # held until the worker is cancelled below
            raise AssertionError("never released")

        worker = Worker(portal_settings, redis, store, name="w-test", runner=runner)
        running = asyncio.create_task(worker.run())
        try:
            held = await people.wait(
                "tasks:update",
                lambda d: any(t["taskId"] == "api-task" for t in d["tasks"])
                and d["queue"]["workers"] == 1,
            )
            by_id = {t["taskId"]: t for t in held["tasks"]}
            assert by_id["api-task"]["runner"] == {"kind": "worker", "worker": "w-test"}
            assert by_id["cli-task"]["runner"] == {"kind": "cli"}
            assert held["queue"]["waiting"] == 0 and held["queue"]["running"] == 1
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        # The worker is gone (its presence key removed), its task still held by it.
        gone = await people.wait(
            "tasks:update", lambda d: d["queue"]["workers"] == 0 and d["queue"]["goneWorkers"]
        )
        assert gone["queue"]["goneWorkers"] == 1
        await redis.close()
        store.close()
        # The agent token's list shows its own task only, still.
        assert all(
            [t["taskId"] for t in d["tasks"]] in ([], ["cli-task"]) and d["queue"] is None
            for k, d in agent.items
        )
    finally:
        for client in sockets:
            await client.disconnect()

    for auth, words in (
        ({"token": mint_token(b"y" * 48, "mallory", "operator")}, "signature"),
        ({}, "no token"),
        (None, "no token"),
    ):
        refused = socketio.AsyncClient(reconnection=False)
        refusals: list[object] = []
        refused.on("connect_error", refusals.append, namespace="/cfn-tasks")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(bare_portal.url, namespaces=["/cfn-tasks"], auth=auth,
                                  transports=["websocket"], wait_timeout=10)
        assert refusals and words in str(refusals[0]), (auth, refusals)
        await refused.disconnect()


def test_login_codes_work_once_and_expire(portal: RunningPortal,
                                          portal_settings: Settings) -> None:
    secret = load_secret(portal_settings)
    code = mint_login_code(secret, "dashboard", "operator", session_ttl=600)
    assert code.count(".") == 1  # payload.mac: no JWT (and not accepted as one, below)
    with portal.client(role=None) as http:
        as_code = {"Authorization": f"Bearer {code}"}
        assert http.get("/api/tasks", headers=as_code).status_code == 401
        first = http.post("/api/login", json={"code": code})
        assert first.status_code == 200, first.text
        assert first.headers["cache-control"] == "no-store"
        body = first.json()
        assert body["sub"] == "dashboard" and body["role"] == "operator"
        assert body["expiresIn"] == 600
        token = body["token"]
        as_token = {"Authorization": f"Bearer {token}"}
        assert http.get("/api/tasks", headers=as_token).status_code == 200

        again = http.post("/api/login", json={"code": code})
        assert again.status_code == 401 and "used already" in again.json()["message"]

        old = mint_login_code(secret, "dashboard", now=time.time() - 3600)
        expired = http.post("/api/login", json={"code": old})
        assert expired.status_code == 401 and "expired" in expired.json()["message"]

        fresh = mint_login_code(secret, "dashboard")
        payload, _, mac = fresh.partition(".")
        other = mint_login_code(secret, "root", "admin").partition(".")[0]
        # the MAC's first character changed (its last carries padding bits a decoder
        # may ignore, so changing that one does not always change the MAC)
        tampered = ("B" if mac[0] == "A" else "A") + mac[1:]
        for bad in (f"{other}.{mac}", f"{payload}.{tampered}", "abc", payload,
                    mint_login_code(b"z" * 48, "dashboard")):
            reply = http.post("/api/login", json={"code": bad})
            assert reply.status_code == 401, (bad, reply.text)
            assert reply.json()["error"] == "unauthorized"
        for bad_body in ({}, {"code": ""}, {"code": "x", "more": 1}, {"code": 5}):
            assert http.post("/api/login", json=bad_body).status_code == 422
        # A refused code was not used up: the untouched one still works, once.
        assert http.post("/api/login", json={"code": fresh}).status_code == 200
        assert http.post("/api/login", json={"code": fresh}).status_code == 401
    with pytest.raises(AuthError, match="expired"):
        read_login_code(secret, old)
    with pytest.raises(Exception, match="role must be"):
        mint_login_code(secret, "impl-1-1", "agent")


def test_remembered_tokens_still_expire_and_forgeries_still_fail(
    portal_settings: Settings,
) -> None:
    secret = load_secret(portal_settings)
    verify = Verifier(secret, size=2)
    # Valid for about 1.5 s more (expiry + leeway), then refused from the cache too.
    token = mint_token(secret, "alice", "operator", ttl=10,
                       now=time.time() - 10 - LEEWAY + 1.5)
    assert verify(token).sub == "alice"
    assert verify(token).sub == "alice"  # remembered
    header, claims, _sig = token.split(".")
    forged = f"{header}.{claims}.{'A' * 43}"
    with pytest.raises(AuthError, match="signature"):
        verify(forged)
    time.sleep(2.0)
    with pytest.raises(AuthError, match="expired"):
        verify(token)
    # The map is bounded: old entries go, and come back only through full verification.
    tokens = [mint_token(secret, f"u{n}", "operator") for n in range(4)]
    assert [verify(t).sub for t in tokens] == ["u0", "u1", "u2", "u3"]
    assert len(verify._known) == 2


def test_cli_prints_a_login_link_not_a_token(
    bare_portal: RunningPortal, portal_settings: Settings
) -> None:
    record = instance_file(portal_settings)
    proc = subprocess.run([*CFN, "portal", "link"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "no portal of this checkout is running" in proc.stderr
    # The portal of this checkout, recorded as `cfn portal` records itself.
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"pid": os.getpid(), "host": "127.0.0.1",
                                  "port": bare_portal.port}))
    try:
        line = subprocess.run([*CFN, "portal", "link", "--token-ttl", "900"],
                              capture_output=True, text=True, check=True).stdout.strip()
    finally:
        record.unlink()
    assert line.startswith(f"dashboard: {bare_portal.url}/#login="), line
    code = line.partition("/#login=")[2]
    assert "token" not in line and code.count(".") == 1  # payload.mac, no JWT
    with httpx.Client(base_url=bare_portal.url, timeout=30) as http:
        reply = http.post("/api/login", json={"code": code})
        assert reply.status_code == 200 and reply.json()["expiresIn"] == 900
        assert reply.json()["role"] == "operator"
        assert http.post("/api/login", json={"code": code}).status_code == 401


def test_malformed_socketio_packets_are_dropped_in_a_line_each_second(
    portal: RunningPortal, caplog: pytest.LogCaptureFixture
) -> None:
    """Packets that do not decode (bad JSON, unknown types, events without a name, deep
    nesting) reach no handler, log no traceback, and leave the portal answering."""
    base = f"{portal.url}/socket.io/?EIO=4&transport=polling"
    bad = [b"40/cfn-loop,{bad"] * 50
    bad += [b"9", b"42", b"42/cfn-loop,", b"42[1]", b"47", b"40/cfn-loop," + b"[" * 100_000]
    with caplog.at_level(logging.WARNING), httpx.Client(timeout=10) as http:
        for body in bad:
            opened = http.get(base)
            assert opened.status_code == 200, opened.text
            sid = json.loads(opened.text[1:])["sid"]
            reply = http.post(f"{base}&sid={sid}", content=body)
            assert reply.status_code in (200, 400), reply.text
        with portal.client() as api:
            assert api.get("/api/health/system").status_code in (200, 503)
            assert api.get("/api/tasks").status_code == 200
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    dropped = [r for r in caplog.records if "malformed Socket.IO" in r.getMessage()]
    assert 1 <= len(dropped) <= 5, [r.getMessage() for r in dropped]


def test_every_login_code_reads_back() -> None:
    """Its nonce is an id: one that began with '-' made one code in 64 unreadable."""
    secret = b"k" * 48
    for _ in range(500):
        code = mint_login_code(secret, "dashboard", "operator", session_ttl=600)
        assert read_login_code(secret, code).sub == "dashboard"
