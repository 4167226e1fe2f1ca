"""A database that is locked or restarting under a write: retried, or one clear error;
never half-written.

SQLite: another *process* (sqlite3 through Python, as any other program
would) holds the write lock (``BEGIN IMMEDIATE``) beyond the busy timeout.
PostgreSQL: the test's own server (tests/support/postgres.py) is restarted
with ``pg_ctl restart -m fast`` (sessions terminated) in the middle of a
transaction, or while a write is starting.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, func, insert, select

from cfn.errors import DatabaseError
from cfn.settings import Settings
from cfn.store.repository import T_EVENTS, T_SKILLS, Store, WriteInterruptedError, utcnow
from tests.support.postgres import PostgresServer
from tests.support.servers import cfn_env

CFN = [sys.executable, "-m", "cfn"]
BUSY = 0.2  # CFN_DB_BUSY_TIMEOUT for these tests, seconds

# Holds SQLite's write lock until stdin closes (or for the seconds given), says "locked".
HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO events (kind, payload, created_at) VALUES ('holder', '{}', '2026-01-01')")
print("locked", flush=True)
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))
else:
    sys.stdin.read()
db.execute("ROLLBACK")
"""


def hold_lock(db: Path, seconds: float | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", HOLDER, str(db)] + ([] if seconds is None else [str(seconds)])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def count(store: Store, kind: str | None = None) -> int:
    query = select(func.count()).select_from(T_EVENTS)
    if kind is not None:
        query = query.where(T_EVENTS.c.kind == kind)
    with store.read() as conn:
        return int(conn.execute(query).scalar_one())


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    db = tmp_path / "db" / "cfn.db"
    settings = Settings(cfn_state_dir=tmp_path / ".cfn", db_path=db, cfn_db_busy_timeout=BUSY)
    with Store.open(settings) as store:
        yield store, db


def test_sqlite_lock_released_during_the_retries_the_write_goes_through(
    sqlite_store: tuple[Store, Path], caplog: pytest.LogCaptureFixture
) -> None:
    store, db = sqlite_store
    holder = hold_lock(db, seconds=3 * BUSY)
    caplog.set_level(logging.WARNING, logger="cfn.store.repository")
    started = time.monotonic()
    ids = store.append_events([("a", {"n": 1}, None), ("b", {"n": 2}, None)])
    waited = time.monotonic() - started
    assert holder.wait(10) == 0
    assert len(ids) == 2 and count(store) == 2 and count(store, "holder") == 0
    retries = [r.getMessage() for r in caplog.records if "unavailable for writing" in r.message]
    assert retries and "database is locked" in retries[0], caplog.text
    assert waited >= 2 * BUSY  # it really waited for the lock (at least one busy timeout + retry)


def test_sqlite_lock_held_past_every_retry_fails_loudly_and_writes_nothing(
    sqlite_store: tuple[Store, Path],
) -> None:
    store, db = sqlite_store
    holder = hold_lock(db)
    try:
        with pytest.raises(DatabaseError) as failed:
            store.append_events([("a", {"n": 1}, None), ("b", {"n": 2}, None)])
    finally:
        holder.communicate("")
    message = str(failed.value)
    assert "stayed unavailable for writing (database is locked)" in message
    assert "through 6 attempts; nothing was written" in message
    assert count(store) == 0


def test_cli_write_on_a_locked_database_is_one_error_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "skills" / "review").mkdir(parents=True)
    (project / "skills" / "review" / "SKILL.md").write_text("# review\n")
    db = tmp_path / "db" / "cfn.db"
    settings = Settings(cfn_state_dir=tmp_path / ".cfn", db_path=db)
    Store.open(settings).close()  # schema in place
    env = cfn_env(tmp_path, DB_PATH=str(db), CFN_DB_BUSY_TIMEOUT=str(BUSY))
    holder = hold_lock(db)
    try:
        done = subprocess.run(
            [*CFN, "skills", "add", "skills/review"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.communicate("")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "nothing was written" in line]
    assert len(errors) == 1 and "database is locked" in errors[0], done.stderr
    with Store.open(settings) as store, store.read() as conn:
        assert conn.execute(select(func.count()).select_from(T_SKILLS)).scalar_one() == 0


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def restart(server: PostgresServer) -> None:
    """``pg_ctl restart -m fast``: every session is terminated, the server comes back."""
    assert server.workdir is not None
    subprocess.run(
        server._cmd(
            "pg_ctl", "restart", "-m", "fast", "-w", "-t", "60", "-D", str(server.workdir / "data")
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
    )


def is_down(server: PostgresServer) -> bool:
    try:
        psycopg.connect(server.admin_url, connect_timeout=1).close()
    except psycopg.OperationalError:
        return True
    return False


@pytest.fixture
def pg_store(pg_server: PostgresServer, tmp_path: Path) -> Iterator[Store]:
    url = pg_server.database()
    try:
        with Store.open(Settings(cfn_state_dir=tmp_path / ".cfn", database_url=url)) as store:
            yield store
    finally:
        pg_server.drop(url)


def event_row(n: int) -> dict[str, object]:
    return {"kind": "row", "payload": f'{{"n": {n}}}', "created_at": utcnow()}


def test_postgres_restarted_mid_transaction_rolls_back_and_says_so(
    pg_server: PostgresServer, pg_store: Store
) -> None:
    with pytest.raises(WriteInterruptedError) as failed, pg_store.write() as conn:
        conn.execute(insert(T_EVENTS).values(**event_row(1)))
        restart(pg_server)
        conn.execute(insert(T_EVENTS).values(**event_row(2)))
    assert not failed.value.outcome_unknown
    assert "the write broke off" in str(failed.value)
    assert "rolled back, nothing of it was written" in str(failed.value)
    assert count(pg_store) == 0  # the store reconnects; the first row is not there


def test_postgres_restarted_mid_transaction_is_run_again_once(
    pg_server: PostgresServer, pg_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cfn.store.repository")
    attempts: list[int] = []

    def work(conn: Connection) -> int:
        attempts.append(1)
        for n in range(3):
            conn.execute(insert(T_EVENTS).values(**event_row(n)))
            if n == 1 and len(attempts) == 1:
                restart(pg_server)  # between the second and third row of the first try
        return n

    assert pg_store.transaction(work) == 2
    assert len(attempts) == 2
    assert count(pg_store) == 3  # the first try left nothing; the second wrote all three
    assert "running the transaction again" in caplog.text


def test_postgres_restarting_when_a_write_starts_waits_for_it(
    pg_server: PostgresServer, pg_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cfn.store.repository")
    restarter = threading.Thread(target=restart, args=(pg_server,))
    restarter.start()
    deadline = time.monotonic() + 30
    while not is_down(pg_server):
        assert time.monotonic() < deadline, "postgres never went down"
        time.sleep(0.005)
    try:
        pg_store.append_events([("during", {"n": 1}, None), ("during", {"n": 2}, None)])
    finally:
        restarter.join(60)
    assert count(pg_store, "during") == 2
    assert "unavailable for writing" in caplog.text or "running the transaction again" in (
        caplog.text
    )
