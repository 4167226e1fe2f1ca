"""Redis Tools (seed port 8082): inspect the coordination state.

SCAN by pattern (never KEYS), read a key by its type, TTLs, a task's
signals / results / context in one summary, and delete, which needs both
``confirm: true`` and a token with write scope. A token reaches the keys of its own
task only (``keys.task_owns``); the agent that holds it may be steered by anything
it reads.
"""

from __future__ import annotations

import json
from typing import Any

from cfn import keys
from cfn.coordination.connection import RedisManager
from cfn.coordination.inspect import scan_keys
from cfn.errors import McpForbiddenError, McpToolError
from cfn.mcp.base import Call, Common, Tool, ToolOutput, ToolServer, schema
from cfn.settings import Settings

MAX_ITEMS = 1000
MAX_VALUE = 64 * 1024


def _clip(value: str) -> str:
    return value if len(value) <= MAX_VALUE else value[:MAX_VALUE] + "… [truncated]"


async def read_key(redis: RedisManager, key: str, limit: int = 100) -> dict[str, Any]:
    """A key's type, TTL and value (bounded: ``limit`` items of a collection)."""

    async def read(r: Any) -> dict[str, Any]:
        kind = await r.type(key)
        ttl = await r.ttl(key)
        value: Any
        size: int | None = None
        if kind == "none":
            return {"key": key, "exists": False}
        if kind == "string":
            value = _clip(await r.get(key) or "")
            size = await r.strlen(key)
        elif kind == "list":
            size = await r.llen(key)
            value = [_clip(v) for v in await r.lrange(key, 0, limit - 1)]
        elif kind == "hash":
            size = await r.hlen(key)
            value = {}
            async for field, item in r.hscan_iter(key, count=limit):
                value[field] = _clip(item)
                if len(value) >= limit:
                    break
        elif kind == "set":
            size = await r.scard(key)
            value = []
            async for item in r.sscan_iter(key, count=limit):
                value.append(_clip(item))
                if len(value) >= limit:
                    break
            value.sort()
        elif kind == "zset":
            size = await r.zcard(key)
            value = [[m, s] for m, s in await r.zrange(key, 0, limit - 1, withscores=True)]
        elif kind == "stream":
            size = await r.xlen(key)
            value = [
                {"id": entry_id, "fields": fields}
                for entry_id, fields in await r.xrevrange(key, count=limit)
            ]
        else:
            value = None
        return {"key": key, "exists": True, "type": kind, "ttl": ttl, "size": size, "value": value}

    result: dict[str, Any] = await redis.run(read)
    return result


async def task_summary(redis: RedisManager, task_id: str) -> dict[str, Any]:
    """Signals, results and context of one task, as the CFN Loop left them in Redis."""
    coord = await scan_keys(redis, keys.coord_pattern(task_id), MAX_ITEMS)
    swarm = await scan_keys(redis, keys.swarm_pattern(task_id), MAX_ITEMS)
    context = await scan_keys(redis, keys.context_pattern(task_id), MAX_ITEMS)
    complete_key = keys.coord_complete(task_id)

    async def gather(r: Any) -> dict[str, Any]:
        completions = await r.lrange(complete_key, 0, -1)
        results: list[dict[str, Any]] = []
        for entry in reversed(completions):
            agent, _, outcome = str(entry).partition(":")
            payload_raw = await r.lindex(keys.coord_payload(task_id, agent), 0)
            try:
                payload = json.loads(payload_raw) if payload_raw else None
            except ValueError:
                payload = payload_raw
            confidence = payload.get("confidence") if isinstance(payload, dict) else None
            results.append({"agent_id": agent, "result": outcome, "confidence": confidence})
        signals: dict[str, Any] = {}
        for key in coord:
            if key in (complete_key,) or ":payload:" in key:
                continue
            kind = await r.type(key)
            if kind == "string":
                signals[key] = _clip(await r.get(key) or "")
            elif kind == "list":
                signals[key] = {"type": "list", "length": await r.llen(key)}
            else:
                signals[key] = {"type": kind}
        swarm_signals: dict[str, Any] = {}
        for key in swarm:
            if await r.type(key) == "string":
                swarm_signals[key] = _clip(await r.get(key) or "")
        ctx: dict[str, Any] = {}
        for key in context:
            kind = await r.type(key)
            ctx[key] = {
                "type": kind,
                "ttl": await r.ttl(key),
                "bytes": await r.strlen(key) if kind == "string" else None,
            }
        return {
            "task_id": task_id,
            "results": results,
            "signals": signals,
            "swarm": swarm_signals,
            "context": ctx,
        }

    summary: dict[str, Any] = await redis.run(gather)
    return summary


def _own_keys(call: Call, names: list[str]) -> list[str]:
    """A token reaches its own task's keys only (keys.task_owns): an agent's model may
    be hostile, and other tasks' results, budgets and decisions are not its to read."""
    for name in names:
        if not keys.task_owns(call.claims.task_id, name):
            raise McpForbiddenError(
                f"key {name!r} is not one of task {call.claims.task_id!r}'s: this token "
                "reaches its own task's keys only"
            )
    return names


