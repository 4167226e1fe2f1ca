"""The Redis key schema, in one place (seed: "Key Naming Conventions").

Nothing else in cfn formats a Redis key. Every id is validated here before it
becomes part of a key, so a task id like ``*`` or ``a:b`` can never widen a
SCAN, collide with another task's keys or smuggle a separator in.

The seed writes locks as ``lock:${RESOURCE_NAME}:${EXPIRY}``; we keep the
expiry as the key's TTL instead, because a second acquirer cannot find a lock
whose name holds an expiry it does not know.
"""

from __future__ import annotations

import re

from cfn.errors import InvalidIdError

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
CHANNEL_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
CHANNEL_MAX = 64
HASH_PATTERN = re.compile(r"[0-9a-f]{16,128}")

# Channels the CFN Loop itself uses (seed: coord:${TASK_ID}:loop3:complete ...).
LOOP3_COMPLETE = "loop3:complete"
LOOP2_START = "loop2:start"
DECISION = "decision"


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is 1..128 of ``[A-Za-z0-9._-]``, not ``.``/``..`` and not
    starting with ``-``, else raise."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise InvalidIdError(
            f"invalid {what} {value!r}: use 1 to 128 characters from A-Z a-z 0-9 . _ -"
        )
    if value in {".", ".."}:
        raise InvalidIdError(f"invalid {what} {value!r}: '.' and '..' are reserved")
    if value.startswith("-"):
        # `cfn resume -rf` would read the id as options: no id may be mistaken for one
        raise InvalidIdError(f"invalid {what} {value!r}: it may not start with '-'")
    return value


def validate_channel(value: object) -> str:
    """A channel: ``:``-separated segments of ``[A-Za-z0-9._-]``, 1..64 chars in all."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= CHANNEL_MAX
        or not all(CHANNEL_SEGMENT.fullmatch(seg) for seg in value.split(":"))
    ):
        raise InvalidIdError(
            f"invalid channel {value!r}: use 1 to {CHANNEL_MAX} characters from "
            "A-Z a-z 0-9 . _ - in ':'-separated segments (e.g. 'loop2:start')"
        )
    return value


# --- coordination -------------------------------------------------------------


def coord(task_id: str, channel: str) -> str:
    """``coord:{task}:{channel}``: a signal channel (loop3:complete, loop2:start, ...)."""
    return f"coord:{validate_id(task_id, 'task id')}:{validate_channel(channel)}"


def coord_complete(task_id: str) -> str:
    """``coord:{task}:complete``: the durable list of ``{agent}:{result}`` entries."""
    return f"coord:{validate_id(task_id, 'task id')}:complete"


def coord_error(task_id: str) -> str:
    return f"coord:{validate_id(task_id, 'task id')}:error"


def coord_payload(task_id: str, agent_id: str) -> str:
    """``coord:{task}:payload:{agent}``: a list, newest payload at the head (seed: LPUSH)."""
    return f"coord:{validate_id(task_id, 'task id')}:payload:{validate_id(agent_id, 'agent id')}"


def coord_payload_pattern(task_id: str) -> str:
    """Glob matching every agent's payload list of one task."""
    return f"coord:{validate_id(task_id, 'task id')}:payload:*"


def coord_signal(task_id: str, agent_id: str) -> str:
    return f"coord:{validate_id(task_id, 'task id')}:signal:{validate_id(agent_id, 'agent id')}"


def coord_pattern(task_id: str) -> str:
    """Glob matching every ``coord:`` key of one task (safe: ids hold no glob chars)."""
    return f"coord:{validate_id(task_id, 'task id')}:*"


def swarm_signal(task_id: str, agent_id: str) -> str:
    return f"swarm:{validate_id(task_id, 'task id')}:signal:{validate_id(agent_id, 'agent id')}"


def swarm_result(task_id: str, agent_id: str) -> str:
    return f"swarm:{validate_id(task_id, 'task id')}:result:{validate_id(agent_id, 'agent id')}"


def agent_steps(task_id: str, agent_id: str) -> str:
    """``swarm:{task}:steps:{agent}``: what the agent did, step by step (XADD, capped).

    Written by the agent alone (its ACL user owns the key); the orchestrator relays
    each entry to the task's events as ``agent:step`` with the agent id it read
    the entry from, so no agent can speak for another.
    """
    return f"swarm:{validate_id(task_id, 'task id')}:steps:{validate_id(agent_id, 'agent id')}"


def heartbeat(task_id: str, agent_id: str) -> str:
    """``swarm:{task}:heartbeat:{agent}``: the agent's last beat (JSON), TTL 2x the interval."""
    return f"swarm:{validate_id(task_id, 'task id')}:heartbeat:{validate_id(agent_id, 'agent id')}"


def heartbeat_pattern(task_id: str) -> str:
    """Glob matching every agent's heartbeat key of one task."""
    return f"swarm:{validate_id(task_id, 'task id')}:heartbeat:*"


def context(task_id: str, key: str) -> str:
    """``context:{task}:{key}`` (the seed's ``deliverables`` and ``metadata``, or any id)."""
    return f"context:{validate_id(task_id, 'task id')}:{validate_id(key, 'context key')}"


def lock(resource: str) -> str:
    return f"lock:{validate_id(resource, 'lock resource')}"


def lock_fence(resource: str) -> str:
    """The fencing counter of a lock; never expires, so numbers only grow."""
    return f"lock:{validate_id(resource, 'lock resource')}:fence"


