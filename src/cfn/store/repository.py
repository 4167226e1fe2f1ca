"""The store: every SQL statement cfn runs, as parameterised SQLAlchemy Core.

No statement is ever built by formatting input into SQL text: values travel as
bound parameters, so a skill called ``x'); DROP TABLE skills; --`` is stored
as exactly that name. (The seed's ``execute_sql "$query"`` interpolates shell
strings into SQL; see docs/store.md.)

Each public method is one transaction. :meth:`Store.write` is all-or-nothing:
a failure anywhere inside (a constraint, a bad item half-way through a batch,
an exception in the caller's code) rolls back everything it wrote.

Faults (docs/store.md, "Faults"): a database that is busy (SQLite's write
lock held past the busy timeout) or unreachable (PostgreSQL restarting) when
a write starts is tried again, a bounded number of times with backoff, each
retry logged; the write then either goes through or fails with one
``DatabaseError``. A connection lost in the middle of a transaction rolls it
back on the server; :meth:`Store.transaction` runs the whole unit of work
again, which is what the store's own methods do.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import TypeAdapter
from sqlalchemy import Connection, Engine, Row, Table, bindparam, func, insert, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from cfn import keys
from cfn.errors import DatabaseError, InvalidInputError, NotFoundError
from cfn.settings import Settings, get_settings
from cfn.store import migrate
from cfn.store import validation as check
from cfn.store.engine import WRITE_OPTION, database_url, describe, make_engine, sqlite_busy
from cfn.store.models import (
    AGENT_STATUSES,
    FINISHED_TASK_STATUSES,
    LOOP_DECISIONS,
    MCP_OUTCOMES,
    MODES,
    TASK_STATUSES,
    Base,
)
from cfn.store.records import (
    AgentRecord,
    ApprovalInput,
    ApprovalRecord,
    DecisionRecord,
    EventRecord,
    IterationRecord,
    LlmCallRecord,
    McpAuditRecord,
    SkillChange,
    SkillRecord,
    TaskRecord,
    UsageSummary,
)

log = logging.getLogger(__name__)
R = TypeVar("R")

#: A write that finds the database busy or unreachable is tried this many times in all,
WRITE_ATTEMPTS = 6
#: waiting this long before the first retry, doubling each time up to WRITE_BACKOFF_MAX.
WRITE_BACKOFF = 0.1
WRITE_BACKOFF_MAX = 2.0


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver error, or a DatabaseError caused by one) may pass if retried.

    SQLite: the database is locked or busy. PostgreSQL: the connection was lost or
    could not be made (the server restarting, shutting down, starting up).
    """
    if isinstance(exc, DatabaseError):
        exc = exc.__cause__ or exc
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    module = type(exc.orig).__module__
    if module.startswith("sqlite3"):
        return sqlite_busy(str(exc.orig))
    return module.startswith("psycopg")


class WriteInterruptedError(DatabaseError):
    """A write transaction broke off; ``outcome_unknown`` when it was at its COMMIT."""

    def __init__(self, message: str, *, outcome_unknown: bool) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


T_SKILLS: Table = Base.metadata.tables["skills"]
T_APPROVALS: Table = Base.metadata.tables["approval_history"]
T_TASKS: Table = Base.metadata.tables["tasks"]
T_ITERATIONS: Table = Base.metadata.tables["iterations"]
T_AGENTS: Table = Base.metadata.tables["agents"]
T_DECISIONS: Table = Base.metadata.tables["decisions"]
T_EVENTS: Table = Base.metadata.tables["events"]
T_LLM_CALLS: Table = Base.metadata.tables["llm_calls"]
T_MCP_AUDIT: Table = Base.metadata.tables["mcp_audit"]


# Statements built once: building ``insert().values(...)`` per row costs more than
# running it. Values always travel as bound parameters.
_SKILL_BY_NAME = select(T_SKILLS).where(T_SKILLS.c.name == bindparam("name"))
_INSERT_APPROVALS = insert(T_APPROVALS).returning(T_APPROVALS.c.id, sort_by_parameter_order=True)
_HISTORY = (
    select(T_APPROVALS)
    .where(T_APPROVALS.c.skill_id == bindparam("skill_id"))
    .order_by(T_APPROVALS.c.id)
)
_APPROVAL_LIST = TypeAdapter(list[ApprovalRecord])
_INSERT_EVENTS = insert(T_EVENTS).returning(T_EVENTS.c.id, sort_by_parameter_order=True)
_INSERT_MCP_AUDIT = insert(T_MCP_AUDIT)
MCP_AUDIT_REASON_MAX = 2000
_TASK_EXISTS = select(T_TASKS.c.id).where(T_TASKS.c.id == bindparam("task_id"))


