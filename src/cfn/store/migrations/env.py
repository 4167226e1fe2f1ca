"""Alembic environment: migrations always run on a connection cfn hands over.

cfn never runs Alembic from an ``alembic.ini``; :mod:`cfn.store.migrate` builds
the config in code and passes its open connection (already inside the
transaction that holds the migration lock) as ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cfn.store.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("cfn migrations run through cfn.store.migrate (`cfn db upgrade`)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
