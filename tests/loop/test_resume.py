"""``cfn resume`` after the orchestrator was SIGKILLed at several points.

Everything runs as real processes: ``python -m cfn orchestrate`` (killed with
SIGKILL), ``python -m cfn resume``, the agent processes the orchestrator
spawns (they run in their own session, so they outlive it), the test's own
redis-server, SQLite, and a local LLM stand-in speaking the OpenAI wire
format (the ``kimi`` provider pointed at it), whose replies the test scripts
and can hold back so a kill lands while agents still work. The test follows
the task's Redis event stream ``events:{task}`` with XREAD BLOCK and kills
the moment the event it waits for is written.

The helpers here (``Rig``, ``StandIn``, ``Events``) serve test_faults.py and
test_decisions.py too.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis

from cfn.settings import Settings
from cfn.store.repository import Store
from tests.support.llm_servers import LLMServer, Recorded, Reply, openai_json
from tests.support.servers import RedisServer, cfn_env

CFN = [sys.executable, "-m", "cfn"]
HEARTBEAT = 1.0
BUILD_EPIC = "Build a hello module"
_WHO = re.compile(r"You are (.+?), (an implementer|a validator|the product owner)")
_ROLES = {"an implementer": "implementer", "a validator": "validator"}


# --- the LLM stand-in, scripted per agent ---------------------------------------------------


class StandIn:
    """Model replies per agent name (the system prompt's "You are {name}, ...").

    Implementers first call ``write_file`` (so the workspace really changes),
    then give their final line; validators and the product owner answer at
    once. ``finals[name]`` queues the final texts an agent name gets (else a
    good default); ``hold(name_or_role)`` keeps that agent's requests
    waiting until ``release``: the agent is then mid-conversation, alive and
    heartbeating.
    """

    DEFAULT_FINALS: ClassVar[dict[str, str]] = {
        "implementer": '{"confidence": 0.9, "summary": "hello module written"}',
        "validator": '{"confidence": 0.9, "feedback": "", "summary": "looks right"}',
        "product-owner": '{"decision": "PROCEED", "reason": "done", "confidence": 0.9}',
    }

    def __init__(self, llm: LLMServer) -> None:
        self.llm = llm
        self.cond = threading.Condition()
        self.held: set[str] = set()
        self.finals: dict[str, list[str]] = {}
        self.calls: dict[str, int] = {}
        self.arrivals: list[str] = []
        llm.default = self.reply

    def reply(self, request: Recorded) -> Reply:
        messages = request.body.get("messages", [])
        system = str(messages[0].get("content", "")) if messages else ""
        match = _WHO.search(system)
        name = match.group(1) if match else "?"
        role = _ROLES.get(match.group(2), "product-owner") if match else "?"
        with self.cond:
            self.calls[name] = self.calls.get(name, 0) + 1
            self.arrivals.append(name)
            self.cond.notify_all()
            self.cond.wait_for(lambda: not {name, role} & self.held, timeout=120)
            first_turn = not any(m.get("role") == "tool" for m in messages)
            if role == "implementer" and first_turn:
                slug = name.lower().replace(" ", "-")
                args = json.dumps({"path": f"{slug}.md", "content": f"written by {name}\n"})
                return openai_json(None, tool_calls=[(f"call-{slug}", "write_file", args)])
            queued = self.finals.get(name)
            final = queued.pop(0) if queued else self.DEFAULT_FINALS.get(role, "ok")
        return openai_json(f"Here is my answer.\n{final}")

    def hold(self, *who: str) -> None:
        with self.cond:
            self.held.update(who)

    def release(self, *who: str) -> None:
        with self.cond:
            self.held.difference_update(who or set(self.held))
            self.cond.notify_all()

    def wait_arrivals(self, names: set[str], timeout: float = 30.0) -> None:
        """Block until every agent in ``names`` has sent the model a request."""
        with self.cond:
            ok = self.cond.wait_for(lambda: names <= set(self.arrivals), timeout=timeout)
        assert ok, f"requests from {names - set(self.arrivals)} never came"


# --- the task's event stream -----------------------------------------------------------------


class Events:
    """``events:{task}`` read in order with XREAD BLOCK (no polling, nothing missed)."""

    def __init__(self, client: redis.Redis, task_id: str, proc: subprocess.Popen[bytes] | None):
        self.client = client
        self.key = f"events:{task_id}"
        self.proc = proc
        self.last = "0-0"
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def _read(self, block_ms: int) -> list[tuple[str, dict[str, Any]]]:
        reply = self.client.xread({self.key: self.last}, count=100, block=block_ms)
        out: list[tuple[str, dict[str, Any]]] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last = entry_id
                out.append((fields["kind"], json.loads(fields["data"])))
        self.seen.extend(out)
        return out

    def wait(self, kind: str, timeout: float = 45.0, **match: Any) -> dict[str, Any]:
        """Read on until an event of ``kind`` whose data has ``match``'s values."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            # Wake at least once a second to notice an orchestrator that died.
            for got, data in self._read(max(1, int(min(remaining, 1.0) * 1000))):
                if got == kind and all(data.get(k) == v for k, v in match.items()):
                    return data
            if self.proc is not None and self.proc.poll() is not None:
                # It ended: whatever it wrote is in the stream already.
                for got, data in self._read(1):
                    if got == kind and all(data.get(k) == v for k, v in match.items()):
                        return data
                raise AssertionError(
                    f"orchestrator exited {self.proc.returncode} before {kind} {match}; "
                    f"events: {self.kinds()}"
                )
        raise AssertionError(f"no {kind} {match} within {timeout} s; events: {self.kinds()}")

    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]

    def all(self) -> list[tuple[str, dict[str, Any]]]:
        """Everything written so far (reads to the stream's end)."""
        while self._read(1):
            pass
        return self.seen


