"""Live events on real loops: the seed's Socket.IO client (namespace /cfn-loop,
auth {taskId, token}, agent:update / loop:progress), replay for late clients,
a human decision through REST, and a task taken over from a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import socketio

from cfn.coordination.connection import RedisManager
from cfn.loop.worker import Worker
from cfn.settings import Settings
from cfn.store.repository import Store
from tests.portal.conftest import CLAIM_IDLE, RunningPortal, task_body
from tests.support.servers import RedisServer

CFN = [sys.executable, "-m", "cfn"]


class SeedClient:
    """The seed's client code, in Python: io('/cfn-loop', {auth: {taskId, token}})."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.beats: list[dict[str, Any]] = []
        self.agents: dict[str, str] = {}
        self.progress: list[tuple[int, float]] = []
        self.finished = asyncio.Event()
        self.awaiting = asyncio.Event()
        self.replayed = asyncio.Event()

        @self.sio.on("agent:update", namespace="/cfn-loop")
        def agent_update(data: dict[str, Any]) -> None:
            self.agents[data["agentId"]] = data["status"]  # updateAgentStatus(...)

        @self.sio.on("loop:progress", namespace="/cfn-loop")
        def loop_progress(data: dict[str, Any]) -> None:
            self.progress.append((data["loop"], data["progress"]))  # updateProgressBar(...)

        @self.sio.on("*", namespace="/cfn-loop")
        def any_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "agent:heartbeat":  # pushed heartbeats: not orchestrator events
                self.beats.append(data)
                return
            self.events.append((kind, data))
            if kind == "task:finished":
                self.finished.set()
            elif kind == "decision:awaiting":
                self.awaiting.set()
            elif kind == "replay:done":
                self.replayed.set()

    async def connect(self, portal: RunningPortal, task_id: str, token: str) -> None:
        await self.sio.connect(
            portal.url,
            namespaces=["/cfn-loop"],
            auth={"taskId": task_id, "token": token},
            wait_timeout=10,
        )

    def ids(self) -> list[int]:
        return [d["eventId"] for k, d in self.events if k != "replay:done"]


async def _create(portal: RunningPortal, **body: Any) -> str:
    async with httpx.AsyncClient(base_url=portal.url, headers=portal.headers()) as http:
        reply = await http.post("/api/tasks/create", json=task_body(**body))
        assert reply.status_code == 202, reply.text
        data = reply.json()
        assert data["status"] == "queued"
        return str(data["taskId"])


async def test_seed_client_sees_the_loop_live_then_a_late_client_gets_it_all(
    portal: RunningPortal, portal_settings: Settings
) -> None:
    task_id = await _create(portal)
    live = SeedClient()
    # An agent token for this task, exactly as the seed's generate_agent_token makes it.
    await live.connect(portal, task_id, portal.token("agent", sub="impl-1-1", task_id=task_id))
    await asyncio.wait_for(live.finished.wait(), 150)
    await asyncio.sleep(0.3)
    # One iteration or more (the offline provider's figures decide); every agent reported.
    assert {"impl-1-1", "val-1-1"} <= set(live.agents)
    assert set(live.agents.values()) == {"done"}
    assert (3, 0.0) in live.progress and (3, 1.0) in live.progress
    assert (2, 0.0) in live.progress and (2, 1.0) in live.progress
    for kind, data in live.events:
        if kind == "agent:update":
            assert isinstance(data["agentId"], str) and data["status"] in ("running", "done")
        if kind == "loop:progress":
            assert data["loop"] in (2, 3) and 0.0 <= data["progress"] <= 1.0
    ids = live.ids()
    assert len(ids) == len(set(ids)), "no event twice"
    # In order, except that the LLM gateway's llm:call events (another process, each
    # SQL first then XADD) may interleave a moment off id order with the loop's own.
    loop_ids = [d["eventId"] for k, d in live.events if k not in ("replay:done", "llm:call")]
    assert loop_ids == sorted(loop_ids)
    # The agents' heartbeats were pushed too, their final "done" beat included.
    assert live.beats and live.beats[0]["full"]
    final = [b["heartbeats"].get("impl-1-1") for b in live.beats if "impl-1-1" in b["heartbeats"]]
    assert any(beat and beat["status"] == "done" for beat in final), live.beats
    # (The LLM gateway's llm:call events are written off its request path: one may
    # arrive after the loop's last event.)
    kinds = [k for k, _ in live.events if k not in ("replay:done", "llm:call")]
    assert kinds[-1] == "task:finished" and "gate" in kinds and "consensus" in kinds
    assert next(d for k, d in live.events if k == "task:finished")["status"] == "succeeded"

    late = SeedClient()
    await late.connect(portal, task_id, portal.token())
    await asyncio.wait_for(late.replayed.wait(), 20)
    assert sorted(late.ids()) == sorted(ids)
    assert all(d["replay"] for k, d in late.events)
    assert late.agents == live.agents
    await live.sio.disconnect()
    await late.sio.disconnect()

    # The REST view of the same task.
    async with httpx.AsyncClient(base_url=portal.url, headers=portal.headers()) as http:
        status = (await http.get(f"/api/tasks/{task_id}/status")).json()
        assert status["status"] == "succeeded" and status["outcome"] == "PROCEED"
        assert status["gate"]["passed"] and status["consensus"]["passed"]
        assert status["thresholds"]["gate"] == 0.7 and status["thresholds"]["consensus"] == 0.8
        assert {a["agentId"] for a in status["agents"]} == set(live.agents)
        assert {a["provider"] for a in status["agents"]} == {"offline"}
        assert len(status["iterations"]) == status["iteration"] >= 1
        agents = (await http.get("/api/metrics/agents")).json()
        n = len(live.agents)
        assert agents["byStatus"]["done"] == n and agents["byProvider"]["offline"] == n
        tasks = (await http.get("/api/metrics/tasks")).json()
        assert tasks["byStatus"] == {"succeeded": 1} and tasks["queue"]["running"] == 0
        health = await http.get("/api/health/system")
        assert health.status_code == 200 and health.json()["checks"]["workers"]["count"] == 1
    with portal.client("admin") as admin:
        text = admin.get("/metrics").text
    assert 'cfn_tasks{status="succeeded"} 1.0' in text
    assert 'cfn_portal_events_sent_total{kind="agent:update",replay="false"}' in text