def _records_kept(call: Call, names: list[str]) -> list[str]:
    """What ``redis_delete`` never removes, even with write scope: the task's budget
    ledger, its event stream and session, and its completion list (deleting those
    would reset a budget, or bring spent LLM tokens back)."""
    task = call.claims.task_id
    records = {
        keys.usage(task), keys.events(task), keys.session(task), keys.coord_complete(task)
    }
    for name in names:
        if name in records or name.startswith(keys.usage(task) + ":"):
            raise McpForbiddenError(
                f"{name!r} is one of task {task!r}'s records (budget, events, completions): "
                "redis_delete never removes those"
            )
    return names


def _own_pattern(call: Call, pattern: str) -> str:
    """A SCAN pattern whose every match is the task's: it starts with one of the task's
    prefixes (ids hold no glob characters), or names one of its unprefixed keys."""
    task = call.claims.task_id
    if pattern.startswith(keys.task_prefixes(task)) or keys.task_owns(task, pattern):
        return pattern
    prefixes = ", ".join(f"'{p}*'" for p in keys.task_prefixes(task))
    raise McpForbiddenError(
        f"pattern {pattern!r} reaches beyond task {task!r}: start it with one of {prefixes}"
    )


def build(settings: Settings, common: Common, redis: RedisManager | None = None) -> ToolServer:
    manager = redis or RedisManager.from_settings(settings)

    async def scan(call: Call, args: dict[str, Any]) -> ToolOutput:
        pattern = _own_pattern(call, args["pattern"])
        found = await scan_keys(manager, pattern, int(args.get("limit", 100)))
        return ToolOutput({"pattern": pattern, "count": len(found), "keys": found})

    async def get(call: Call, args: dict[str, Any]) -> ToolOutput:
        (key,) = _own_keys(call, [args["key"]])
        return ToolOutput(await read_key(manager, key, int(args.get("limit", 100))))

    async def ttl(call: Call, args: dict[str, Any]) -> ToolOutput:
        names: list[str] = _own_keys(call, args["keys"])

        async def read(r: Any) -> dict[str, int]:
            return {name: int(await r.ttl(name)) for name in names}

        ttls = await manager.run(read)
        return ToolOutput({"ttls": ttls, "note": "-1: no expiry, -2: no such key"})

    async def summary(call: Call, args: dict[str, Any]) -> ToolOutput:
        task_id = args.get("task_id") or call.claims.task_id
        keys.validate_id(task_id, "task id")
        if task_id != call.claims.task_id:  # a token speaks for its own task only
            raise McpForbiddenError(
                f"this token is for task {call.claims.task_id!r}, not {task_id!r}"
            )
        return ToolOutput(await task_summary(manager, task_id))

    async def delete(call: Call, args: dict[str, Any]) -> ToolOutput:
        if args.get("confirm") is not True:
            raise McpToolError(
                "redis_delete removes data: call it again with confirm: true to go ahead"
            )
        names: list[str] = _records_kept(call, _own_keys(call, args["keys"]))

        async def remove(r: Any) -> int:
            return int(await r.delete(*names))

        return ToolOutput({"deleted": await manager.run(remove), "keys": names})

    key_list = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                "maxItems": 1000}  # fmt: skip
    limit = {"type": "integer", "minimum": 1, "maximum": MAX_ITEMS}
    tools = [
        Tool(
            "redis_scan", "scan",
            "List the token's task's keys matching a glob pattern (SCAN, never KEYS), e.g. "
            "'coord:task-1:*'.",
            schema({"pattern": {"type": "string", "minLength": 1, "maxLength": 256},
                    "limit": limit}, ("pattern",)),
            scan,
        ),
        Tool(
            "redis_get", "get",
            "Read a key whatever its type (string, list, hash, set, zset, stream) with its TTL.",
            schema({"key": {"type": "string", "minLength": 1}, "limit": limit}, ("key",)),
            get,
        ),
        Tool(
            "redis_ttl", "ttl", "TTLs in seconds of one or more keys (-1 none, -2 missing).",
            schema({"keys": key_list}, ("keys",)), ttl,
        ),
        Tool(
            "redis_task_summary", "task_summary",
            "A task's results (agent, result, confidence), signals and context keys; "
            "default: the token's task.",
            schema({"task_id": {"type": "string"}}), summary,
        ),
        Tool(
            "redis_delete", "delete",
            "Delete keys. Needs confirm: true and a token with write scope.",
            schema({"keys": key_list, "confirm": {"type": "boolean"}}, ("keys",)),
            delete, write=True,
        ),
    ]  # fmt: skip

    async def health() -> dict[str, Any]:
        pong = await manager.run(lambda r: r.ping())
        return {"redis": "ok" if pong else "down", "redis_url": manager.active_label}

    return ToolServer(
        "redis-tools", tools, authority=common.authority, mapping=common.mapping,
        audit=common.audit, shutdown=manager.close, health=health,
    )  # fmt: skip