def utcnow() -> datetime:
    """Naive UTC, as the seed's ``DATETIME DEFAULT CURRENT_TIMESTAMP`` columns hold."""
    return datetime.now(UTC).replace(tzinfo=None)


_new = object.__new__


def agent_record(row: Mapping[Any, Any]) -> AgentRecord:
    """An ``agents`` row (column name -> value) as its record.

    Made without the dataclass's ``__init__``: a frozen dataclass sets each field
    through ``object.__setattr__``, which made building the record cost 2.5 times
    filling its ``__dict__`` (profiled: ~2.5 us against ~1 us), and the portal's
    status read makes one per agent on every request. The values are the
    columns' own, already typed; equality, hashing and ``replace`` work as usual.
    """
    record = _new(AgentRecord)
    record.__dict__.update(
        task_id=row["task_id"],
        agent_id=row["id"],
        role=row["role"],
        loop=row["loop"] or 0,
        iteration=row["iteration"] or 0,
        profile=row["profile"],
        provider=row["provider"],
        model=row["model"],
        status=row["status"],
        pid=row["pid"],
        confidence=row["confidence"],
        reason=row["reason"],
        heartbeat=row["heartbeat"],
    )
    return record


def decision_record(row: Mapping[Any, Any]) -> DecisionRecord:
    """A ``decisions`` row (column name -> value) as its record (made as agent_record's)."""
    record = _new(DecisionRecord)
    record.__dict__.update(
        task_id=row["task_id"],
        iteration=row["iteration"],
        decision=row["decision"],
        decided_by=row["decided_by"],
        reason=row["reason"],
        id=row["id"],
        created_at=row["created_at"],
    )
    return record


def _first_line(exc: DBAPIError) -> str:
    text = str(exc.orig).strip().splitlines()
    return text[0] if text else type(exc.orig).__name__


