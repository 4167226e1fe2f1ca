"""The audit trail of MCP tool calls, written off the request path.

Every call, allowed or refused, becomes one JSON line in
``<state>/mcp/audit.jsonl`` (agent, task, server, tool, duration, outcome).
``record`` only appends to a list; a background task writes batches, so an
audit write never adds to a call's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cfn.mcp.tokens import Claims
from cfn.settings import Settings

AUDIT_FILE = "audit.jsonl"
FLUSH_DELAY = 0.05


def audit_path(settings: Settings) -> Path:
    return settings.state_dir / "mcp" / AUDIT_FILE


class AuditLog:
    def __init__(self, path: Path, *, via: str = "direct") -> None:
        self.path = path
        self.via = via
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None

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
        self._pending.append(json.dumps(entry))
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await self.flush()

    async def flush(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            await asyncio.to_thread(self._write, lines)

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.flush()


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
