"""The status endpoint's SQL read (StatusReader: pre-compiled SELECTs on the DB-API
cursor) returns what the Store's own SQLAlchemy reads return, on SQLite and on a real
PostgreSQL; driver errors become DatabaseError."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from sqlalchemy import text

from cfn.errors import DatabaseError, InvalidInputError
from cfn.store.records import AgentRecord, DecisionRecord, TaskSnapshot
from cfn.store.repository import Store
from cfn.store.status import StatusReader


def _through_sqlalchemy(store: Store, task_id: str) -> TaskSnapshot:
    return TaskSnapshot(
        task=store.get_task(task_id),
        iterations=store.iterations(task_id),
        decisions=store.decisions(task_id),
        agents=store.list_agents(task_id),
    )


def test_reader_matches_sqlalchemy(store: Store) -> None:
    for task_id in ("t1", "t2"):
        store.create_task(task_id, "mvp", "Build ünïcode ✓", options="{}", checkpoint="{}")
    store.save_checkpoint("t1", "{}", "running", iteration=1, gate_mean=0.5)
    store.save_checkpoint("t1", "{}", "running", iteration=2, gate_mean=0.81)
    for n, status in ((1, "done"), (2, "failed"), (3, "running")):
        store.save_agent(AgentRecord("t1", f"impl-{n}-2", "implementer", 3, 2, "coder",
                                     "offline", "m", status, 100 + n, 0.25 * n, f"why {n}"))
    store.save_agent(AgentRecord("t2", "impl-1-1", "implementer", 3, 1, None, None, None,
                                 "running"))
    store.record_decision(DecisionRecord("t1", 1, "ITERATE", "human:alice", "again"))

    reader = StatusReader(store)
    got = reader.read("t1")
    assert got == _through_sqlalchemy(store, "t1")
    assert got is not None
    assert [a.agent_id for a in got.agents] == ["impl-1-2", "impl-2-2", "impl-3-2"]
    assert got.task.epic == "Build ünïcode ✓"
    assert [i.number for i in got.iterations] == [1, 2]
    assert got.iterations[1].gate_mean == pytest.approx(0.81)
    assert type(got.task.created_at).__name__ == "datetime"
    assert [(d.decision, d.decided_by) for d in got.decisions] == [("ITERATE", "human:alice")]
    assert type(got.decisions[0].created_at).__name__ == "datetime"
    assert reader.read("t2") == _through_sqlalchemy(store, "t2")
    assert reader.read("nope") is None
    with pytest.raises(InvalidInputError):
        reader.read("a'; drop table tasks; --")

    with store.write() as conn:
        conn.execute(text("DROP TABLE decisions"))
    with pytest.raises(DatabaseError, match="not usable"):
        reader.read("t1")


async def test_event_loop_read_never_waits_on_a_lock(store: Store) -> None:
    store.create_task("t1", "mvp", "x", options="{}", checkpoint="{}")
    reader = StatusReader(store)
    try:
        assert await reader.aread("t1") == reader.read("t1") == _through_sqlalchemy(store, "t1")
        assert await reader.aread("none") is None
        if store.engine.dialect.name != "sqlite":
            return
        # Another connection takes SQLite's exclusive lock (it can only while no other
        # connection has the database open: in WAL mode readers are never kept waiting
        # otherwise). The reader's next read needs a new connection, whose set-up waits
        # for the lock: in a thread, while the event loop goes on.
        reader.close()
        store.engine.dispose()
        locker = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("UPDATE tasks SET epic = 'changed' WHERE id = 't1'")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        def release() -> None:
            locker.execute("COMMIT")
            locker.close()  # gives up the exclusive lock

        running = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, release)
        began = time.monotonic()
        got = await reader.aread("t1")
        running.cancel()
        assert got is not None and got.task.epic == "changed"
        assert time.monotonic() - began >= 0.4  # it did wait for the lock ...
        assert ticks >= 10  # ... in a thread: the loop kept running
        again = await reader.aread("t1")
        assert again is not None and again.task.epic == "changed"
    finally:
        reader.close()
