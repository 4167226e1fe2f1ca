"""The Redis primary SIGKILLed mid-loop with REDIS_FALLBACK_1 configured: the loop finishes.

Real processes: ``python -m cfn orchestrate``, its agent processes, two
redis-servers (primary and fallback), SQLite, and the local LLM stand-in on
the OpenAI wire format (tests/loop/test_resume.py's rig). The implementers
are held mid-conversation by the stand-in; the primary is killed; then they
are let go. They report, heartbeat and are judged on the fallback; the
validators (started after the kill) and the product owner's decision too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.loop.test_resume import Rig, running_rig
from tests.support.replication import assert_each_reported_once
from tests.support.servers import RedisServer

TEAM = ["impl-1-1", "impl-2-1", "val-1-1"]


@pytest.fixture
def rig(tmp_path: Path, redis_server: RedisServer, fallback: RedisServer) -> Iterator[Rig]:
    with running_rig(tmp_path, redis_server) as rig:
        rig.env["REDIS_FALLBACK_1"] = fallback.url
        # A busy 2-core machine starts agents slowly and may delay a beat by seconds.
        rig.env["AGENT_TIMEOUT"] = "120"
        rig.env["CFN_AGENT_HEARTBEAT_INTERVAL"] = "20"
        rig.env["CFN_PROVIDER_TIMEOUT"] = "150"
        yield rig


def test_primary_killed_mid_loop_the_loop_finishes_on_the_fallback(
    rig: Rig, redis_server: RedisServer, fallback: RedisServer
) -> None:
    rig.model.hold("implementer")
    proc = rig.orchestrate("T", implementers=2, validators=1)
    events = rig.events("T", proc)
    events.wait("task:created")
    rig.model.wait_arrivals({"Coder", "System Architect"}, timeout=110)
    implementers = {agent: rig.pid_of("T", agent) for agent in TEAM[:2]}
    for agent in implementers:
        env = rig.redis_urls_of("T", agent)
        # The agent's own URLs (they may carry its ACL user): the two servers.
        assert urlsplit(env.get("REDIS_URL", "")).port == redis_server.port, agent
        assert urlsplit(env.get("REDIS_FALLBACK_1", "")).port == fallback.port, (
            f"{agent} has no fallback URL"
        )

    redis_server.kill()  # the primary dies while both implementers are mid-call
    rig.model.release("implementer")
    code = rig.finish(proc, timeout=180)
    output = rig.output(proc)
    assert code == 0, output
    assert "T: succeeded" in output
    # The orchestrator moved to the fallback (the warning may be wrapped across lines).
    assert f"using {fallback.url} from now on" in " ".join(output.split()), output
    assert "heartbeat lapsed" not in output, output  # no agent was taken for dead

    # Everything after the kill is on the fallback: every agent's completion, once,
    # and the task's events through to the end.
    client = fallback.client()
    try:
        assert_each_reported_once(client, "T", TEAM)
        kinds = [fields["kind"] for _id, fields in client.xrange("events:T")]
    finally:
        client.close()
    # (The LLM gateway's llm:call events are written off its request path, so the last
    # one may land after the loop's own last event.)
    loop_kinds = [k for k in kinds if k != "llm:call"]
    assert loop_kinds[-1] == "task:finished" and "decision" in loop_kinds
    # Each implementer process itself moved to the fallback and reported there (no restart).
    for agent, pid in implementers.items():
        assert rig.pid_of("T", agent) == pid and rig.runs("T", agent) == 1, agent
        log = (rig.agent_dir("T", agent) / "agent.log").read_text()
        assert "using" in log and "127.0.0.1:" + str(fallback.port) in log, log[-2000:]
    with rig.store() as store:
        assert store.get_task("T").status == "succeeded"
        assert {a.agent_id: a.status for a in store.list_agents("T")} == dict.fromkeys(TEAM, "done")
        assert [(d.iteration, d.decision) for d in store.decisions("T")] == [(1, "PROCEED")]
