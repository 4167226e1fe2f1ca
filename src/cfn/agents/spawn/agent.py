"""One agent from its ids and the settings: the seed's ``spawn-agent.sh``.

The loop starts its agents through its launcher (profiles, routes, ACL
users); this is the short way ``cfn spawn-agent`` takes, in whichever runtime
``spawner_for`` picks. The Redis URL agents get is decided here too, so the
loop, the portal and ``cfn spawn-agent`` hand their agents the same server.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cfn.agents.context import (
    DEFAULT_MODE,
    DEFAULT_PROVIDER,
    generate_cli_context,
    resolve_endpoint,
)
from cfn.agents.spawn import spawner_for
from cfn.agents.spawn.base import AgentHandle
from cfn.errors import InvalidInputError
from cfn.keys import validate_id
from cfn.settings import Settings
from cfn.system.limits import parse_cpu_limit, parse_memory_limit

if TYPE_CHECKING:
    from cfn.profiles import AgentProfile


def validate_agent_ids(task_id: str, agent_id: str, mode: str, provider: str) -> None:
    """The spawn-agent arguments, checked before anything starts."""
    validate_id(agent_id, "agent id")
    validate_id(task_id, "task id")
    validate_id(mode, "mode")
    validate_id(provider, "provider")


def agent_redis_url(settings: Settings) -> str:
    """The Redis URL agents get: REDIS_URL, else the embedded redis-server (started if need be)."""
    if settings.cfn_redis_sentinels:  # as RedisManager: the sentinels come first
        from cfn.coordination.connection import sentinel_url

        return sentinel_url(
            list(settings.cfn_redis_sentinels),
            settings.cfn_redis_sentinel_master,
            settings.redis_username or None,
            settings.redis_password or None,
        )
    if settings.redis_url:
        return settings.redis_url
    from cfn.coordination.embedded import EmbeddedRedis

    return EmbeddedRedis(settings).ensure_running()


async def spawn_agent(
    settings: Settings,
    agent_id: str,
    task_id: str,
    mode: str = DEFAULT_MODE,
    provider: str = DEFAULT_PROVIDER,
    *,
    workspace: Path | None = None,
    command: Sequence[str] | None = None,
    redis_url: str | None = None,
    backend: str | None = None,
) -> AgentHandle:
    """``spawn-agent.sh AGENT_ID TASK_ID [MODE] [PROVIDER]``: a detached agent.

    Every argument and limit is checked before Redis is touched or anything
    starts, so bad input spawns nothing.
    """
    validate_agent_ids(task_id, agent_id, mode, provider)
    from cfn.profiles import load_profiles

    backend, command = agent_backend(
        settings, backend, command, load_profiles(settings).get(agent_id)
    )
    parse_memory_limit(settings.agent_memory_limit)
    parse_cpu_limit(settings.agent_cpu_limit)
    place = (workspace or settings.project_root).resolve()
    if not place.is_dir():
        raise InvalidInputError(f"workspace {place} is not a directory")
    url = redis_url or agent_redis_url(settings)
    endpoint = await resolve_endpoint(url)
    context = generate_cli_context(
        task_id,
        agent_id,
        settings=settings,
        redis_host=endpoint.host,
        redis_port=endpoint.port,
        workspace=place,
        mode=mode,
        provider=provider,
        backend=backend,
        redis_username=urlsplit(url).username or settings.redis_username,
    )
    spawner = spawner_for(settings, redis_url=url)
    env = await asyncio.to_thread(
        llm_environment, settings, agent_id, task_id, provider, spawner.engine is not None
    )
    return await spawner.spawn(context, command=command, env=env)


BACKENDS = ("builtin", "claude-code", "command")


def agent_backend(
    settings: Settings,
    backend: str | None,
    command: Sequence[str] | None,
    profile: AgentProfile | None = None,
) -> tuple[str, list[str] | None]:
    """The agent's backend and, for ``command``, the executable it runs, checked.

    The one rule, for ``spawn-agent`` and the loop's launcher alike: the backend asked
    for (``--backend``, a task's option; ``--command`` alone means ``command``), else
    the profile's ``backend:``, else CFN_AGENT_BACKEND, else ``builtin``. A command
    agent runs ``--command``, else the profile's ``command:``, else CFN_AGENT_COMMAND.
    """
    chosen = (
        backend
        or ("command" if command else None)
        or (profile.backend if profile is not None else None)
        or settings.cfn_agent_backend
        or "builtin"
    )
    if chosen not in BACKENDS:
        raise InvalidInputError(
            f"unknown agent backend {chosen!r}; use one of {', '.join(BACKENDS)}"
        )
    if chosen != "command":
        if command:
            raise InvalidInputError(f"--command runs a command agent, not {chosen}")
        return chosen, None
    if command:
        return chosen, list(command)
    line = (profile.command if profile is not None else None) or settings.cfn_agent_command
    if not line:
        raise InvalidInputError(
            "the command backend runs an executable: give --command, name it in the "
            "profile's 'command:' or set CFN_AGENT_COMMAND (e.g. examples/agents/bash-agent.sh)"
        )
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise InvalidInputError(f"the agent command cannot be split into words: {exc}") from None
    if not argv:
        raise InvalidInputError("the agent command is empty")
    return chosen, argv


def llm_environment(
    settings: Settings, agent_id: str, task_id: str, provider: str, containers: bool = False
) -> dict[str, str]:
    """The agent's LLM gateway and token, for the route the router gives it."""
    from cfn.profiles import load_profiles
    from cfn.providers import TaskTraits, load_route_table, select_provider
    from cfn.providers.gateway.server import agent_environment

    table = load_route_table(settings)
    decision = select_provider(
        agent_id,
        TaskTraits(),
        settings=settings,
        table=table,
        profiles=load_profiles(settings),
        provider=provider,
    )
    return agent_environment(
        settings,
        agent_id,
        task_id,
        provider=decision.provider,
        model=decision.model,
        providers=tuple(r.provider for r in decision.chain),
        containers=containers,
    )