def _choice(value: object, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidInputError(f"unknown {what} {value!r}: use one of {', '.join(allowed)}")
    return value


def _clip(value: object, limit: int) -> str | None:
    """Audit text as recorded: printable, at most ``limit`` characters (never refused)."""
    if value is None:
        return None
    text = "".join(c if c.isprintable() else "?" for c in str(value)[:limit])
    return text or None


def _mcp_audit_row(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One audit entry (the JSON line's keys) as a row; a bad entry raises InvalidInputError.

    Identity and names come from a verified token or from the server itself, but
    a refused call's tool name is whatever the client sent: it is clipped, not refused.
    """
    outcome = _choice(entry.get("outcome"), MCP_OUTCOMES, "MCP call outcome")
    try:
        duration = float(entry.get("duration_ms") or 0.0)
        ts = entry.get("ts")
        created = (
            datetime.fromtimestamp(float(ts), UTC).replace(tzinfo=None)
            if ts is not None
            else utcnow()
        )
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise InvalidInputError(f"bad MCP audit entry: {exc}") from None
    if not duration >= 0:
        raise InvalidInputError(f"MCP call duration {duration!r} must be a number >= 0")
    return {
        "created_at": created,
        "via": _clip(entry.get("via"), 16) or "direct",
        "agent_id": _clip(entry.get("agent_id"), 128),
        "task_id": _clip(entry.get("task_id"), 128),
        "server": _clip(entry.get("server"), 64) or "?",
        "tool": _clip(entry.get("tool"), 255) or "?",
        "outcome": outcome,
        "duration_ms": duration,
        "reason": _clip(entry.get("reason"), MCP_AUDIT_REASON_MAX),
    }


def _payload(value: Mapping[str, Any] | str) -> str:
    if isinstance(value, str):
        return check.metadata_json(value) or "null"
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"event payload is not JSON-serialisable: {exc}") from None


class Store:
    """SQL persistence (layer 2) on one engine; see the module docstring."""

    def __init__(self, engine: Engine, label: str | None = None) -> None:
        self.engine = engine
        self.label = label or describe(engine.url)

    # --- life cycle ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        *,
        url: URL | str | None = None,
        auto_migrate: bool | None = None,
    ) -> Store:
        """The store for ``settings`` (DATABASE_URL / DB_PATH / ``.cfn/cfn.db``).

        The schema is brought up to date first unless CFN_DB_AUTO_MIGRATE is off.
        """
        settings = settings or get_settings()
        if isinstance(url, str):
            settings = settings.model_copy(update={"database_url": url})
            url = None
        resolved = url or database_url(settings)
        store = cls(make_engine(settings, resolved), describe(resolved))
        if settings.cfn_db_auto_migrate if auto_migrate is None else auto_migrate:
            try:
                with store._translate():
                    migrate.ensure_schema(store.engine)
            except BaseException:
                store.close()
                raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- transactions --------------------------------------------------------------

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Driver errors become one DatabaseError naming the database."""
        try:
            yield
        except IntegrityError as exc:
            raise DatabaseError(
                f"the database refused the write ({_first_line(exc)}); nothing was written"
            ) from exc
        except OperationalError as exc:
            raise DatabaseError(
                f"database {self.label} is not usable: {_first_line(exc)}. Check DATABASE_URL "
                "/ DB_PATH, that the server runs, and `cfn db current`."
            ) from exc
        except DBAPIError as exc:
            raise DatabaseError(f"database error on {self.label}: {_first_line(exc)}") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction."""
        with self._translate(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction: all of it commits, or none of it.

        Starting the transaction is retried while the database is busy or
        unreachable (see the module docstring). A connection lost later rolls
        the transaction back and raises WriteInterruptedError.
        """
        with self._translate():
            conn = self._begin_write()
            try:
                trans = conn.get_transaction()
                assert trans is not None
                try:
                    yield conn
                except BaseException as exc:
                    with suppress(DBAPIError):
                        trans.rollback()
                    if isinstance(exc, DBAPIError) and transient(exc):
                        raise WriteInterruptedError(
                            f"database {self.label}: the write broke off "
                            f"({_first_line(exc)}); it was rolled back, nothing of it was "
                            "written",
                            outcome_unknown=False,
                        ) from exc
                    raise
                try:
                    trans.commit()
                except DBAPIError as exc:
                    if not transient(exc):
                        raise
                    raise WriteInterruptedError(
                        f"database {self.label}: the connection was lost at COMMIT "
                        f"({_first_line(exc)}); the write may or may not have been saved",
                        outcome_unknown=True,
                    ) from exc
            finally:
                with suppress(DBAPIError):
                    conn.close()

    def _begin_write(self) -> Connection:
        """Connect and BEGIN (IMMEDIATE on SQLite), retrying a busy or unreachable database."""
        delay = WRITE_BACKOFF
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            conn: Connection | None = None
            try:
                conn = self.engine.connect().execution_options(**{WRITE_OPTION: True})
                conn.begin()
                return conn
            except DBAPIError as exc:
                if conn is not None:
                    with suppress(DBAPIError):
                        conn.close()
                if not transient(exc):
                    raise
                if attempt == WRITE_ATTEMPTS:
                    raise DatabaseError(
                        f"database {self.label} stayed unavailable for writing "
                        f"({_first_line(exc)}) through {WRITE_ATTEMPTS} attempts; nothing "
                        "was written. Another process may hold the database's write lock "
                        "(CFN_DB_BUSY_TIMEOUT), or the server is down."
                    ) from exc
                log.warning(
                    "database %s unavailable for writing (%s); attempt %d of %d in %.2f s",
                    self.label,
                    _first_line(exc),
                    attempt + 1,
                    WRITE_ATTEMPTS,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, WRITE_BACKOFF_MAX)
        raise AssertionError("unreachable")  # pragma: no cover

    def transaction(self, work: Callable[[Connection], R], *, idempotent: bool = False) -> R:
        """``work(conn)`` in one write transaction, run again if the connection broke.

        A transaction that broke off before its COMMIT was rolled back by the
        server, so running ``work`` again is safe. One that broke at COMMIT may
        have been saved: it is run again only when ``idempotent`` (running it
        twice leaves what running it once does); otherwise the error is raised.
        """
        delay = WRITE_BACKOFF
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with self.write() as conn:
                    return work(conn)
            except WriteInterruptedError as exc:
                if (exc.outcome_unknown and not idempotent) or attempt == WRITE_ATTEMPTS:
                    raise
                log.warning("%s; running the transaction again (attempt %d)", exc, attempt + 1)
                time.sleep(delay)
                delay = min(delay * 2, WRITE_BACKOFF_MAX)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- skills ----------------------------------------------------------------------

    @staticmethod
    def _skill(row: Row[Any]) -> SkillRecord:
        return SkillRecord.model_validate(dict(row._mapping))

    def _find_skill(self, conn: Connection, name: str) -> SkillRecord | None:
        row = conn.execute(_SKILL_BY_NAME, {"name": name}).first()
        return None if row is None else self._skill(row)

    def upsert_skill(
        self, name: str, content_hash: str, content_path: str
    ) -> tuple[SkillRecord, SkillChange]:
        """Add a skill, or update its hash and path when its content changed."""
        name = check.skill_name(name)
        if len(content_hash) != 64 or any(c not in "0123456789abcdef" for c in content_hash):
            raise InvalidInputError(f"content hash {content_hash!r} is not a sha256 hex digest")
        content_path = check.text_field(content_path, "content path", 512)

        def work(conn: Connection) -> tuple[SkillRecord, SkillChange]:
            existing = self._find_skill(conn, name)
            now = utcnow()
            if existing is None:
                conn.execute(
                    insert(T_SKILLS).values(
                        name=name,
                        content_hash=content_hash,
                        content_path=content_path,
                        created_at=now,
                        updated_at=now,
                    )
                )
                change = SkillChange.ADDED
            elif (existing.content_hash, existing.content_path) != (content_hash, content_path):
                conn.execute(
                    update(T_SKILLS)
                    .where(T_SKILLS.c.id == existing.id)
                    .values(content_hash=content_hash, content_path=content_path, updated_at=now)
                )
                change = SkillChange.UPDATED
            else:
                return existing, SkillChange.UNCHANGED
            record = self._find_skill(conn, name)
            assert record is not None
            return record, change

        return self.transaction(work, idempotent=True)

    def find_skill(self, name: str) -> SkillRecord | None:
        with self.read() as conn:
            return self._find_skill(conn, check.skill_name(name))

    def get_skill(self, name: str) -> SkillRecord:
        record = self.find_skill(name)
        if record is None:
            raise NotFoundError(f"no skill named {name!r}; `cfn skills list` shows the known ones")
        return record

    def list_skills(self) -> list[SkillRecord]:
        with self.read() as conn:
            rows = conn.execute(select(T_SKILLS).order_by(T_SKILLS.c.name)).all()
        return [self._skill(row) for row in rows]

    # --- approval history -----------------------------------------------------------

    def add_approval(
        self,
        skill_name: str,
        agent_id: str,
        decision: str,
        confidence: float,
        metadata: str | None = None,
    ) -> ApprovalRecord:
        """Write one approval_history row (the seed's approval of a skill)."""
        return self.add_approvals(
            [
                ApprovalInput(
                    skill_name=skill_name,
                    agent_id=agent_id,
                    decision=decision,
                    confidence=confidence,
                    metadata=metadata,
                )
            ]
        )[0]

    def add_approvals(self, items: Sequence[ApprovalInput]) -> list[ApprovalRecord]:
        """Write several approvals in one transaction: all of them, or none."""
        clean = [
            (
                check.skill_name(item.skill_name),
                check.approver_id(item.agent_id),
                check.decision(item.decision),
                check.confidence(item.confidence),
                check.metadata_json(item.metadata),
            )
            for item in items
        ]
        out: list[ApprovalRecord] = []
        ids: dict[str, int] = {}
        now = utcnow()

        def work(conn: Connection) -> list[int]:
            for name, *_ in clean:
                if name not in ids:
                    skill = self._find_skill(conn, name)
                    if skill is None:
                        raise NotFoundError(
                            f"no skill named {name!r}; add it first with `cfn skills add PATH`"
                        )
                    ids[name] = skill.id
            params = [
                {
                    "skill_id": ids[name],
                    "agent_id": agent_id,
                    "decision": decision,
                    "confidence": confidence,
                    "metadata": metadata,
                    "created_at": now,
                }
                for name, agent_id, decision, confidence, metadata in clean
            ]
            return list(conn.execute(_INSERT_APPROVALS, params).scalars()) if params else []

        new_ids = self.transaction(work)
        for row_id, (name, agent_id, decision, confidence, metadata) in zip(
            new_ids, clean, strict=True
        ):
            out.append(
                ApprovalRecord(
                    id=row_id,
                    skill_id=ids[name],
                    skill_name=name,
                    agent_id=agent_id,
                    decision=decision,
                    confidence=confidence,
                    metadata=metadata,
                    created_at=now,
                )
            )
        return out

    def history(self, skill_name: str) -> list[ApprovalRecord]:
        """A skill's approvals, oldest first; NotFoundError for an unknown skill."""
        name = check.skill_name(skill_name)
        with self.read() as conn:
            skill = self._find_skill(conn, name)
            if skill is None:
                raise NotFoundError(
                    f"no skill named {name!r}; `cfn skills list` shows the known ones"
                )
            rows = conn.execute(_HISTORY, {"skill_id": skill.id}).mappings().all()
        # One validation call for the whole list (pydantic-core), not one per row.
        return _APPROVAL_LIST.validate_python([{**row, "skill_name": skill.name} for row in rows])

    # --- the loop's tables: tasks, iterations, agents, decisions ---------------------
    #
    # Written by the loop's journal (cfn.loop.journal), one transaction per step of
    # the loop; read by the loop on resume, by the portal and by health. Values are
    # checked only where the schema would refuse them anyway (ids, statuses,
    # confidence), so a bad one is an InvalidInputError that names it.

    def create_task(
        self,
        task_id: str,
        mode: str,
        epic: str,
        *,
        options: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        """A task and its first iteration, in one transaction.

        ``options`` and ``checkpoint`` are the loop's own JSON (what ``cfn resume``
        reads back); the store keeps them as text.
        """
        task_id = keys.validate_id(task_id, "task id")
        mode = _choice(mode, MODES, "mode")
        if not isinstance(epic, str) or not epic.strip():
            raise InvalidInputError("epic must be a non-empty text")
        now = utcnow()

        def work(conn: Connection) -> None:
            if conn.execute(_TASK_EXISTS, {"task_id": task_id}).first():
                raise InvalidInputError(
                    f"task {task_id!r} exists already; `cfn resume {task_id}` continues it"
                )
            conn.execute(
                insert(T_TASKS).values(
                    id=task_id,
                    mode=mode,
                    epic=epic,
                    status="pending",
                    created_at=now,
                    updated_at=now,
                    options=options,
                    checkpoint=checkpoint,
                )
            )
            conn.execute(insert(T_ITERATIONS).values(task_id=task_id, number=1, started_at=now))

        self.transaction(work)

    def save_checkpoint(
        self,
        task_id: str,
        checkpoint: str,
        status: str,
        *,
        iteration: int,
        gate_mean: float | None = None,
        consensus_mean: float | None = None,
        ended: tuple[int, float | None, float | None] | None = None,
    ) -> None:
        """The task's checkpoint and status, and its iteration rows, in one transaction.

        The iteration row is made when the checkpoint first names its number; a
        gate or consensus mean given is written on it (None leaves the column as is).
        ``ended`` is the iteration the loop just left (number, gate mean, consensus
        mean): its figures land on its row and it gets its ``finished_at``, so a
        failed gate or consensus keeps its score. A finished task finishes its
        current iteration too. Saving the same checkpoint again changes nothing.
        """
        task_id = keys.validate_id(task_id, "task id")
        status = _choice(status, TASK_STATUSES, "task status")
        if iteration < 1:
            raise InvalidInputError(f"iteration number {iteration} must be >= 1")
        scores = {
            name: value
            for name, value in (("gate_mean", gate_mean), ("consensus_mean", consensus_mean))
            if value is not None
        }
        now = utcnow()

        def work(conn: Connection) -> None:
            result = conn.execute(
                update(T_TASKS)
                .where(T_TASKS.c.id == task_id)
                .values(checkpoint=checkpoint, status=status, updated_at=now)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no task {task_id!r}")
            where = (T_ITERATIONS.c.task_id == task_id, T_ITERATIONS.c.number == iteration)
            if conn.execute(select(T_ITERATIONS.c.number).where(*where)).first() is None:
                conn.execute(
                    insert(T_ITERATIONS).values(task_id=task_id, number=iteration, started_at=now)
                )
            if scores:
                conn.execute(update(T_ITERATIONS).where(*where).values(**scores))
            done: list[tuple[int, dict[str, float]]] = []
            if ended is not None:
                number, gate, consensus = ended
                figures = {
                    name: value
                    for name, value in (("gate_mean", gate), ("consensus_mean", consensus))
                    if value is not None
                }
                done.append((number, figures))
            if status in FINISHED_TASK_STATUSES:
                done.append((iteration, {}))
            for number, figures in done:
                row = (T_ITERATIONS.c.task_id == task_id, T_ITERATIONS.c.number == number)
                if figures:
                    conn.execute(update(T_ITERATIONS).where(*row).values(**figures))
                conn.execute(
                    update(T_ITERATIONS)
                    .where(*row, T_ITERATIONS.c.finished_at.is_(None))
                    .values(finished_at=now)
                )

        self.transaction(work, idempotent=True)

    def get_task(self, task_id: str) -> TaskRecord:
        with self.read() as conn:
            row = conn.execute(
                select(T_TASKS).where(T_TASKS.c.id == keys.validate_id(task_id, "task id"))
            ).first()
        if row is None:
            raise NotFoundError(f"no task {task_id!r}")
        return TaskRecord.model_validate(dict(row._mapping))

    def list_tasks(self, status: str | None = None, limit: int = 100) -> list[TaskRecord]:
        query = select(T_TASKS).order_by(T_TASKS.c.created_at.desc()).limit(max(1, limit))
        if status is not None:
            query = query.where(T_TASKS.c.status == _choice(status, TASK_STATUSES, "status"))
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [TaskRecord.model_validate(dict(row._mapping)) for row in rows]

    def save_agent(self, agent: AgentRecord) -> None:
        """Write an agent's row as it is now (made on first save, updated after)."""
        task_id = keys.validate_id(agent.task_id, "task id")
        agent_id = keys.validate_id(agent.agent_id, "agent id")
        values = {
            "role": agent.role,
            "profile": agent.profile,
            "provider": agent.provider,
            "model": agent.model,
            "status": _choice(agent.status, AGENT_STATUSES, "agent status"),
            "confidence": None if agent.confidence is None else check.confidence(agent.confidence),
            "loop": agent.loop,
            "iteration": agent.iteration,
            "pid": agent.pid,
            "reason": agent.reason,
        }

        def work(conn: Connection) -> None:
            result = conn.execute(
                update(T_AGENTS)
                .where(T_AGENTS.c.task_id == task_id, T_AGENTS.c.id == agent_id)
                .values(**values)
            )
            if result.rowcount == 0:
                conn.execute(
                    insert(T_AGENTS).values(
                        task_id=task_id, id=agent_id, created_at=utcnow(), **values
                    )
                )

        self.transaction(work, idempotent=True)

    def list_agents(
        self,
        task_id: str | None = None,
        *,
        agent_id: str | None = None,
        status: str | None = None,
    ) -> list[AgentRecord]:
        """Agents of a task (in the order they joined), or of every task, filtered.

        ``agent_id`` finds an id across tasks (ids repeat); ``status`` e.g. the
        agents marked running.
        """
        query = select(T_AGENTS).order_by(T_AGENTS.c.task_id, T_AGENTS.c.created_at, T_AGENTS.c.id)
        if task_id is not None:
            query = query.where(T_AGENTS.c.task_id == keys.validate_id(task_id, "task id"))
        if agent_id is not None:
            query = query.where(T_AGENTS.c.id == keys.validate_id(agent_id, "agent id"))
        if status is not None:
            query = query.where(T_AGENTS.c.status == _choice(status, AGENT_STATUSES, "status"))
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [agent_record(row._mapping) for row in rows]

    def iterations(self, task_id: str) -> list[IterationRecord]:
        with self.read() as conn:
            rows = conn.execute(
                select(T_ITERATIONS)
                .where(T_ITERATIONS.c.task_id == keys.validate_id(task_id, "task id"))
                .order_by(T_ITERATIONS.c.number)
            ).all()
        return [IterationRecord.model_validate(dict(row._mapping)) for row in rows]

    def record_decision(self, decision: DecisionRecord) -> DecisionRecord:
        """Record an iteration's decision, or return the one recorded already.

        The decision of a task iteration is unique in the database (revision
        0003), so a resumed orchestrator that races its own earlier write gets
        the recorded decision back instead of a second row.
        """
        if decision.iteration < 1:
            raise InvalidInputError(f"iteration number {decision.iteration} must be >= 1")
        record = replace(
            decision,
            task_id=keys.validate_id(decision.task_id, "task id"),
            decision=_choice(decision.decision, LOOP_DECISIONS, "decision"),
            decided_by=decision.decided_by[:255],
            id=None,
            created_at=utcnow(),
        )
        values = {
            "task_id": record.task_id,
            "iteration": record.iteration,
            "decision": record.decision,
            "decided_by": record.decided_by,
            "reason": record.reason,
            "created_at": record.created_at,
        }
        try:
            row = self.transaction(
                lambda conn: conn.execute(
                    insert(T_DECISIONS).values(**values).returning(T_DECISIONS.c.id)
                ).one()
            )
        except DatabaseError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            existing = self.decision(record.task_id, record.iteration)
            if existing is None:
                raise
            return existing
        return replace(record, id=int(row.id))

    def decision(self, task_id: str, iteration: int) -> DecisionRecord | None:
        """The decision recorded for one iteration, if any."""
        with self.read() as conn:
            row = conn.execute(
                select(T_DECISIONS).where(
                    T_DECISIONS.c.task_id == keys.validate_id(task_id, "task id"),
                    T_DECISIONS.c.iteration == iteration,
                )
            ).first()
        return None if row is None else decision_record(row._mapping)

    def decisions(self, task_id: str) -> list[DecisionRecord]:
        with self.read() as conn:
            rows = conn.execute(
                select(T_DECISIONS)
                .where(T_DECISIONS.c.task_id == keys.validate_id(task_id, "task id"))
                .order_by(T_DECISIONS.c.id)
            ).all()
        return [decision_record(row._mapping) for row in rows]

    # --- the event log (append-only) -----------------------------------------------

    def append_event(
        self, kind: str, payload: Mapping[str, Any] | str, task_id: str | None = None
    ) -> int:
        return self.append_events([(kind, payload, task_id)])[0]

    def append_events(
        self, events: Iterable[tuple[str, Mapping[str, Any] | str, str | None]]
    ) -> list[int]:
        """Append events in one transaction; an error in any of them appends none."""
        # Consumed before the transaction, so a retried transaction writes the same
        # events; an error from the caller's iterable half-way through writes none.
        params = [
            {
                "task_id": None if task_id is None else keys.validate_id(task_id, "task id"),
                "kind": check.text_field(kind, "event kind", 64),
                "payload": _payload(payload),
                "created_at": utcnow(),
            }
            for kind, payload, task_id in events
        ]
        if not params:
            return []
        return self.transaction(
            lambda conn: [int(i) for i in conn.execute(_INSERT_EVENTS, params).scalars()]
        )

    def events(
        self, task_id: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """Events in append order, after ``after_id`` (for tailing the log)."""
        query = (
            select(T_EVENTS)
            .where(T_EVENTS.c.id > after_id)
            .order_by(T_EVENTS.c.id)
            .limit(max(1, limit))
        )
        if task_id is not None:
            query = query.where(T_EVENTS.c.task_id == keys.validate_id(task_id, "task id"))
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [EventRecord.model_validate(dict(row._mapping)) for row in rows]

    # --- LLM usage ------------------------------------------------------------------

    def record_llm_call(
        self,
        *,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
        task_id: str | None = None,
        agent_id: str | None = None,
        latency_ms: float | None = None,
        status: str | None = None,
        via: str | None = None,
    ) -> LlmCallRecord:
        """One LLM request's token usage and cost (written by the provider code)."""
        if input_tokens < 0 or output_tokens < 0:
            raise InvalidInputError("token counts must be >= 0")
        if not cost_usd >= 0:
            raise InvalidInputError(f"cost {cost_usd!r} must be a number >= 0")
        if latency_ms is not None and not latency_ms >= 0:
            raise InvalidInputError(f"latency {latency_ms!r} must be a number >= 0")
        values = {
            "task_id": None if task_id is None else keys.validate_id(task_id, "task id"),
            "agent_id": None if agent_id is None else keys.validate_id(agent_id, "agent id"),
            "provider": check.text_field(provider, "provider", 64),
            "model": check.text_field(model, "model", 255),
            "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens),
            "cost_usd": float(cost_usd),
            "created_at": utcnow(),
            "latency_ms": None if latency_ms is None else float(latency_ms),
            "status": None if status is None else check.text_field(status, "status", 32),
            "via": None if via is None else check.text_field(via, "via", 16),
        }
        row = self.transaction(
            lambda conn: conn.execute(
                insert(T_LLM_CALLS).values(**values).returning(T_LLM_CALLS.c.id)
            ).one()
        )
        return LlmCallRecord.model_validate({**values, "id": row.id})

    def llm_usage(self, task_id: str | None = None) -> UsageSummary:
        query = select(
            func.count(),
            func.coalesce(func.sum(T_LLM_CALLS.c.input_tokens), 0),
            func.coalesce(func.sum(T_LLM_CALLS.c.output_tokens), 0),
            func.coalesce(func.sum(T_LLM_CALLS.c.cost_usd), 0.0),
        )
        if task_id is not None:
            query = query.where(T_LLM_CALLS.c.task_id == keys.validate_id(task_id, "task id"))
        with self.read() as conn:
            calls, tokens_in, tokens_out, cost = conn.execute(query).one()
        return UsageSummary(
            calls=int(calls),
            input_tokens=int(tokens_in),
            output_tokens=int(tokens_out),
            cost_usd=float(cost),
        )

    def llm_calls(
        self, task_id: str, agent_id: str | None = None, limit: int = 1000
    ) -> list[LlmCallRecord]:
        """A task's LLM calls (optionally one agent's), oldest first."""
        query = (
            select(T_LLM_CALLS)
            .where(T_LLM_CALLS.c.task_id == keys.validate_id(task_id, "task id"))
            .order_by(T_LLM_CALLS.c.id)
            .limit(max(1, limit))
        )
        if agent_id is not None:
            query = query.where(T_LLM_CALLS.c.agent_id == keys.validate_id(agent_id, "agent id"))
        with self.read() as conn:
            rows = conn.execute(query).mappings().all()
        return [LlmCallRecord.model_validate(dict(row)) for row in rows]

    # --- the MCP audit trail ------------------------------------------------------

    def append_mcp_audit(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Append a batch of MCP call records in one transaction; returns how many.

        Entries have the keys of cfn.mcp.audit's JSON lines (``ts``, ``via``,
        ``agent_id``, ``task_id``, ``server``, ``tool``, ``outcome``,
        ``duration_ms``, ``reason``). A bad entry anywhere appends none.
        """
        rows = [_mcp_audit_row(entry) for entry in entries]
        if rows:
            self.transaction(lambda conn: conn.execute(_INSERT_MCP_AUDIT, rows))
        return len(rows)

    def mcp_audit(
        self,
        *,
        agent_id: str | None = None,
        task_id: str | None = None,
        server: str | None = None,
        outcome: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[McpAuditRecord]:
        """Audited MCP calls in append order after ``after_id``, optionally filtered."""
        query = (
            select(T_MCP_AUDIT)
            .where(T_MCP_AUDIT.c.id > after_id)
            .order_by(T_MCP_AUDIT.c.id)
            .limit(max(1, limit))
        )
        if agent_id is not None:
            query = query.where(T_MCP_AUDIT.c.agent_id == agent_id)
        if task_id is not None:
            query = query.where(T_MCP_AUDIT.c.task_id == task_id)
        if server is not None:
            query = query.where(T_MCP_AUDIT.c.server == server)
        if outcome is not None:
            query = query.where(
                T_MCP_AUDIT.c.outcome == _choice(outcome, MCP_OUTCOMES, "MCP call outcome")
            )
        with self.read() as conn:
            rows = conn.execute(query).all()
        return [McpAuditRecord.model_validate(dict(row._mapping)) for row in rows]

    # --- introspection --------------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        """Rows per table (for `cfn db current` and the tests)."""
        counts: dict[str, int] = {}
        with self.read() as conn:
            for table in Base.metadata.sorted_tables:
                counts[table.name] = int(
                    conn.execute(select(func.count()).select_from(table)).scalar_one()
                )
        return counts


@lru_cache(maxsize=1)
def default_store() -> Store:
    """The process-wide store from the environment's settings (opened on first use)."""
    return Store.open(get_settings())


def record_llm_call(
    *,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float,
    task_id: str | None = None,
    agent_id: str | None = None,
    latency_ms: float | None = None,
    status: str | None = None,
    via: str | None = None,
    store: Store | None = None,
) -> LlmCallRecord:
    """Record one LLM call's usage; the provider code's single entry point into SQL."""
    return (store or default_store()).record_llm_call(
        provider=provider,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd,
        task_id=task_id,
        agent_id=agent_id,
        latency_ms=latency_ms,
        status=status,
        via=via,
    )
