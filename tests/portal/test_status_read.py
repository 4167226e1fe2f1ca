"""The status endpoint's SQL read (StatusReader: pre-compiled SELECTs on the DB-API
cursor) returns what SQLAlchemy's own execution returns, on SQLite and on a real
PostgreSQL; driver errors become DatabaseError."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from cfn.errors import DatabaseError, InvalidInputError
from cfn.loop.journal import SqlJournal
from cfn.loop.state import AgentRow, Checkpoint, DecisionRow, Phase, TaskOptions
from cfn.portal.views import StatusReader
from cfn.settings import Settings
from cfn.store.repository import T_AGENTS, T_DECISIONS, T_ITERATIONS, T_TASKS, Store
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'cfn.db'}"
    else:
        url = request.getfixturevalue("pg_server").database()
    with Store.open(Settings(cfn_state_dir=tmp_path / ".cfn", database_url=url)) as opened:
        yield opened


def _through_sqlalchemy(store: Store, task_id: str) -> dict[str, Any]:
    def rows(query: Any) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(query).all()]

    with store.read() as conn:
        return {
            "task": rows(select(T_TASKS).where(T_TASKS.c.id == task_id))[0],
            "iterations": rows(
                select(T_ITERATIONS).where(T_ITERATIONS.c.task_id == task_id)
                .order_by(T_ITERATIONS.c.number)
            ),
            "decisions": rows(
                select(T_DECISIONS).where(T_DECISIONS.c.task_id == task_id)
                .order_by(T_DECISIONS.c.id)
            ),
            "agents": rows(
                select(T_AGENTS).where(T_AGENTS.c.task_id == task_id)
                .order_by(T_AGENTS.c.created_at, T_AGENTS.c.id)
            ),
        }


def test_reader_matches_sqlalchemy(store: Store, tmp_path: Path) -> None:
    journal = SqlJournal(store)
    for task_id in ("t1", "t2"):
        options = TaskOptions(task_id=task_id, epic="Build ünïcode ✓", mode="mvp",
                              workspace=str(tmp_path / task_id))
        journal.create_task(options, Checkpoint())
    checkpoint = Checkpoint(iteration=2, phase=Phase.LOOP2,
                            gate={"score": 0.81, "passed": True})
    journal.save_checkpoint("t1", Checkpoint(gate={"score": 0.5}), "running")
    journal.save_checkpoint("t1", checkpoint, "running")
    for n, status in ((1, "done"), (2, "failed"), (3, "running")):
        journal.save_agent(AgentRow("t1", f"impl-{n}-2", "implementer", 3, 2, "coder",
                                    "offline", "m", status, 100 + n, 0.25 * n, f"why {n}"))
    journal.save_agent(AgentRow("t2", "impl-1-1", "implementer", 3, 1, None, None, None,
                                "running"))
    journal.record_decision(DecisionRow("t1", 1, "ITERATE", "human:alice", "again"))

    reader = StatusReader(store)
    got = reader.read("t1")
    assert got == _through_sqlalchemy(store, "t1")
    assert got is not None
    assert [a["id"] for a in got["agents"]] == ["impl-1-2", "impl-2-2", "impl-3-2"]
    assert got["task"]["epic"] == "Build ünïcode ✓"
    assert [i["number"] for i in got["iterations"]] == [1, 2]
    assert got["iterations"][1]["gate_mean"] == pytest.approx(0.81)
    assert type(got["task"]["created_at"]).__name__ == "datetime"
    assert reader.read("t2") == _through_sqlalchemy(store, "t2")
    assert reader.read("nope") is None
    with pytest.raises(InvalidInputError):
        reader.read("a'; drop table tasks; --")

    with store.write() as conn:
        conn.execute(text("DROP TABLE decisions"))
    with pytest.raises(DatabaseError, match="not usable"):
        reader.read("t1")


async def test_event_loop_read_never_waits_on_a_lock(store: Store, tmp_path: Path) -> None:
    journal = SqlJournal(store)
    options = TaskOptions(task_id="t1", epic="x", mode="mvp", workspace=str(tmp_path / "t1"))
    journal.create_task(options, Checkpoint())
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
        assert got is not None and got["task"]["epic"] == "changed"
        assert time.monotonic() - began >= 0.4  # it did wait for the lock ...
        assert ticks >= 10  # ... in a thread: the loop kept running
        assert (await reader.aread("t1") or {})["task"]["epic"] == "changed"
    finally:
        reader.close()
