"""The MCP audit table: batches in, filtered reads out, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

import pytest

from cfn.errors import InvalidInputError
from cfn.store.repository import Store


def _entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ts": time.time(),
        "via": "gateway",
        "agent_id": "impl-1-1",
        "task_id": "task-a",
        "server": "redis-tools",
        "tool": "redis_scan",
        "outcome": "ok",
        "duration_ms": 2.25,
    }
    entry.update(overrides)
    return entry


def test_batch_append_and_filtered_reads(store: Store) -> None:
    batch = [
        _entry(),
        _entry(agent_id="val-1-1", outcome="forbidden", server="playwright",
               tool="browser_navigate", reason="token of agent val-1-1 may not use it"),
        _entry(agent_id=None, task_id=None, outcome="unauthorized", tool="/mcp",
               duration_ms=0.0, reason="forged token", via="direct"),
        _entry(task_id="task-b", outcome="error"),
    ]  # fmt: skip
    assert store.append_mcp_audit(batch) == 4
    assert store.append_mcp_audit([]) == 0
    rows = store.mcp_audit()
    assert [r.outcome for r in rows] == ["ok", "forbidden", "unauthorized", "error"]
    first = rows[0]
    assert (first.via, first.agent_id, first.task_id, first.server, first.tool) == (
        "gateway", "impl-1-1", "task-a", "redis-tools", "redis_scan",
    )  # fmt: skip
    assert first.duration_ms == pytest.approx(2.25) and first.reason is None
    # The call's own time (naive UTC, as every timestamp in the store), not the insert's.
    called = first.created_at.replace(tzinfo=UTC).timestamp()
    assert called == pytest.approx(batch[0]["ts"], abs=1e-3)
    assert rows[2].agent_id is None and rows[2].reason == "forged token"
    assert [r.outcome for r in store.mcp_audit(task_id="task-a")] == ["ok", "forbidden"]
    assert [r.agent_id for r in store.mcp_audit(outcome="forbidden")] == ["val-1-1"]
    assert [r.tool for r in store.mcp_audit(server="playwright")] == ["browser_navigate"]
    assert [r.id for r in store.mcp_audit(after_id=rows[2].id)] == [rows[3].id]
    assert len(store.mcp_audit(limit=2)) == 2
    assert store.row_counts()["mcp_audit"] == 4


def test_a_bad_entry_appends_none(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="outcome"):
        store.append_mcp_audit([_entry(), _entry(outcome="maybe")])
    with pytest.raises(InvalidInputError, match="duration"):
        store.append_mcp_audit([_entry(duration_ms=-1)])
    assert store.mcp_audit() == []
    with pytest.raises(InvalidInputError, match="outcome"):
        store.mcp_audit(outcome="nope")


def test_client_supplied_text_is_clipped_not_refused(store: Store) -> None:
    store.append_mcp_audit([
        _entry(tool="x" * 1000 + "\x00\n'); DROP TABLE mcp_audit; --", outcome="forbidden",
               reason="r" * 10_000),
    ])  # fmt: skip
    (row,) = store.mcp_audit()
    assert row.tool == "x" * 255 and row.reason is not None and len(row.reason) == 2000
    store.append_mcp_audit([_entry(tool="a\x00b'); DROP TABLE mcp_audit; --")])
    assert store.mcp_audit()[-1].tool == "a?b'); DROP TABLE mcp_audit; --"
