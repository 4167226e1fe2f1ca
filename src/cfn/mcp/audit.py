"""The audit trail of MCP tool calls, written off the request path.

Every call, allowed or refused, becomes one row of the SQL store's
``mcp_audit`` table and one JSON line in ``<state>/mcp/audit.jsonl`` (agent,
task, server, tool, duration, outcome, reason). ``record`` only appends to a
list; a background task writes batches (one transaction per batch) in a worker
thread, so an audit write never adds to a call's latency. The store is opened
on the first batch, in that thread: a server does not pay for SQLAlchemy at
start-up, and a database that cannot be reached costs the file nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfn.mcp.tokens import Claims
from cfn.settings import Settings

if TYPE_CHECKING:
    from cfn.store.repository import Store

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
FLUSH_DELAY = 0.05


def audit_path(settings: Settings) -> Path:
    return settings.state_dir / "mcp" / AUDIT_FILE


class AuditLog:
    """Batched audit writes to the JSONL file (``path``) and the SQL store.

    ``store`` is a Store already open (the portal's), ``open_store`` a factory
    called once, in the writer thread, on the first batch (a server process's).
    With neither, only the file is written.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        via: str = "direct",
        store: Store | None = None,
        open_store: Callable[[], Store] | None = None,
    ) -> None:
        self.path = path
        self.via = via
        self._store = store
        self._open_store = open_store
        self._owns_store = False
        self._store_lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failures = 0

    def record(
        self,
        *,
        server: str,
        tool: str,
        claims: Claims | None,
        outcome: str,
        duration: float,
        reason: str = "",
    ) -> None:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 6),
            "via": self.via,
            "agent_id": claims.agent_id if claims else None,
            "task_id": claims.task_id if claims else None,
            "server": server,
            "tool": tool,
            "outcome": outcome,
            "duration_ms": round(duration * 1000, 3),
        }
        if reason:
            entry["reason"] = reason
        self._pending.append(entry)
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        # Entries recorded while a batch is being written go in the next batch.
        while self._pending:
            await asyncio.sleep(FLUSH_DELAY)
            await self.flush()

    async def flush(self) -> None:
        entries, self._pending = self._pending, []
        if entries:
            await asyncio.to_thread(self._write, entries)

    def _write(self, entries: list[dict[str, Any]]) -> None:
        if self.path is not None:
            try:
                self._write_file(self.path, entries)
            except OSError as exc:
                log.warning("MCP audit: cannot append to %s: %s", self.path, exc)
        store = self._store_for_writes()
        if store is None:
            return
        try:
            self.written += store.append_mcp_audit(entries)
        except Exception as exc:  # the file keeps them; the next batch tries the store again
            self.failures += 1
            log.warning(
                "MCP audit: %d entries not written to %s: %s", len(entries), store.label, exc
            )

    @staticmethod
    def _write_file(path: Path, entries: list[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, "".join(json.dumps(e) + "\n" for e in entries).encode())
        finally:
            os.close(fd)

    def _store_for_writes(self) -> Store | None:
        with self._store_lock:
            if self._store is None and self._open_store is not None:
                opener, self._open_store = self._open_store, None
                try:
                    self._store = opener()
                    self._owns_store = True
                except Exception as exc:
                    self.failures += 1
                    log.warning("MCP audit: no SQL store (%s); auditing to the file only", exc)
            return self._store

    async def aclose(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.flush()
        if self._owns_store and self._store is not None:
            store, self._store = self._store, None
            await asyncio.to_thread(store.close)


def read_audit(path: Path, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` entries (oldest first)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in lines[-limit:]:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
