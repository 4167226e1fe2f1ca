"""The schema matches the seed, and every migration goes down and up again with data."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from cfn.errors import DatabaseError, InvalidInputError
from cfn.settings import Settings
from cfn.store import migrate
from cfn.store.records import AgentRecord
from cfn.store.repository import Store

LOOP_TABLES = {
    "tasks", "iterations", "agents", "decisions", "events", "llm_calls", "mcp_audit"
}  # fmt: skip


def test_head_constant_matches_the_scripts() -> None:
    assert migrate.head() == migrate.HEAD
    assert migrate.revisions() == ["0001", "0002", "0003", "0004", "0005"]


def test_first_use_creates_the_schema(store: Store) -> None:
    assert migrate.current(store.engine) == migrate.HEAD
    tables = set(inspect(store.engine).get_table_names())
    assert {"skills", "approval_history", "alembic_version"} | LOOP_TABLES <= tables


def test_seed_tables_column_for_column(store: Store) -> None:
    insp = inspect(store.engine)
    skills = {c["name"]: c for c in insp.get_columns("skills")}
    assert list(skills) == [
        "id",
        "name",
        "content_hash",
        "content_path",
        "created_at",
        "updated_at",
    ]
    assert skills["name"]["nullable"] is False
    assert skills["name"]["type"].length == 255
    assert skills["content_hash"]["type"].length == 64
    assert skills["content_path"]["type"].length == 512
    for col in ("created_at", "updated_at"):
        assert "CURRENT_TIMESTAMP" in str(skills[col]["default"]).upper() or "now()" in str(
            skills[col]["default"]
        )
    uniques = insp.get_unique_constraints("skills")
    assert [u["column_names"] for u in uniques] == [["name"]]

    history = {c["name"]: c for c in insp.get_columns("approval_history")}
    assert list(history) == [
        "id",
        "skill_id",
        "agent_id",
        "decision",
        "confidence",
        "metadata",
        "created_at",
    ]
    assert history["agent_id"]["type"].length == 255
    assert history["decision"]["type"].length == 20
    fks = insp.get_foreign_keys("approval_history")
    assert [
        (f["constrained_columns"], f["referred_table"], f["referred_columns"]) for f in fks
    ] == [(["skill_id"], "skills", ["id"])]


def test_sqlite_pragmas_and_autoincrement(tmp_path: Path) -> None:
    """SQLite's own connection rules (PostgreSQL has no counterpart to check)."""
    store = Store.open(Settings(cfn_state_dir=tmp_path / ".cfn"))
    assert store.engine.url.database == str(tmp_path / ".cfn" / "cfn.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        ddl = conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'approval_history'"
        ).scalar()
    store.close()
    assert "AUTOINCREMENT" in ddl


def test_foreign_key_is_enforced(store: Store) -> None:
    with pytest.raises(DatabaseError), store.write() as conn:
        conn.execute(
            text("INSERT INTO approval_history (skill_id, agent_id) VALUES (:s, :a)"),
            {"s": 999, "a": "x"},
        )
    assert store.row_counts()["approval_history"] == 0


def _fill(store: Store) -> None:
    store.upsert_skill("s1", "a" * 64, "skills/s1/SKILL.md")
    store.add_approval("s1", "impl-1-1", "APPROVE", 0.9, '{"why": "ok"}')
    store.create_task("t1", "standard", "epic")
    store.save_agent(AgentRecord("t1", "impl-1-1", "implementer", 3, 1, None, None, None,
                                 "pending"))  # fmt: skip
    store.append_event("loop3.start", {"n": 1}, "t1")
    store.record_llm_call(
        provider="offline", model="m", input_tokens=3, output_tokens=4, cost_usd=0.0, task_id="t1"
    )
    store.append_mcp_audit(
        [{"server": "redis-tools", "tool": "redis_scan", "outcome": "ok", "duration_ms": 1.5}]
    )


def test_upgrade_downgrade_upgrade_round_trip_with_data(store: Store) -> None:
    _fill(store)
    assert migrate.downgrade(store.engine, "0001") == ("0005", "0001")
    tables = set(inspect(store.engine).get_table_names())
    assert not tables & LOOP_TABLES
    # The seed tables keep their rows through the loop tables' rollback.
    assert [s.name for s in store.list_skills()] == ["s1"]
    assert [a.agent_id for a in store.history("s1")] == ["impl-1-1"]
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            assert (
                conn.execute(
                    text("SELECT count(*) FROM pg_proc WHERE proname = :n"),
                    {"n": "cfn_events_append_only"},
                ).scalar()
                == 0
            )

    assert migrate.downgrade(store.engine, "base") == ("0001", None)
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    assert migrate.current(store.engine) is None

    assert migrate.upgrade(store.engine) == (None, "0005")
    _fill(store)  # the recreated tables take the same data again
    assert store.row_counts()["events"] == 1
    with pytest.raises(DatabaseError, match="append-only"), store.write() as conn:
        conn.execute(text("DELETE FROM events"))


def test_downgrade_to_unknown_revision_is_input_error(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="Known revisions: 0001, 0002, 0003, 0004, 0005"):
        migrate.downgrade(store.engine, "nope")
    assert migrate.current(store.engine) == "0005"


def test_unknown_newer_revision_is_reported(db_settings: Settings) -> None:
    with Store.open(db_settings) as store, store.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": "9999"})
    with pytest.raises(DatabaseError, match="'9999'"):
        Store.open(db_settings)


def test_concurrent_first_use_migrates_once(db_settings: Settings) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []

    def opener() -> None:
        try:
            stores.append(Store.open(db_settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert migrate.current(stores[0].engine) == "0005"
    for s in stores:
        s.close()


def test_a_new_sqlite_database_opened_while_another_connection_writes_it(
    tmp_path: Path,
) -> None:
    """Switching a fresh database to WAL waits for another connection's lock.

    SQLite fails that switch at once, without its busy handler, while any other
    connection holds a write (RESERVED) lock: four threads opening a new database
    together lost the race about one time in twelve. Here a plain connection holds
    that lock on the not-yet-WAL file for 0.3 s; the open must wait, not fail.
    """
    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    assert holder.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    holder.execute("BEGIN IMMEDIATE")  # a RESERVED lock until COMMIT
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        settings = Settings(cfn_state_dir=tmp_path / ".cfn", database_url=f"sqlite:///{path}")
        with Store.open(settings) as store:
            assert migrate.current(store.engine) == migrate.HEAD
            with store.read() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        release.join()
        holder.close()


def test_a_lock_held_past_the_busy_timeout_still_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    try:
        settings = Settings(
            cfn_state_dir=tmp_path / ".cfn",
            database_url=f"sqlite:///{path}",
            cfn_db_busy_timeout=0.2,
        )
        with pytest.raises(DatabaseError, match="database is locked"):
            Store.open(settings)
    finally:
        holder.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_auto_migrate_off_leaves_database_empty(db_settings: Settings) -> None:
    with Store.open(db_settings, auto_migrate=False) as store:
        assert migrate.current(store.engine) is None
        with pytest.raises(InvalidInputError, match="nothing to downgrade"):
            migrate.downgrade(store.engine)
