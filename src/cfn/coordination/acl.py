"""Per-agent Redis ACL users (Redis 6+): an agent reaches only its own task's keys.

At spawn the launcher creates ``cfn:{task}:{agent}`` with a random password
(sent to Redis only as its SHA-256, so it never shows in MONITOR or the slow
log) and these rules:

- write (and read) only the agent's own keys: ``coord:{task}:payload:{agent}``,
  ``swarm:{task}:{result,signal,heartbeat,steps}:{agent}``;
- write the task's shared lists an agent reports on: ``coord:{task}:complete``,
  ``coord:{task}:error``;
- read the rest of its own task: ``coord:{task}:*``, ``context:{task}:*``,
  ``swarm:{task}:*``, and its budget ``usage:{task}``, ``usage:{task}:calls``,
  ``usage:{task}:agent:{agent}`` (only the LLM gateway charges a budget: an
  agent that could write it could give itself more);
- its duplicate-run lock, the two exact keys ``lock:agent-{digest}`` and
  ``lock:agent-{digest}:fence`` (the one key outside the task's prefixes; the
  digest is of task and agent, so it is this agent's alone);
- pub/sub only on ``coord:{task}:*`` channels;
- only the commands the Python runtime and the seed's bash agent use (no
  KEYS/SCAN, CONFIG, FLUSH*, ACL, DEBUG, MODULE, SHUTDOWN ...). Scripts (EVAL)
  run with the user's permissions: every ``redis.call`` inside is checked too.

The user is deleted when the agent has ended (Redis then also drops its
connections). ``CFN_REDIS_AGENT_ACL``: ``auto`` (default) creates users when
the server lets the admin connection run ``ACL SETUSER`` and otherwise warns
once and gives agents the shared credentials; ``on`` makes that an error;
``off`` never creates users.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cfn import keys
from cfn.errors import AgentSpawnError, ConfigError

log = logging.getLogger(__name__)

USER_PREFIX = "cfn:"

#: Every command an agent needs (the Python runtime, redis-cli in bash agents).
AGENT_COMMANDS: tuple[str, ...] = (
    # connection
    "auth", "hello", "ping", "echo", "select", "quit", "reset",
    "client|setname", "client|getname", "client|id",
    # strings and keys
    "get", "set", "mget", "exists", "del", "pexpire", "expire", "pttl", "ttl", "type", "incr",
    # its step stream (what it did, for the live transcript)
    "xadd",
    # lists
    "lpush", "rpush", "lpop", "rpop", "brpop", "blpop", "lrange", "llen", "ltrim", "lindex",
    "lpos", "lset",
    # durability of completions with a replica: INFO replication, then WAIT
    "info", "wait",
    # hashes: reading the task's budget (only the LLM gateway writes it)
    "hget", "hgetall", "hmget",
    # scripts and transactions
    "eval", "evalsha", "eval_ro", "evalsha_ro", "script|load", "script|exists",
    "multi", "exec", "discard", "watch", "unwatch",
    # pub/sub on the task's channels
    "publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe",
)  # fmt: skip

#: Environment variables that carry a signing secret agents must never hold.
SIGNING_SECRETS = ("MCP_AUTH_TOKEN", "CFN_PORTAL_SECRET")


def agent_username(task_id: str, agent_id: str) -> str:
    """``cfn:{task}:{agent}`` (ids validated; ``:`` cannot occur in them)."""
    return (
        f"{USER_PREFIX}{keys.validate_id(task_id, 'task id')}:"
        f"{keys.validate_id(agent_id, 'agent id')}"
    )


def lock_resource(task_id: str, agent_id: str) -> str:
    """The agent's duplicate-run lock (``lock:agent-{digest}``), one per task and agent."""
    keys.validate_id(task_id, "task id")
    keys.validate_id(agent_id, "agent id")
    digest = hashlib.sha256(f"{task_id}/{agent_id}".encode()).hexdigest()[:40]
    return f"agent-{digest}"


def agent_rules(task_id: str, agent_id: str, password_sha256: str) -> list[str]:
    """The ``ACL SETUSER`` rules of one agent's user (see the module docstring)."""
    t = keys.validate_id(task_id, "task id")
    a = keys.validate_id(agent_id, "agent id")
    lock = lock_resource(t, a)
    own = [
        keys.coord_payload(t, a),
        keys.swarm_result(t, a),
        keys.swarm_signal(t, a),
        keys.heartbeat(t, a),
        keys.agent_steps(t, a),
        keys.coord_complete(t),
        keys.coord_error(t),
        keys.lock(lock),
        keys.lock_fence(lock),
    ]
    # The task's budget and usage are the LLM gateway's to write (cfn.providers.gateway):
    # an agent may read them, never change them.
    readable = [
        keys.coord_pattern(t),
        keys.context_pattern(t),
        keys.swarm_pattern(t),
        keys.usage(t),
        keys.usage_agent(t, a),
        keys.usage_calls(t),
    ]
    return [
        "reset",
        "on",
        f"#{password_sha256}",
        *(f"~{k}" for k in own),
        *(f"%R~{p}" for p in readable),
        "resetchannels",
        f"&{keys.coord_pattern(t)}",
        "-@all",
        *(f"+{c}" for c in AGENT_COMMANDS),
    ]


