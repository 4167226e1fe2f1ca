"""Starting the loop's agents: profile, route, context, process.

The launcher gives each agent a profile by role (implementers: coder,
system-architect; validators: reviewer, tester, security-specialist; the
product owner), asks the router which provider and model serve it (the
profile's hint, the task's complexity and cost sensitivity, or the offline
provider when no key is configured), writes the seed's context JSON, and
starts ``cfn agent run`` through the process spawner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cfn.agents.context import generate_cli_context, redis_endpoint
from cfn.agents.spawner import ExitInfo, ProcessHandle, ProcessSpawner
from cfn.errors import AgentLookupError
from cfn.loop.orchestrator import AgentPlan, RunningAgent
from cfn.providers import LLMService, TaskTraits
from cfn.settings import Settings

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


def describe_exit(info: ExitInfo) -> str:
    return info.reason or info.status


@dataclass
class _Running:
    handle: ProcessHandle
    profile: str | None
    provider: str | None
    model: str | None

    @property
    def pid(self) -> int:
        return self.handle.pid

    async def wait(self) -> str:
        return describe_exit(await self.handle.wait())

    async def kill(self) -> None:
        await self.handle.kill()


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
    ) -> None:
        self.settings = settings
        self.service = service
        self.redis_url = redis_url
        self.workspace = workspace
        self.traits = traits
        self.loop_mode = loop_mode
        self.provider = provider
        self.spawner = ProcessSpawner(settings, redis_url=redis_url)

    async def launch(self, plan: AgentPlan) -> RunningAgent:
        profile = profile_for(plan.role, plan.agent_id)
        decision = self.service.route(profile, self.traits, provider=self.provider)
        endpoint = redis_endpoint(self.redis_url)
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
            epic=str(plan.brief.get("epic", "")),
            feedback=[str(f) for f in plan.brief.get("feedback", [])],
            extra=extra,
        )
        handle = await self.spawner.spawn(context, env=self._mcp_env(plan, profile))
        return _Running(handle, profile, decision.provider, decision.model)

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
        return _Running(handle, profile, None, None)