async def test_human_decision_through_the_api(portal: RunningPortal) -> None:
    task_id = await _create(portal, decision="human")
    watcher = SeedClient()
    await watcher.connect(portal, task_id, portal.token())
    await asyncio.wait_for(watcher.awaiting.wait(), 150)
    async with httpx.AsyncClient(base_url=portal.url) as http:
        url = f"/api/tasks/{task_id}/decision"
        agent = portal.headers("agent", sub="impl-1-1", task_id=task_id)
        assert (await http.post(url, json={"decision": "ABORT"}, headers=agent)).status_code == 403
        status = (await http.get(f"/api/tasks/{task_id}/status", headers=portal.headers())).json()
        # Iteration 1, or a later one when the offline figures failed a gate first.
        waiting_at = status["iteration"]
        assert status["awaitingDecision"] and status["awaiting"]["iteration"] == waiting_at
        reply = await http.post(
            url, json={"decision": "PROCEED", "reason": "looks good"}, headers=portal.headers()
        )
        assert reply.status_code == 202 and reply.json()["iteration"] == waiting_at
        await asyncio.wait_for(watcher.finished.wait(), 60)
        again = await http.post(url, json={"decision": "ABORT"}, headers=portal.headers())
        assert again.status_code == 409
        status = (await http.get(f"/api/tasks/{task_id}/status", headers=portal.headers())).json()
    assert status["status"] == "succeeded"
    assert status["decisions"][-1]["by"] == "human:tester"
    assert status["decisions"][-1]["reason"] == "looks good"
    await watcher.sio.disconnect()


async def test_a_dead_workers_task_is_taken_over(
    bare_portal: RunningPortal,
    portal_settings: Settings,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    first = subprocess.Popen(
        [*CFN, "worker", "--name", "w-doomed", "--claim-idle", str(CLAIM_IDLE)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        task_id = await _create(bare_portal, decision="human")
        watcher = SeedClient()
        await watcher.connect(bare_portal, task_id, bare_portal.token())
        await asyncio.wait_for(watcher.awaiting.wait(), 150)
        os.kill(first.pid, signal.SIGKILL)  # mid-task: the loop waits for a person
        first.wait(10)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        log.close()
    redis = RedisManager.from_url(redis_server.url, portal_settings)
    store = Store.open(portal_settings)
    second = Worker(portal_settings, redis, store, name="w-heir", claim_idle=CLAIM_IDLE)
    running = asyncio.create_task(second.run())
    try:
        headers = bare_portal.headers()
        async with httpx.AsyncClient(base_url=bare_portal.url, headers=headers) as http:
            # The heir resumes the task; its HumanOwner waits for a decision again.
            resumed = asyncio.Event()

            @watcher.sio.on("task:resumed", namespace="/cfn-loop")
            def on_resumed(_data: dict[str, Any]) -> None:
                resumed.set()

            await asyncio.wait_for(resumed.wait(), CLAIM_IDLE * 6)
            for _ in range(100):
                status = (await http.get(f"/api/tasks/{task_id}/status")).json()
                if status["awaitingDecision"]:
                    break
                await asyncio.sleep(0.1)
            reply = await http.post(f"/api/tasks/{task_id}/decision", json={"decision": "PROCEED"})
            assert reply.status_code == 202, reply.text
            await asyncio.wait_for(watcher.finished.wait(), 60)
            status = (await http.get(f"/api/tasks/{task_id}/status")).json()
        assert status["status"] == "succeeded"
        client = redis_server.client()
        for _ in range(100):  # the run's end is acknowledged right after task:finished
            if client.xpending("queue:tasks", "orchestrators")["pending"] == 0:
                break
            await asyncio.sleep(0.05)
        assert client.xpending("queue:tasks", "orchestrators")["pending"] == 0
        assert (task_id, "succeeded") in second.finished
    finally:
        second.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await watcher.sio.disconnect()
        await redis.close()
        store.close()
