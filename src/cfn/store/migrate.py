"""Schema migrations with Alembic, driven from code (no ``alembic.ini``).

The seed keeps each migration's rollback SQL in a ``migrations`` table and
replays it by hand. Alembic's revisions replace that: every revision under
``migrations/versions`` has an ``upgrade()`` and a working ``downgrade()``,
and the ``alembic_version`` table records where a database stands.

Every run happens in one transaction that first takes a migration lock
(``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL), so two processes opening a fresh database at once do not both
create the tables; the second one waits, then finds nothing to do. Both
engines have transactional DDL, so a migration that fails half-way leaves
the schema where it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, String, column, inspect, select, table, text

from cfn.errors import DatabaseError, InvalidInputError
from cfn.store.engine import WRITE_OPTION

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
#: The newest revision (tests check it against the scripts); lets the common
#: "schema is current" check skip importing Alembic at all.
HEAD = "0005"
#: Arbitrary constant naming cfn's migration lock among PostgreSQL advisory locks.
PG_LOCK_KEY = 0x0CF5_0003
VERSION_TABLE = "alembic_version"


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision shipped with this cfn."""
    heads = script().get_heads()
    if len(heads) != 1:  # pragma: no cover - a packaging mistake, caught by the tests
        raise RuntimeError(f"migrations have {len(heads)} heads: {heads}")
    return heads[0]


def revisions() -> list[str]:
    """All revisions, oldest first."""
    return [rev.revision for rev in reversed(list(script().walk_revisions()))]


def _current_on(connection: Connection) -> str | None:
    """The revision in ``alembic_version``; None when the table is missing or empty."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    query = select(column("version_num", String)).select_from(table(VERSION_TABLE))
    versions: list[str] = [str(row[0]) for row in connection.execute(query)]
    if len(versions) > 1:
        raise DatabaseError(f"{VERSION_TABLE} holds several revisions {versions}; fix by hand")
    return versions[0] if versions else None


def current(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    with engine.connect() as connection:
        return _current_on(connection)


def _locked(engine: Engine) -> Connection:
    connection = engine.connect().execution_options(**{WRITE_OPTION: True})
    if connection.dialect.name == "sqlite":
        # SQLite's table-rebuild procedure (what Alembic's batch mode does for most
        # ALTERs): foreign keys off *outside* the transaction (the pragma is a no-op
        # inside one), or the DROP of a rebuilt parent table runs an implicit DELETE
        # whose ON DELETE CASCADE empties its child tables. Checked before commit
        # by ``_check_foreign_keys``; switched back on in ``_release``.
        _sqlite_raw(connection, "PRAGMA foreign_keys=OFF")
    connection.begin()
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    return connection


def _sqlite_raw(connection: Connection, statement: str) -> None:
    """Run a constant PRAGMA on the driver connection, outside any transaction."""
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    dbapi.cursor().execute(statement)


def _check_foreign_keys(connection: Connection) -> None:
    if connection.dialect.name != "sqlite":
        return  # PostgreSQL checks constraints during the migration itself
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise DatabaseError(
            f"migration left {len(broken)} row(s) breaking foreign keys "
            f"(first: table {broken[0][0]}, rowid {broken[0][1]}); rolled back"
        )


def _release(connection: Connection) -> None:
    try:
        if connection.in_transaction():
            connection.rollback()
        if connection.dialect.name == "sqlite":
            _sqlite_raw(connection, "PRAGMA foreign_keys=ON")
    finally:
        connection.close()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to ``revision``; returns (before, after)."""
    return _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "-1") -> tuple[str | None, str | None]:
    """Downgrade to ``revision`` (default: undo the newest applied one); (before, after)."""
    return _run(engine, "downgrade", revision)


def _run(engine: Engine, direction: str, revision: str) -> tuple[str | None, str | None]:
    connection = _locked(engine)
    try:
        before = _current_on(connection)
        if direction == "downgrade" and before is None:
            raise InvalidInputError("the database has no schema yet: nothing to downgrade")
        from alembic import command
        from alembic.util.exc import CommandError

        config = _config(connection)
        try:
            if direction == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
        except CommandError as exc:
            raise InvalidInputError(
                f"cannot {direction} to {revision!r}: {exc}. "
                f"Known revisions: {', '.join(revisions())}, or 'head' / 'base' / '-1'."
            ) from None
        after = _current_on(connection)
        _check_foreign_keys(connection)
        connection.commit()
        return before, after
    finally:
        _release(connection)


def ensure_schema(engine: Engine) -> bool:
    """Bring the schema up to date if it is behind; True when it upgraded.

    The unlocked check first keeps the common case (already current) to one
    cheap read; the locked upgrade re-checks under the lock.
    """
    now = current(engine)
    if now == HEAD:
        return False
    if now is not None and now not in revisions():
        raise DatabaseError(
            f"the database is at schema revision {now!r}, which this cfn does not know "
            "(a newer cfn migrated it): upgrade cfn, or `cfn db downgrade` with the newer one"
        )
    before, after = upgrade(engine, "head")
    return before != after
