"""Engines for the persistent layer: SQLite by default, PostgreSQL through DATABASE_URL.

SQLite (the seed's ``DB_PATH``, default ``<state dir>/cfn.db``) is opened in WAL
mode, with foreign keys enforced and a busy timeout, and with pysqlite's own
transaction handling switched off: the driver otherwise runs DDL outside any
transaction and starts transactions late, which breaks all-or-nothing writes
and transactional migrations. We emit ``BEGIN`` ourselves (``BEGIN IMMEDIATE``
for writers, so two writers queue on the busy timeout instead of failing with
"database is locked" when one tries to upgrade its read lock).

PostgreSQL goes through psycopg 3; a ``postgresql://`` or ``postgres://`` URL is
rewritten to the ``postgresql+psycopg://`` driver. Sessions run in UTC so that
``CURRENT_TIMESTAMP`` defaults agree with the UTC values cfn writes itself.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from cfn.errors import ConfigError
from cfn.settings import Settings

#: What SQLite says when another connection holds the lock it needs.
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")

#: Execution option that marks a connection as a writer (``BEGIN IMMEDIATE`` on SQLite).
WRITE_OPTION = "cfn_write"


def database_url(settings: Settings) -> URL:
    """DATABASE_URL if set, else SQLite at DB_PATH, else ``<state dir>/cfn.db``."""
    if settings.database_url:
        raw = settings.database_url.strip()
        for prefix in ("postgres://", "postgresql://"):
            if raw.startswith(prefix):
                raw = "postgresql+psycopg://" + raw[len(prefix) :]
        try:
            url = make_url(raw)
        except ArgumentError:
            raise ConfigError(
                "DATABASE_URL is not a database URL: use postgresql://user:pw@host:port/db "
                "or sqlite:///path/to/cfn.db"
            ) from None
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ConfigError(
                f"DATABASE_URL names {url.get_backend_name()!r}: cfn supports postgresql and sqlite"
            )
        if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
            url = url.set(drivername="postgresql+psycopg")
        return url
    path = settings.db_path or settings.state_dir / "cfn.db"
    return URL.create("sqlite+pysqlite", database=str(Path(path).expanduser().resolve()))


def ping(engine: Engine) -> None:
    """One round trip to the database; the driver's error when it does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).scalar_one()


def describe(url: URL) -> str:
    """The URL for messages: password hidden."""
    return url.render_as_string(hide_password=True)


def make_engine(settings: Settings, url: URL | None = None) -> Engine:
    """An Engine for ``url`` (default: from settings) with cfn's connection rules."""
    url = url or database_url(settings)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, settings)
    return _postgres_engine(url, settings)


def _private_file(path: Path) -> None:
    """The database file exists and only its owner may read it (0600): it holds every
    task's records. SQLite gives its -wal and -shm files the database file's mode. A
    file of ours made readable to others by an older cfn (0644) is tightened."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with contextlib.suppress(OSError):
            info = path.stat()
            if info.st_uid == os.getuid() and info.st_mode & 0o077:
                for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    with contextlib.suppress(FileNotFoundError):
                        name.chmod(0o600)
        return
    except OSError:
        return  # not ours to create here: SQLite reports what is wrong when it opens it
    os.close(fd)


def _sqlite_engine(url: URL, settings: Settings) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        _private_file(Path(url.database))
    engine = create_engine(
        url,
        connect_args={"timeout": settings.cfn_db_busy_timeout, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control away from pysqlite (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            _use_wal(cursor, settings.cfn_db_busy_timeout)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        writer = bool(conn.get_execution_options().get(WRITE_OPTION))
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def sqlite_busy(message: str) -> bool:
    """Whether a sqlite3 error's message says the database is locked or busy."""
    text = message.lower()
    return any(words in text for words in _SQLITE_BUSY)


def _use_wal(cursor: sqlite3.Cursor, timeout: float) -> None:
    """Put the database in WAL mode (persistent: a no-op once any connection did it).

    Switching a fresh database to WAL needs its exclusive lock, and SQLite answers
    "database is locked" at once, without calling the busy handler, while another
    connection holds a write (RESERVED) lock: cfn processes opening a new database
    together lost that race (four threads: 17 of 200 starts failed). So the mode
    is read first, and the switch is retried for up to the busy timeout.
    """
    row = cursor.execute("PRAGMA journal_mode").fetchone()
    if row is not None and str(row[0]).lower() in ("wal", "memory"):
        return
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if not sqlite_busy(str(exc)) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _postgres_engine(url: URL, settings: Settings) -> Engine:
    engine = create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": settings.cfn_db_connect_timeout},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.commit()

    return engine
