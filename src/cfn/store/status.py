"""The portal's status read: a task row, its iterations, decisions and agents, fast.

The status endpoint is the one the dashboard and scripts call most, so its
four SELECTs are compiled once for the store's dialect and run in one read
transaction on the DB-API cursor of a connection from the store's pool (with
the store's connection set-up: WAL, UTC). Building, compiling and executing
SQLAlchemy statements per request cost about 30 times what SQLite spends
answering them (profiled: ~1.6 ms against ~60 us for four point reads).
Values pass through the columns' own result processors (SQLite's datetime
strings become datetimes), so the records read the same as the Store's own
reads; tests compare both on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import BindParameter, Select, bindparam, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError

from cfn import keys
from cfn.errors import DatabaseError
from cfn.store.records import IterationRecord, TaskRecord, TaskSnapshot
from cfn.store.repository import (
    T_AGENTS,
    T_DECISIONS,
    T_ITERATIONS,
    T_TASKS,
    Store,
    agent_record,
    decision_record,
)

log = logging.getLogger(__name__)


class _Statement:
    """One SELECT compiled once for the store's dialect, with its columns' converters."""

    def __init__(self, select_: Select[Any], dialect: Dialect) -> None:
        compiled = select_.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        self.dialect = dialect
        self.columns = tuple(str(c.name) for c in select_.selected_columns)
        self.types = tuple(c.type.dialect_impl(dialect) for c in select_.selected_columns)
        # Some result processors need the driver's column type code (psycopg's
        # numeric OIDs): they are made from the first cursor description, then kept.
        self.converters: tuple[Callable[[Any], Any] | None, ...] | None = None

    def run(self, cursor: Any, task_id: str) -> list[dict[str, Any]]:
        """The rows, each as a dict of column name -> converted value."""
        cursor.execute(self.sql, (task_id,) if self.positional else {"task_id": task_id})
        converters = self._converters(cursor)
        columns = self.columns
        return [
            {
                name: value if convert is None or value is None else convert(value)
                for name, convert, value in zip(columns, converters, raw, strict=True)
            }
            for raw in cursor.fetchall()
        ]

    def _converters(self, cursor: Any) -> tuple[Callable[[Any], Any] | None, ...]:
        converters = self.converters
        if converters is None:
            codes = [d[1] for d in cursor.description]
            converters = tuple(
                t.result_processor(self.dialect, code)
                for t, code in zip(self.types, codes, strict=True)
            )
            self.converters = converters
        return converters


class StatusReader:
    """A task's :class:`TaskSnapshot` in one read transaction (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        dialect = store.engine.dialect
        task_id: BindParameter[str] = bindparam("task_id")
        self._task = _Statement(select(T_TASKS).where(T_TASKS.c.id == task_id), dialect)
        self._iterations = _Statement(
            select(T_ITERATIONS)
            .where(T_ITERATIONS.c.task_id == task_id)
            .order_by(T_ITERATIONS.c.number),
            dialect,
        )
        self._decisions = _Statement(
            select(T_DECISIONS).where(T_DECISIONS.c.task_id == task_id).order_by(T_DECISIONS.c.id),
            dialect,
        )
        self._agents = _Statement(
            select(T_AGENTS)
            .where(T_AGENTS.c.task_id == task_id)
            .order_by(T_AGENTS.c.created_at, T_AGENTS.c.id),
            dialect,
        )
        self._driver_error: type[BaseException] = dialect.loaded_dbapi.Error
        self._explicit_begin = dialect.name == "sqlite"
        self._inline: Any = None

    def _select(self, connection: Any, task_id: str) -> TaskSnapshot | None:
        cursor = connection.cursor()
        try:
            if self._explicit_begin:
                cursor.execute("BEGIN")  # cfn's SQLite connections are in autocommit mode
            found = self._task.run(cursor, task_id)
            result = (
                None
                if not found
                else TaskSnapshot(
                    task=TaskRecord.model_validate(found[0]),
                    iterations=[
                        IterationRecord.model_validate(row)
                        for row in self._iterations.run(cursor, task_id)
                    ],
                    decisions=[
                        decision_record(row) for row in self._decisions.run(cursor, task_id)
                    ],
                    agents=[agent_record(row) for row in self._agents.run(cursor, task_id)],
                )
            )
        finally:
            cursor.close()
            connection.rollback()  # read only: end the transaction
        return result

    def read(self, task_id: str) -> TaskSnapshot | None:
        """The task's records in one read transaction, or None for an unknown task.

        Blocking (a pooled connection, the store's busy timeout): call it in a thread.
        """
        keys.validate_id(task_id, "task id")
        try:
            connection = self.store.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise self._unusable(exc) from exc
        try:
            return self._select(connection, task_id)
        except self._driver_error as exc:
            connection.invalidate()  # a broken connection never goes back to the pool
            raise self._unusable(exc) from exc
        finally:
            connection.close()

    async def aread(self, task_id: str) -> TaskSnapshot | None:
        """:meth:`read` for the event loop.

        On SQLite the read first runs right here, on a connection of the
        reader's own whose busy timeout is 0: in WAL mode a reader never waits
        for writers, four point reads take tens of microseconds, and handing
        them to a worker thread cost more than the reads (profiled: the thread
        hop was a tenth of the endpoint's time). Should SQLite still answer
        "busy" (a checkpoint or recovery holding its lock), nothing waits on the
        event loop: the read goes to a thread with the store's busy timeout.
        Other databases always read in a thread.
        """
        keys.validate_id(task_id, "task id")
        if self._explicit_begin:
            try:
                if self._inline is None:
                    # Connecting runs the store's set-up (PRAGMA journal_mode ...), which
                    # may wait on a lock: in a thread, never on the event loop.
                    self._inline = await asyncio.to_thread(self._connect_inline)
                return self._select(self._inline, task_id)
            except (self._driver_error, SQLAlchemyError) as exc:
                # Busy, or the connection broke: drop it (a new one next time) and read
                # in a thread, where waiting is harmless.
                log.debug("status read of %s goes to a thread: %s", task_id, exc)
                self._drop_inline()
        return await asyncio.to_thread(self.read, task_id)

    def _connect_inline(self) -> Any:
        connection = self.store.engine.raw_connection()
        cursor = connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 0")  # this connection never waits
        cursor.close()
        return connection

    def _drop_inline(self) -> None:
        inline, self._inline = self._inline, None
        if inline is not None:
            with contextlib.suppress(Exception):
                inline.invalidate()

    def close(self) -> None:
        """Give back the reader's own connection (the store's pool closes the rest)."""
        self._drop_inline()

    def _unusable(self, exc: BaseException) -> DatabaseError:
        text = str(getattr(exc, "orig", None) or exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return DatabaseError(f"database {self.store.label} is not usable: {first}")
