"""The bad-input corpus shared by the surfaces' tests (CLI, REST, Socket.IO, MCP, Redis)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import redis

#: Ids that must never become a Redis key, a path or a SQL value unchecked.
BAD_IDS: list[str] = [
    "*",
    "task*",
    "t?",
    "[ab]",
    "a\nb",
    "a\rb",
    "../etc",
    "..",
    ".",
    "a/b",
    "a:b",
    "'; DROP TABLE tasks;--",
    "$(touch /tmp/cfn-pwned)",
    "`id`",
    "a b",
    "x" * 129,
    "",
    "tâche",
    "a|b",
    "a;b",
    "%2e%2e%2f",
    "a\tb",
]

#: Ids that cannot travel in argv (NUL) but can in JSON, headers' payloads, Redis values.
BAD_IDS_WITH_NUL: list[str] = [*BAD_IDS, "a\x00b", "\x00"]


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def huge_json(size: int) -> str:
    return json.dumps({"blob": "x" * size})


def redis_snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key with its DUMP: equal snapshots mean nothing was written."""
    return {key: client.dump(key) for key in client.scan_iter(count=1000)}


def sql_counts(state_dir: Path) -> dict[str, int]:
    """Row counts of every table of every SQLite file under the state dir."""
    counts: dict[str, int] = {}
    for db in sorted(state_dir.rglob("*.db")) if state_dir.exists() else []:
        con = sqlite3.connect(db)
        try:
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                (n,) = con.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()  # noqa: S608
                counts[f"{db.name}:{table}"] = int(n)
        finally:
            con.close()
    return counts
