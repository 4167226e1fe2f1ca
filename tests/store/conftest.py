"""Every store test runs on SQLite and on a real PostgreSQL (one server per run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.settings import Settings
from cfn.store.repository import Store
from tests.support.postgres import PostgresServer

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty database on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'cfn.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = server.database()
    try:
        yield url
    finally:
        server.drop(url)


@pytest.fixture
def db_settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(cfn_state_dir=tmp_path / ".cfn", database_url=db_url)


@pytest.fixture
def store(db_settings: Settings) -> Iterator[Store]:
    with Store.open(db_settings) as opened:
        yield opened