def cache_query(digest: str) -> str:
    if not isinstance(digest, str) or HASH_PATTERN.fullmatch(digest) is None:
        raise InvalidIdError(f"invalid query hash {digest!r}: expected lowercase hex")
    return f"cache:query:{digest}"


def cache_tag(digest: str) -> str:
    """``cache:tag:{hash}``: the version counter of one table or row set the cache reads.

    A query's cache key includes the versions of every tag it read; a write bumps
    them, so every entry built on the old rows becomes unreachable at once.
    """
    if not isinstance(digest, str) or HASH_PATTERN.fullmatch(digest) is None:
        raise InvalidIdError(f"invalid cache tag hash {digest!r}: expected lowercase hex")
    return f"cache:tag:{digest}"


def cache_stats() -> str:
    """``cache:stats``: a hash of query-cache ``lookups`` and ``misses`` (the hit ratio)."""
    return "cache:stats"


def session(task_id: str) -> str:
    return f"session:{validate_id(task_id, 'task id')}"


# --- LLM usage (issue 4) -------------------------------------------------------------


def usage(task_id: str) -> str:
    """``usage:{task}``: hash of the task's LLM spend (cost_usd, tokens, calls); the budget."""
    return f"usage:{validate_id(task_id, 'task id')}"


def usage_agent(task_id: str, agent_id: str) -> str:
    """``usage:{task}:agent:{agent}``: the same counters for one agent of the task."""
    return f"usage:{validate_id(task_id, 'task id')}:agent:{validate_id(agent_id, 'agent id')}"


def usage_calls(task_id: str) -> str:
    """``usage:{task}:calls``: capped list of JSON call records, newest first."""
    return f"usage:{validate_id(task_id, 'task id')}:calls"


# --- the CFN Loop (issue 5) -----------------------------------------------------------

DECISION_INPUT = "decision:input"


def decision(task_id: str) -> str:
    """``coord:{task}:decision``: the product owner's latest decision (a JSON string)."""
    return coord(task_id, DECISION)


def decision_input(task_id: str) -> str:
    """``coord:{task}:decision:input``: decisions sent by a person, waited on with BRPOP."""
    return coord(task_id, DECISION_INPUT)


def events(task_id: str) -> str:
    """``events:{task}``: the task's event stream (XADD), for live views and replay."""
    return f"events:{validate_id(task_id, 'task id')}"


def events_pattern() -> str:
    """Glob matching every task's event stream (the portal's task list wakes on them)."""
    return "events:*"


def keyspace_channel(db: int, key: str) -> str:
    """The pub/sub channel Redis publishes keyspace notifications for ``key`` on."""
    return f"__keyspace@{db}__:{key}"


# --- MCP (issue 6) ------------------------------------------------------------------------


def swarm_pattern(task_id: str) -> str:
    """Glob matching every ``swarm:`` key of one task (signals, results, heartbeats)."""
    return f"swarm:{validate_id(task_id, 'task id')}:*"


def context_pattern(task_id: str) -> str:
    """Glob matching every ``context:`` key of one task."""
    return f"context:{validate_id(task_id, 'task id')}:*"


def task_prefixes(task_id: str) -> tuple[str, ...]:
    """The prefixes of one task's keys (see ``task_owns``): its patterns without the ``*``."""
    patterns = (coord_pattern(task_id), swarm_pattern(task_id), context_pattern(task_id))
    return (*(p.removesuffix("*") for p in patterns), usage(task_id) + ":")


def task_owns(task_id: str, key: object) -> bool:
    """Whether ``key`` is one of the task's own keys: ``coord:``, ``swarm:``,
    ``context:`` and ``usage:{task}:...``, ``usage:{task}``, ``events:{task}``,
    ``session:{task}``. What an agent's Redis tools may reach (cfn.mcp.servers)."""
    if not isinstance(key, str):
        return False
    t = validate_id(task_id, "task id")
    return key in (usage(t), events(t), session(t)) or key.startswith(task_prefixes(t))


def mcp_audit() -> str:
    """``mcp:audit``: capped stream of MCP tool calls (agent, task, server, tool, outcome)."""
    return "mcp:audit"


# --- the portal (issue 7) --------------------------------------------------------------

#: The consumer group of orchestrator workers on :func:`task_queue`.
WORKER_GROUP = "orchestrators"


def task_queue() -> str:
    """``queue:tasks``: tasks created through the portal, for orchestrator workers (XADD)."""
    return "queue:tasks"


def task_lease(task_id: str) -> str:
    """``lease:task:{task}``: who runs the task now (one orchestrator at a time), with a
    TTL its holder renews (cfn.coordination.lease)."""
    return f"lease:task:{validate_id(task_id, 'task id')}"


def queued_task(task_id: str) -> str:
    """``queue:task:{task}``: a queued task's options (JSON) until a worker has created it."""
    return f"queue:task:{validate_id(task_id, 'task id')}"


def login_code_used(nonce: str) -> str:
    """``portal:login:{nonce}``: a used dashboard login code (single use; TTL: its life)."""
    return f"portal:login:{validate_id(nonce, 'login code nonce')}"


def worker_presence(name: str) -> str:
    """``queue:worker:{name}``: a live orchestrator worker (JSON; TTL = CFN_WORKER_CLAIM_IDLE)."""
    return f"queue:worker:{validate_id(name, 'worker name')}"


def worker_presence_pattern() -> str:
    """Glob matching every live worker's presence key."""
    return "queue:worker:*"
