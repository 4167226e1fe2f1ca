"""Starting the loop's agents: profile, route, context, process.

The launcher gives each agent a profile by role (implementers: coder,
system-architect; validators: reviewer, tester, security-specialist; the
product owner), asks the router which provider and model serve it (the
profile's hint, the task's complexity and cost sensitivity, or the offline
provider when no key is configured), writes the seed's context JSON, and
starts ``cfn agent run`` in the runtime the settings pick (``spawner_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path

from cfn.agents.context import (
    CONTEXT_FILE,
    AgentContext,
    generate_cli_context,
    resolve_endpoint,
)
from cfn.agents.spawn import spawner_for
from cfn.agents.spawn.agent import agent_backend
from cfn.agents.spawn.base import AgentHandle, ExitInfo, Spawner
from cfn.coordination.acl import AgentAcl, AgentCredentials, with_credentials
from cfn.errors import AgentLookupError, AgentSpawnError, CfnError, InvalidInputError
from cfn.loop.ports import AgentPlan, RunningAgent
from cfn.profiles import AgentProfile
from cfn.providers import LLMService, TaskTraits
from cfn.providers.gateway.server import agent_environment, ensure_gateway
from cfn.settings import Settings
from cfn.system.proc import proc_cpu_ticks

ROLE_PROFILES: dict[str, tuple[str, ...]] = {
    "implementer": ("coder", "system-architect"),
    "validator": ("reviewer", "tester", "security-specialist"),
    "product-owner": ("product-owner",),
}


#: MCP skills each built-in profile's token carries (skill_to_mcp_mapping decides servers).
PROFILE_SKILLS: dict[str, tuple[str, ...]] = {
    "coder": ("redis-management",),
    "system-architect": ("redis-management",),
    "reviewer": ("security-scanning",),
    "tester": ("browser-automation", "security-scanning"),
    "security-specialist": ("security-scanning",),
    "product-owner": ("redis-management",),
}


def profile_for(role: str, agent_id: str) -> str:
    """Profiles rotate through the role's list by the agent's index (``impl-2-1`` → 2nd)."""
    choices = ROLE_PROFILES.get(role, ("coder",))
    parts = agent_id.split("-")
    index = int(parts[1]) - 1 if len(parts) > 2 and parts[1].isdigit() else 0
    return choices[index % len(choices)]


#: How long a user outlives the orchestrator's watch when its agent has not ended yet.
log = logging.getLogger(__name__)

REAP_WAIT = 30.0
#: How long the launcher trusts that the LLM gateway it found still runs.
GATEWAY_RECHECK = 30.0
_REAPERS: set[asyncio.Future[None]] = set()


def _in_background(work: Coroutine[object, object, None]) -> asyncio.Task[None]:
    """Run ``work`` as its own task, kept alive until done (the loop only holds weak
    references to tasks)."""
    task = asyncio.ensure_future(work)
    _REAPERS.add(task)
    task.add_done_callback(_REAPERS.discard)
    return task


def describe_exit(info: ExitInfo) -> str:
    return info.reason or info.status


@dataclass
class _Running:
    handle: AgentHandle
    profile: str | None
    provider: str | None
    model: str | None
    acl: AgentAcl | None = None
    backend: str | None = None
    _deleting: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int:
        return self.handle.pid

    async def wait(self) -> str:
        try:
            info = await self.handle.wait()
        except asyncio.CancelledError:
            self.release()
            raise
        await self._drop_user()
        return describe_exit(info)

    def release(self) -> None:
        """The user goes once the process has ended, in the background. Called when the
        orchestrator stops watching: its watcher may have been cancelled before it ever
        ran (an agent that reported before the collector looked), so ``wait``'s own
        cancellation is not enough."""
        if self.acl is not None:
            _in_background(self._drop_user_after_exit())

    async def _drop_user(self) -> None:
        """The agent has ended: delete its Redis ACL user (and with it any connection).

        The deletion is a task of its own that a cancellation of the caller does not
        reach: the orchestrator cancels an agent's watcher once its team is collected,
        and a watcher cancelled while it talked to Redis left the user behind for good
        (``self.acl`` was already cleared, so ``release`` had nothing left to do)."""
        if self.acl is not None:
            acl, self.acl = self.acl, None
            self._deleting = _in_background(acl.delete(self.handle.task_id, self.handle.agent_id))
        if self._deleting is not None:
            await asyncio.shield(self._deleting)

    async def _drop_user_after_exit(self) -> None:
        try:
            async with asyncio.timeout(REAP_WAIT):
                await asyncio.shield(self.handle.wait())
        except TimeoutError:
            pass
        except Exception as exc:  # the user goes whatever waiting for the process did
            log.warning("waiting for %s failed (%s); its ACL user goes now", self.handle, exc)
        finally:
            await self._drop_user()

    async def kill(self) -> None:
        await self.handle.kill()

    def cpu_ticks(self) -> int | None:
        return proc_cpu_ticks(self.handle.pid)


class ProcessLauncher:
    def __init__(
        self,
        settings: Settings,
        service: LLMService,
        redis_url: str,
        workspace: Path,
        traits: TaskTraits,
        loop_mode: str,
        *,
        provider: str | None = None,
        backend: str | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.backend = backend
        self._gateway: tuple[str, float] | None = None
        self.redis_url = redis_url
        self.workspace = workspace
        self.traits = traits
        self.loop_mode = loop_mode
        self.provider = provider
        self.spawner: Spawner = spawner_for(settings, redis_url=redis_url)
        # Sentinel-followed masters and failovers would lose the user (ACLs do not
        # replicate), and a unix:// URL has no user part: shared credentials there.
        shared = settings.cfn_redis_sentinels or not redis_url.startswith(("redis://", "rediss://"))
        self.acl = AgentAcl(
            [redis_url, settings.redis_fallback_1 or ""],
            "off" if shared else settings.cfn_redis_agent_acl,
        )

    async def launch(self, plan: AgentPlan) -> RunningAgent:
        profile = profile_for(plan.role, plan.agent_id)
        decision = self.service.route(profile, self.traits, provider=self.provider)
        backend, command = self.backend_of(decision.profile)
        endpoint = await resolve_endpoint(self.redis_url)
        creds = await self.acl.create(plan.task_id, plan.agent_id)
        extra: dict[str, object] = {
            key: plan.brief[key]
            for key in ("deliverables", "complexity", "cost_sensitive", "gate", "consensus")
            if key in plan.brief
        }
        context = generate_cli_context(
            plan.task_id,
            plan.agent_id,
            settings=self.settings,
            redis_host=endpoint.host,
            redis_port=endpoint.port,
            workspace=self.workspace,
            provider=decision.provider,
            role=plan.role,
            loop=plan.loop,
            iteration=plan.iteration,
            loop_mode=self.loop_mode,
            profile=profile,
            model=decision.model,
            backend=backend,
            epic=str(plan.brief.get("epic", "")),
            feedback=[str(f) for f in plan.brief.get("feedback", [])],
            extra=extra,
            redis_username=creds.username if creds else "",
            redis_password=creds.password if creds else "",
        )
        llm = agent_environment(
            self.settings,
            plan.agent_id,
            plan.task_id,
            provider=decision.provider,
            model=decision.model,
            providers=tuple(r.provider for r in decision.chain),
            url=await self._gateway_url(),
        )
        env = {**self._mcp_env(plan, profile), **self._redis_env(creds), **llm}
        try:
            handle = await self.spawner.spawn(context, command=command, env=env)
        except BaseException:
            if creds is not None:
                with contextlib.suppress(Exception):
                    await self.acl.delete(plan.task_id, plan.agent_id)
            raise
        acl = self.acl if creds is not None else None
        return _Running(handle, profile, decision.provider, decision.model, acl, backend)

    def backend_of(self, profile: AgentProfile | None) -> tuple[str, list[str] | None]:
        """The agent's backend (the task's, the profile's, CFN_AGENT_BACKEND, builtin) and,
        for ``command``, the executable it runs (``agents.spawn.agent.agent_backend``)."""
        try:
            return agent_backend(self.settings, self.backend, None, profile)
        except InvalidInputError as exc:
            raise AgentSpawnError(str(exc)) from None

    async def _gateway_url(self) -> str:
        """The LLM gateway's URL, made sure of (started if need be) at most every
        GATEWAY_RECHECK seconds, not once per agent: a team starts in one go."""
        now = time.monotonic()
        if self._gateway is None or now - self._gateway[1] > GATEWAY_RECHECK:
            url = await asyncio.to_thread(
                ensure_gateway, self.settings, containers=self.spawner.engine is not None
            )
            self._gateway = (url, now)
        return self._gateway[0]

    def _redis_env(self, creds: AgentCredentials | None) -> dict[str, str]:
        """The agent's own Redis user (per-agent ACL), for any spawner."""
        if creds is None:
            return {}
        return {
            "REDIS_URL": with_credentials(self.redis_url, creds.username, creds.password),
            "REDIS_USERNAME": creds.username,
            "REDIS_PASSWORD": creds.password,
            "REDISCLI_AUTH": creds.password,
        }

    def _mcp_env(self, plan: AgentPlan, profile: str) -> dict[str, str]:
        """A signed MCP token for the agent, minted at spawn, when a gateway is configured."""
        url = self.settings.mcp_gateway_url
        if not url:
            return {}
        from cfn.mcp.tokens import TokenAuthority

        token = TokenAuthority.from_settings(self.settings).mint(
            plan.agent_id,
            plan.task_id,
            PROFILE_SKILLS.get(profile, ()),
            ttl=self.settings.mcp_token_ttl + self.settings.agent_timeout,
        )
        return {"MCP_GATEWAY_URL": url, "CFN_MCP_TOKEN": token}

    async def reattach(self, plan: AgentPlan, pid: int | None) -> RunningAgent | None:
        try:
            handle = await self.spawner.attach(plan.task_id, plan.agent_id, pid)
        except AgentLookupError:
            return None
        if not handle.running:
            return None
        profile = profile_for(plan.role, plan.agent_id)
        acl = self.acl if self.acl.enabled else None
        # What it was started with (its route, its backend) is in its context file:
        # the resumed orchestrator shows the same as the one that started it.
        provider = model = backend = None
        try:
            context = AgentContext.from_file(
                self.spawner.agent_dir(plan.task_id, plan.agent_id) / CONTEXT_FILE
            )
        except CfnError as exc:
            log.warning("%s's context could not be read again: %s", plan.agent_id, exc)
        else:
            provider, model = context.cfn.provider, context.cfn.model
            backend = context.cfn.backend
        return _Running(handle, profile, provider, model, acl, backend)
