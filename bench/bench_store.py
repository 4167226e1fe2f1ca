"""The persistent layer against its raw drivers, on SQLite and PostgreSQL.

Compared in the same run, on the same database server / file system:

* **approval inserts/s, one transaction each**: ``Store.add_approval`` (checks
  the input, looks the skill up by name, INSERT ... RETURNING, commit) against
  one parameterised ``INSERT`` + commit through ``sqlite3`` / ``psycopg``.
* **approval inserts/s, batched**: ``Store.add_approvals`` of ``--batch`` rows in
  one transaction against ``executemany`` in one transaction.
* **history reads/s**: one skill's approval history (``--history`` rows) through
  the raw driver (a join by name), through ``Store.history`` (uncached), and
  through ``CachedStore.history`` answering from the Redis query cache (hits).

SQLite gets the same pragmas in both (WAL, synchronous=NORMAL, foreign keys).
PostgreSQL and Redis are our own servers on free ports (tests/support): the
PostgreSQL runs with fsync off, as the test fixture does, so commit figures are
CPU and protocol cost, not disk flushes. Rounds alternate between raw and cfn,
and the best round of each is reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table
from tests.support.postgres import PostgresServer
from tests.support.servers import RedisServer

from cfn.coordination.connection import RedisManager
from cfn.settings import Settings
from cfn.store.cache import CachedStore, QueryCache
from cfn.store.records import ApprovalInput
from cfn.store.repository import Store

SKILL = "bench-skill"
METADATA = '{"bench":true}'


INSERT_SQL = (
    "INSERT INTO approval_history (skill_id, agent_id, decision, confidence, metadata) "
    "VALUES (?, ?, ?, ?, ?)"
)
HISTORY_SQL = (
    "SELECT a.id, a.skill_id, a.agent_id, a.decision, a.confidence, a.metadata, a.created_at "
    "FROM approval_history a JOIN skills s ON s.id = a.skill_id WHERE s.name = ? ORDER BY a.id"
)


@dataclass
class Result:
    engine: str
    what: str
    raw: float
    cfn: float
    unit: str = "ops/s"

    @property
    def ratio(self) -> float:
        return self.cfn / self.raw


def best_rate(rounds: int, n: int, fn: Callable[[], None]) -> float:
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - start))
    return best


class Raw:
    """The baseline: the bare driver, parameterised statements, no cfn code."""

    def __init__(self, engine: str, target: str) -> None:
        self.engine = engine
        if engine == "sqlite":
            self.conn: Any = sqlite3.connect(target, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        else:
            self.conn = psycopg.connect(target, autocommit=True)
        # Constant SQL with placeholders; psycopg spells them %s instead of ?.
        style = (lambda sql: sql) if engine == "sqlite" else (lambda sql: sql.replace("?", "%s"))
        self.skill_sql = style("SELECT id FROM skills WHERE name = ?")
        self.insert_sql = style(INSERT_SQL)
        self.history_sql = style(HISTORY_SQL)
        self.skill_id = self.one(self.skill_sql, (SKILL,))[0]

    def one(self, sql: str, params: tuple[Any, ...]) -> Any:
        cur = self.conn.execute(sql, params)
        return cur.fetchone()

    def row(self, i: int) -> tuple[Any, ...]:
        return (self.skill_id, f"raw-{i}", "APPROVE", 0.5, METADATA)

    def insert_each(self, n: int) -> None:
        for i in range(n):
            if self.engine == "sqlite":
                self.conn.execute("BEGIN")
                self.conn.execute(self.insert_sql, self.row(i))
                self.conn.execute("COMMIT")
            else:
                with self.conn.transaction():
                    self.conn.execute(self.insert_sql, self.row(i))

    def insert_batch(self, n: int) -> None:
        rows = [self.row(i) for i in range(n)]
        if self.engine == "sqlite":
            self.conn.execute("BEGIN")
            self.conn.executemany(self.insert_sql, rows)
            self.conn.execute("COMMIT")
        else:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.executemany(self.insert_sql, rows)

    def history(self, name: str) -> list[Any]:
        rows: list[Any] = self.conn.execute(self.history_sql, (name,)).fetchall()
        return rows

    def close(self) -> None:
        self.conn.close()


def bench_engine(
    engine: str, url: str, raw_target: str, redis_url: str, args: argparse.Namespace
) -> list[Result]:
    settings = Settings(database_url=url, cfn_state_dir=Path(tempfile.gettempdir()))
    store = Store.open(settings)
    store.upsert_skill(SKILL, "0" * 64, "skills/bench/SKILL.md")
    store.upsert_skill("history-skill", "1" * 64, "skills/history/SKILL.md")
    raw = Raw(engine, raw_target)
    results: list[Result] = []
    try:
        n = args.inserts

        def cfn_each() -> None:
            for i in range(n):
                store.add_approval(SKILL, f"cfn-{i}", "APPROVE", 0.5, METADATA)

        raw_rate = cfn_rate = 0.0
        for _ in range(args.rounds):
            raw_rate = max(raw_rate, best_rate(1, n, lambda: raw.insert_each(n)))
            cfn_rate = max(cfn_rate, best_rate(1, n, cfn_each))
        results.append(Result(engine, "approval insert, 1 txn each", raw_rate, cfn_rate))

        b = args.batch
        items = [
            ApprovalInput(
                skill_name=SKILL,
                agent_id=f"b-{i}",
                decision="DEFER",
                confidence=0.5,
                metadata=METADATA,
            )
            for i in range(b)
        ]
        raw_rate = cfn_rate = 0.0
        for _ in range(args.rounds):
            raw_rate = max(raw_rate, best_rate(1, b, lambda: raw.insert_batch(b)))
            cfn_rate = max(cfn_rate, best_rate(1, b, lambda: store.add_approvals(items)))
        results.append(Result(engine, f"approval insert, batch of {b}", raw_rate, cfn_rate))

        store.add_approvals(
            [
                ApprovalInput(
                    skill_name="history-skill",
                    agent_id=f"h-{i}",
                    decision="APPROVE",
                    confidence=0.9,
                    metadata=METADATA,
                )
                for i in range(args.history)
            ]
        )
        reads = args.reads
        assert len(raw.history("history-skill")) == args.history
        assert len(store.history("history-skill")) == args.history

        def raw_reads() -> None:
            for _ in range(reads):
                raw.history("history-skill")

        def cfn_reads() -> None:
            for _ in range(reads):
                store.history("history-skill")

        async def cached_reads() -> tuple[float, float | None]:
            manager = RedisManager.from_url(redis_url, settings)
            try:
                cached = CachedStore(store, QueryCache(manager, ttl=600))
                await cached.history("history-skill")  # the one miss
                best = 0.0
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    for _ in range(reads):
                        rows = await cached.history("history-skill")
                    best = max(best, reads / (time.perf_counter() - start))
                    assert len(rows) == args.history
                return best, cached.cache.local.hit_ratio
            finally:
                await manager.close()

        raw_rate = best_rate(args.rounds, reads, raw_reads)
        uncached = best_rate(args.rounds, reads, cfn_reads)
        cached_rate, hit_ratio = asyncio.run(cached_reads())
        results.append(
            Result(engine, f"history read ({args.history} rows), uncached", raw_rate, uncached)
        )
        results.append(
            Result(
                engine,
                f"history read, cached (hit ratio {hit_ratio or 0:.3f})",
                raw_rate,
                cached_rate,
            )
        )
    finally:
        raw.close()
        store.close()
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench store", description=__doc__)
    parser.add_argument("--inserts", type=int, default=1000, help="single-txn inserts per round")
    parser.add_argument("--batch", type=int, default=2000, help="rows per batched insert")
    parser.add_argument("--history", type=int, default=50, help="rows in the history read")
    parser.add_argument("--reads", type=int, default=1000, help="reads per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 110))
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cfn-bench-store-") as tmp:
            redis_server = RedisServer(Path(tmp) / "redis").start()
            pg: PostgresServer | None = None
            try:
                for engine in args.engines.split(","):
                    if engine == "sqlite":
                        path = Path(tmp) / "bench.db"
                        results += bench_engine(
                            engine, f"sqlite:///{path}", str(path), redis_server.url, args
                        )
                    elif engine == "postgresql":
                        pg = pg or PostgresServer().start()
                        url = pg.database("bench")
                        results += bench_engine(engine, url, url, redis_server.url, args)
                    else:
                        raise ValueError(f"unknown engine {engine!r}")
            finally:
                redis_server.stop()
                if pg is not None:
                    pg.stop()
    except Exception as exc:
        print(f"[ERROR] store benchmark failed: {exc}", file=sys.stderr)
        return 1
    table = Table(title="Store vs raw driver (best of rounds)")
    for column in ("engine", "measure", "raw driver", "cfn", "cfn / raw"):
        table.add_column(column, justify="left" if column in {"engine", "measure"} else "right")
    for r in results:
        table.add_row(r.engine, r.what, f"{r.raw:,.0f}/s", f"{r.cfn:,.0f}/s", f"{r.ratio:.2f}")
    console.print(table)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(f"load average at the end: {load} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