@dataclass(frozen=True)
class AgentCredentials:
    """An agent's own Redis user; ``repr`` never shows the password."""

    username: str
    password: str = field(repr=False)


def with_credentials(url: str, username: str, password: str) -> str:
    """``url`` (redis:// or rediss://) with its user and password replaced."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_password(url: str | None) -> str | None:
    """The password in a Redis URL, decoded, or None."""
    if not url:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def agent_environment(
    base: dict[str, str],
    credentials: AgentCredentials,
    *,
    url_env: str,
    password_env: str,
    admin_secrets: set[str],
) -> dict[str, str]:
    """``base`` for an agent with its own Redis user: its URL, REDISCLI_AUTH and
    REDIS_USERNAME/REDIS_PASSWORD are the agent's; a fallback URL gets the agent's
    credentials too; any other variable holding an admin secret is dropped."""
    env = dict(base)
    user, password = credentials.username, credentials.password
    for name in (url_env, "REDIS_URL", "REDIS_FALLBACK_1"):
        value = env.get(name)
        if value and urlsplit(value).scheme in {"redis", "rediss"}:
            env[name] = with_credentials(value, user, password)
    env[password_env] = password
    env["REDISCLI_AUTH"] = password
    env["REDIS_USERNAME"] = user
    env["REDIS_PASSWORD"] = password
    secret_values = {s for s in admin_secrets if s}
    for name in list(env):
        value = env[name]
        if name in SIGNING_SECRETS or any(s in value for s in secret_values):
            del env[name]
    return env


#: Pauses (s) before each further try of a failed ACL DELUSER.
DELETE_RETRIES = (0.5, 2.0)


class AgentAcl:
    """Creates and deletes agents' ACL users through an admin connection."""

    def __init__(self, admin_urls: list[str], mode: str = "auto") -> None:
        if mode not in {"auto", "on", "off"}:
            raise ConfigError(f"CFN_REDIS_AGENT_ACL must be auto, on or off, not {mode!r}")
        self.admin_urls = [u for u in admin_urls if u]
        self.mode = mode
        self._unsupported: str | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self._unsupported is None

    async def _on(self, url: str, *command: str) -> object:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=10.0)
        try:
            return await client.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    async def create(self, task_id: str, agent_id: str) -> AgentCredentials | None:
        """A fresh user for the agent on every configured server, or None (shared creds)."""
        username = agent_username(task_id, agent_id)
        if not self.enabled or not self.admin_urls:
            return None
        password = secrets.token_urlsafe(32)
        digest = hashlib.sha256(password.encode()).hexdigest()
        rules = agent_rules(task_id, agent_id, digest)
        primary, *others = self.admin_urls
        try:
            await self._on(primary, "ACL", "SETUSER", username, *rules)
        except (RedisError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if self.mode == "on":
                raise AgentSpawnError(
                    f"cannot create the Redis ACL user of agent {agent_id} ({why}); "
                    "CFN_REDIS_AGENT_ACL=on needs a Redis 6+ admin user allowed ACL SETUSER"
                ) from None
            self._unsupported = why
            log.warning(
                "Redis refused ACL SETUSER (%s): agents share the orchestrator's Redis "
                "credentials (set CFN_REDIS_AGENT_ACL=off to silence this, or give the "
                "admin user +acl)",
                why,
            )
            return None
        for url in others:
            try:
                await self._on(url, "ACL", "SETUSER", username, *rules)
            except (RedisError, OSError) as exc:
                log.warning(
                    "the fallback Redis did not take agent %s's ACL user (%s): the agent "
                    "cannot use it",
                    agent_id,
                    type(exc).__name__,
                )
        return AgentCredentials(username, password)

    async def delete(self, task_id: str, agent_id: str) -> None:
        """Remove the agent's user everywhere (its open connections close); never raises."""
        username = agent_username(task_id, agent_id)
        if not self.enabled:
            return
        for url in self.admin_urls:
            # A busy machine can time a connection out: a user left behind would keep
            # its rights until someone deletes it, so a failed delete is tried again.
            for pause in (*DELETE_RETRIES, None):
                try:
                    await self._on(url, "ACL", "DELUSER", username)
                    break
                except (RedisError, OSError) as exc:
                    if pause is None:
                        log.warning(
                            "could not delete Redis ACL user %s (%s)",
                            username,
                            type(exc).__name__,
                        )
                    else:
                        await asyncio.sleep(pause)