# --- the rig: env, processes, store ------------------------------------------------------------


class Rig:
    def __init__(self, tmp_path: Path, redis_server: RedisServer, llm: LLMServer) -> None:
        self.tmp = tmp_path
        self.redis_server = redis_server
        self.client = redis_server.client()
        self.llm = llm
        self.model = StandIn(llm)
        (tmp_path / "agents").mkdir(exist_ok=True)
        self.state = tmp_path / ".cfn"
        self.env = cfn_env(
            tmp_path,
            REDIS_URL=redis_server.url,
            CFN_AGENTS_DIR=str(tmp_path / "agents"),
            CFN_AGENT_HEARTBEAT_INTERVAL=str(HEARTBEAT),
            AGENT_TIMEOUT="30",
            CFN_PROVIDER_TIMEOUT="60",
            CFN_PROVIDER_MAX_RETRIES="0",
            KIMI_BASE_URL=llm.openai_url,
            MOONSHOT_API_KEY="kimi-test-key",
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def orchestrate(
        self,
        task_id: str,
        *extra: str,
        epic: str = BUILD_EPIC,
        implementers: int = 2,
        validators: int = 2,
        provider: str = "kimi",
    ) -> subprocess.Popen[bytes]:
        args = [
            "orchestrate",
            "--task-id",
            task_id,
            "--mode",
            "mvp",
            "--epic",
            epic,
            "--implementers",
            str(implementers),
            "--validators",
            str(validators),
            "--provider",
            provider,
            "--workspace",
            str(self.tmp / "ws" / task_id),
            *extra,
        ]
        return self.start(*args)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        n = len(self.procs)
        proc = subprocess.Popen(
            [*CFN, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=open(logs / f"{n}.out", "wb"),  # noqa: SIM115 - closed with the process
            stderr=open(logs / f"{n}.err", "wb"),  # noqa: SIM115
        )
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        n = self.procs.index(proc)
        logs = self.tmp / "logs"
        return (logs / f"{n}.out").read_text() + (logs / f"{n}.err").read_text()

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
        code = proc.wait(timeout)
        return code

    def cfn(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CFN, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def events(self, task_id: str, proc: subprocess.Popen[bytes] | None = None) -> Events:
        return Events(self.client, task_id, proc)

    @contextmanager
    def store(self) -> Iterator[Store]:
        with Store.open(Settings(cfn_state_dir=self.state)) as store:
            yield store

    def agent_dir(self, task_id: str, agent_id: str) -> Path:
        return self.state / "tasks" / task_id / "agents" / agent_id

    def pid_of(self, task_id: str, agent_id: str) -> int:
        """The pid its supervisor started the agent as (state.json)."""
        state = json.loads((self.agent_dir(task_id, agent_id) / "state.json").read_text())
        return int(state["pid"])

    def redis_urls_of(self, task_id: str, agent_id: str) -> dict[str, str]:
        """The Redis URLs the agent was started with, passwords masked, as its supervisor
        logged them (a forked agent's /proc/<pid>/environ is the agent server's)."""
        text = (self.agent_dir(task_id, agent_id) / "agent.log").read_text()
        lines = re.findall(r"\] redis: (.*)$", text, re.MULTILINE)
        assert lines, f"no redis line in {agent_id}'s log:\n{text}"
        return dict(item.split("=", 1) for item in lines[-1].split())

    def runs(self, task_id: str, agent_id: str) -> int:
        """How many times the agent's supervisor started it (one line per start in its log)."""
        text = (self.agent_dir(task_id, agent_id) / "agent.log").read_text()
        return len(re.findall(rf"started cfn-agent-{agent_id}-{task_id} pid", text))

    def close(self) -> None:
        self.model.release()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.client.close()


@contextmanager
def running_rig(tmp_path: Path, redis_server: RedisServer) -> Iterator[Rig]:
    with LLMServer() as llm:
        rig = Rig(tmp_path, redis_server, llm)
        try:
            yield rig
        finally:
            rig.close()


@pytest.fixture
def rig(tmp_path: Path, redis_server: RedisServer) -> Iterator[Rig]:
    with running_rig(tmp_path, redis_server) as rig:
        yield rig


def sigkill(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL the orchestrator; False if it had already finished on its own."""
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(10)
    assert code in (-signal.SIGKILL, 0), code
    return code == -signal.SIGKILL


def assert_finished_once(rig: Rig, task_id: str, agents: list[str]) -> None:
    """The task succeeded with every agent run exactly once and one decision."""
    client = rig.client
    entries = client.lrange(f"coord:{task_id}:complete", 0, -1)
    assert sorted(entries) == sorted(f"{a}:success" for a in agents), entries
    for agent in agents:
        assert rig.runs(task_id, agent) == 1, f"{agent} was started more than once"
    # The model was asked exactly as often as one run of each agent asks it:
    # implementers twice (the write_file call, then the final), validators once.
    implementers = [a for a in agents if a.startswith("impl-")]
    validators = [a for a in agents if a.startswith("val-")]
    assert len(rig.llm.requests) == 2 * len(implementers) + len(validators)
    with rig.store() as store:
        assert store.get_task(task_id).status == "succeeded"
        rows = {a.agent_id: a.status for a in store.list_agents(task_id)}
        assert rows == dict.fromkeys(agents, "done")
        decisions = store.decisions(task_id)
        assert [(d.iteration, d.decision) for d in decisions] == [(1, "PROCEED")]


TEAM = ["impl-1-1", "impl-2-1", "val-1-1", "val-2-1"]


def test_resume_after_sigkill_at_every_step(rig: Rig) -> None:
    """One task, SIGKILLed six times, resumed six times; it ends as if never killed.

    Kill points: right after ``task:created`` (Loop 3 starting: implementers
    not yet spawned, or mid-spawn), with both implementers mid-conversation,
    right after ``gate``, right after ``consensus``, while waiting for a human
    (``decision:awaiting``), and right after the ``decision``.
    """
    rig.model.hold("implementer")
    proc = rig.orchestrate("T", "--decision", "human")
    events = rig.events("T", proc)

    def kill_and_resume(phase: str | None = None) -> subprocess.Popen[bytes]:
        sigkill(events.proc or proc)
        resumed = rig.start("resume", "T")
        events.proc = resumed
        if phase is not None:
            events.wait("task:resumed", phase=phase)
        return resumed

    events.wait("task:created")
    kill_and_resume("loop3")  # 1: Loop 3 starting
    rig.model.wait_arrivals({"Coder", "System Architect"})
    before = {a: rig.pid_of("T", a) for a in TEAM[:2]}
    rig.model.hold("validator")
    kill_and_resume("loop3")  # 2: both implementers mid-conversation, still running
    rig.model.release("implementer")
    gate = events.wait("gate")
    assert gate["passed"] and gate["reported"] == 2 and gate["failed"] == 0
    kill_and_resume()  # 3: right after the gate
    rig.model.release("validator")
    assert events.wait("consensus")["passed"]
    kill_and_resume()  # 4: right after consensus
    assert events.wait("decision:awaiting")["iteration"] == 1
    sigkill(events.proc or proc)  # 5: waiting for a person
    # The person decides while no orchestrator runs; the decision waits for the next one.
    decided = rig.cfn("decide", "T", "PROCEED", "--reason", "ship it")
    assert decided.returncode == 0, decided.stderr
    events.proc = rig.start("resume", "T")
    assert events.wait("decision")["decision"] == "PROCEED"
    last = kill_and_resume()  # 6: right after the decision was recorded
    assert rig.finish(last) == 0, rig.output(last)
    assert "T: succeeded" in rig.output(last)

    assert_finished_once(rig, "T", TEAM)
    # The implementers that reported are the very processes started before kill 2:
    # re-attached, not started again.
    assert {a: rig.pid_of("T", a) for a in TEAM[:2]} == before
    with rig.store() as store:
        (decision,) = store.decisions("T")
    assert decision.decided_by == "human:cli" and decision.reason == "ship it"
    kinds = [k for k, _ in events.all() if k != "llm:call"]  # the gateway's come off-path
    assert kinds.count("task:resumed") >= 5 and kinds[-1] == "task:finished"
    # A re-attached agent is shown as it was started (its route and backend read back
    # from its context file), not blank.
    running = [d for k, d in events.all() if k == "agent:update" and d.get("status") == "running"]
    assert running and all(d.get("backend") == "builtin" and d.get("provider") for d in running)
    with rig.store() as store:
        assert all(a.provider and a.model for a in store.list_agents("T"))
