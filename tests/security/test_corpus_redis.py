"""Garbage in the Redis values cfn reads back (a bash agent can LPUSH anything).

Completions, payloads, signals, heartbeats and context values that are not
what the wire format says are recorded as failed or refused with a clear
error, never crash a reader, and reading writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cfn.agents import heartbeat as hb
from cfn.agents.signals import take_agent_signal
from cfn.coordination import completion
from cfn.coordination.connection import RedisManager
from cfn.coordination.context import get_context
from cfn.errors import CfnError
from tests.security.corpus import deep_json, redis_snapshot
from tests.support.servers import RedisServer

#: Values of ``coord:{task}:complete`` that are not ``{agent}:{result}`` with valid parts.
BAD_ENTRIES: list[bytes] = [
    b"garbage",
    b":success",
    b"a1:",
    b"*:success",
    b"../x:success",
    b"a\nb:success",
    b"a1:success:extra",
    b"a1:succ ess",
    b"\xff\xfe:success",
    b"a1:\xff",
    b"\x00:success",
    b"",
    b"x" * 100_000,
    b"a1:" + b"s" * 300,
    b"'; DROP TABLE agents;--:success",
]

#: Payloads of an agent that reported ``success``: none is a usable success.
BAD_PAYLOADS: list[bytes] = [
    b"{not json",
    b"[]",
    b"null",
    b"42",
    b'"a string"',
    b'{"confidence": "0.9"}',
    b'{"confidence": NaN}',
    b'{"confidence": Infinity}',
    b'{"confidence": 1e309}',
    b'{"confidence": 7}',
    b'{"confidence": -0.1}',
    b'{"confidence": true}',
    b'{"confidence": null}',
    b'{"confidence": [0.9]}',
    b'{"no": "confidence"}',
    deep_json(100_000).encode(),
    b'{"confidence": 0.9' + b" " * 10 + b"",
    b"\xff\xfe\xfd",
    b'{"confidence": 0.9, "x": "' + b"y" * 3_000_000,  # huge and cut off
    b"",
]

BAD_SIGNALS: list[bytes] = [
    b"{not json",
    deep_json(100_000).encode(),
    b"\xff\xfe",
    b"[1, 2]",
    b'{"type": {"nested": 1}, "data": 5, "ts": "soon"}',
    b"",
    b"x" * 1_000_000,
]

BAD_HEARTBEATS: list[bytes] = [
    b"{oops",
    deep_json(100_000).encode(),
    b"\xff",
    b"[]",
    b'{"ts": "now", "pid": "x", "status": 5}',
]

BAD_CONTEXT: list[bytes] = [b"{oops", deep_json(100_000).encode(), b"\xff\xfe", b"NaN"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = RedisServer(tmp_path_factory.mktemp("redis-corpus") / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def mgr(server: RedisServer) -> AsyncIterator[RedisManager]:
    manager = RedisManager.from_url(server.url)
    try:
        yield manager
    finally:
        await manager.close()


@pytest.mark.parametrize("entry", BAD_ENTRIES, ids=[f"entry-{n}" for n in range(len(BAD_ENTRIES))])
async def test_bad_completion_entry_is_never_a_success(
    server: RedisServer, mgr: RedisManager, entry: bytes
) -> None:
    raw = server.client()
    task = f"bad-entry-{BAD_ENTRIES.index(entry)}"
    raw.lpush(f"coord:{task}:complete", entry)
    before = redis_snapshot(raw)
    report = await completion.collect_results(mgr, task, 1, 0.5, 0.3, payload_grace=0.1)
    assert not report.met and report.succeeded == []
    assert await completion.reported_agents(mgr, task) is not None
    assert redis_snapshot(raw) == before
    raw.close()


@pytest.mark.parametrize(
    "payload", BAD_PAYLOADS, ids=[f"payload-{n}" for n in range(len(BAD_PAYLOADS))]
)
async def test_bad_payload_is_a_failed_result(
    server: RedisServer, mgr: RedisManager, payload: bytes
) -> None:
    raw = server.client()
    task = f"bad-payload-{BAD_PAYLOADS.index(payload)}"
    raw.lpush(f"coord:{task}:payload:a1", payload)
    raw.lpush(f"coord:{task}:complete", b"a1:success")
    before = redis_snapshot(raw)
    report = await completion.collect_results(mgr, task, 1, 0.5, 5.0, payload_grace=0.1)
    assert report.arrived == 1 and len(report.failed) == 1, report.to_dict()
    assert report.failed[0].reason and not report.met
    assert redis_snapshot(raw) == before
    raw.close()


@pytest.mark.parametrize("value", BAD_SIGNALS, ids=[f"signal-{n}" for n in range(len(BAD_SIGNALS))])
async def test_bad_signal_is_read_as_unknown_or_refused(
    server: RedisServer, mgr: RedisManager, value: bytes
) -> None:
    raw = server.client()
    task = f"bad-signal-{BAD_SIGNALS.index(value)}"
    raw.lpush(f"swarm:{task}:signal:a1", value)
    try:
        signal = await take_agent_signal(mgr, task, "a1")
    except CfnError as exc:
        assert str(exc)
    else:
        assert signal is not None and signal.type != "stop" and isinstance(signal.data, dict)
    raw.close()


@pytest.mark.parametrize(
    "value", BAD_HEARTBEATS, ids=[f"heartbeat-{n}" for n in range(len(BAD_HEARTBEATS))]
)
async def test_bad_heartbeat_is_read_without_crashing(
    server: RedisServer, mgr: RedisManager, value: bytes
) -> None:
    raw = server.client()
    task = f"bad-hb-{BAD_HEARTBEATS.index(value)}"
    raw.set(f"swarm:{task}:heartbeat:a1", value)
    beat = await hb.read_heartbeat(mgr, task, "a1")
    assert beat is None or isinstance(beat, dict)
    raw.close()


@pytest.mark.parametrize(
    "value", BAD_CONTEXT, ids=[f"context-{n}" for n in range(len(BAD_CONTEXT))]
)
async def test_bad_context_value_is_a_clear_error(
    server: RedisServer, mgr: RedisManager, value: bytes
) -> None:
    raw = server.client()
    task = f"bad-ctx-{BAD_CONTEXT.index(value)}"
    raw.set(f"context:{task}:metadata", value)
    with pytest.raises(CfnError, match="metadata"):
        await get_context(mgr, task, "metadata")
    raw.close()


def test_counts() -> None:
    total = (
        len(BAD_ENTRIES) + len(BAD_PAYLOADS) + len(BAD_SIGNALS) + len(BAD_HEARTBEATS)
        + len(BAD_CONTEXT)
    )  # fmt: skip
    assert total >= 50
    assert json.dumps(total)
