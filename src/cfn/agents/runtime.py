"""The agent runtime: ``cfn agent run --context FILE``.

One agent, one process. It loads its context and profile, holds a lock so a
second copy of the same agent (started again after an orchestrator crash)
does not do the work twice, heartbeats, runs a tool-use conversation with
its provider through the router (``LLMService``: budget, fallback, usage),
and reports with the seed's wire format. The result's confidence comes from
the model's final reply, a JSON object on its last line; a reply without a
parseable confidence is reported as failed, never given a default.

Roles:
- ``implementer`` (Loop 3): all tools, works in the workspace.
- ``validator`` (Loop 2): read-only tools plus commands; reviews deliverables
  and gives feedback.
- ``product-owner``: read-only tools; answers PROCEED, ITERATE or ABORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cfn.agents import signals as agent_signals
from cfn.agents.context import AgentContext
from cfn.agents.heartbeat import Heartbeater
from cfn.agents.tools import TOOL_SPECS, Workspace, execute
from cfn.coordination import acl, completion, locks
from cfn.coordination.connection import RedisManager
from cfn.errors import CfnError, WaitTimeoutError
from cfn.profiles import AgentProfile
from cfn.providers import (
    ChatRequest,
    ChatResponse,
    Message,
    TaskTraits,
    ToolCall,
)
from cfn.settings import Settings

if TYPE_CHECKING:
    from cfn.agents.mcp_tools import GatewayTools

log = logging.getLogger(__name__)

MAX_TURNS = 12
READ_ONLY_TOOLS = {"read_file", "list_files", "run_command"}
_JSON_LINE = re.compile(r"\{.*\}", re.DOTALL)

INSTRUCTIONS = {
    "implementer": (
        "You are {name}, an implementer in a CFN Loop team (Loop 3). Do the work the epic "
        "asks for in the workspace, using the tools (paths are relative to the workspace). "
        "When you are done, reply with a summary whose LAST line is one JSON object: "
        '{{"confidence": <0..1, how sure you are the work is complete and correct>, '
        '"summary": "...", "files": ["..."], "concerns": "..."}}.'
    ),
    "validator": (
        "You are {name}, a validator in a CFN Loop team (Loop 2). Review the implementers' "
        "deliverables in the workspace against the epic; you may read files and run "
        "commands (tests, linters) but not write. Reply with a review whose LAST line is one "
        'JSON object: {{"confidence": <0..1, how ready the work is>, "feedback": "what must '
        'change, if anything", "summary": "..."}}.'
    ),
    "product-owner": (
        "You are {name}, the product owner of a CFN Loop task. Given the epic, the gate and "
        "consensus figures and the deliverables, decide. Reply with a LAST line that is one "
        'JSON object: {{"decision": "PROCEED" | "ITERATE" | "ABORT", "reason": "...", '
        '"confidence": <0..1>}}.'
    ),
}


@dataclass
class RunResult:
    result: str  # success or failed
    payload: dict[str, Any] = field(default_factory=dict)


def parse_final(text: str) -> dict[str, Any] | None:
    """The JSON object on the reply's last line that holds one (models add prose above)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip().strip("`").strip()
        if not line.startswith("{"):
            continue
        match = _JSON_LINE.search(line)
        if match is None:
            continue
        try:
            value = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _brief(context: AgentContext) -> str:
    extra = context.cfn.extra
    parts = [f"Task {context.task_id}, iteration {context.cfn.iteration or 1}."]
    parts.append(f"Epic:\n{context.cfn.epic or extra.get('epic') or '(none given)'}")
    if context.cfn.feedback:
        parts.append(
            "Feedback from the previous iteration:\n- " + "\n- ".join(context.cfn.feedback)
        )
    if extra.get("deliverables"):
        parts.append("Deliverables to review:\n" + json.dumps(extra["deliverables"], indent=2))
    for name in ("gate", "consensus"):
        if extra.get(name):
            parts.append(f"{name}: {json.dumps(extra[name])}")
    return "\n\n".join(parts)


class AgentLLM(Protocol):
    """What the runtime calls a model through: the LLM gateway's client
    (``cfn.providers.gateway.client.GatewayLLM``) in an agent process, or an
    in-process ``LLMService`` where a test drives the runtime directly."""

    async def complete(
        self,
        request: ChatRequest,
        *,
        agent_id: str,
        task_id: str,
        task: TaskTraits | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> ChatResponse: ...

    async def aclose(self) -> None: ...


def _lock_resource(context: AgentContext) -> str:
    """The agent's lock; its ACL user is granted exactly this key (cfn.coordination.acl)."""
    return acl.lock_resource(context.task_id, context.agent_id)


class AgentRuntime:
    def __init__(
        self,
        context: AgentContext,
        settings: Settings,
        redis: RedisManager,
        service: AgentLLM,
        profile: AgentProfile | None,
    ) -> None:
        self.context = context
        self.settings = settings
        self.redis = redis
        self.service = service
        self.profile = profile
        self.role = context.cfn.role or "implementer"
        timeout = min(context.resources.timeout_seconds, 600.0)
        self.workspace = Workspace(Path(context.workspace), command_timeout=timeout)
        self.responses: list[ChatResponse] = []
        #: The MCP gateway's tools for this agent, when it was given a token.
        self.mcp: GatewayTools | None = None
        self.mcp_note: str | None = None

    # --- the conversation ---------------------------------------------------------------

    def _request(self, messages: list[Message]) -> ChatRequest:
        allowed = (
            TOOL_SPECS
            if self.role == "implementer"
            else tuple(t for t in TOOL_SPECS if t.name in READ_ONLY_TOOLS)
        )
        if self.role == "product-owner":
            allowed = tuple(t for t in allowed if t.name != "run_command")
        if self.mcp is not None:
            allowed = allowed + self.mcp.specs
        return ChatRequest(
            messages=tuple(messages),
            tools=allowed,
            temperature=self.profile.temperature if self.profile else None,
            max_tokens=self.profile.max_tokens if self.profile else None,
        )

    async def converse(self) -> RunResult:
        name = self.profile.name if self.profile else self.context.agent_id
        system = INSTRUCTIONS.get(self.role, INSTRUCTIONS["implementer"]).format(name=name)
        if self.profile is not None and self.profile.instructions:
            # The profile's own instructions add to the role's; the reply format stays the role's.
            system += "\n\nYour profile's instructions:\n" + self.profile.instructions
        messages = [Message("system", system), Message("user", _brief(self.context))]
        traits = TaskTraits(
            complexity=self.context.cfn.extra.get("complexity"),
            cost_sensitive=bool(self.context.cfn.extra.get("cost_sensitive")),
        )
        for _turn in range(MAX_TURNS):
            reply = await self.service.complete(
                self._request(messages),
                agent_id=self.context.agent_id,
                task_id=self.context.task_id,
                task=traits,
                provider=self.context.provider,
                model=self.context.cfn.model,
            )
            self.responses.append(reply)
            if not reply.tool_calls:
                return self._final(reply)
            messages.append(Message("assistant", reply.text, reply.tool_calls))
            for call in reply.tool_calls:
                if self.role != "implementer" and call.name == "write_file":
                    output = "error: this role may not write files"
                elif self.mcp is not None and call.name in self.mcp.names:
                    output = await self._call_mcp(call)
                else:
                    output = await execute(self.workspace, call)
                messages.append(Message("tool", output, tool_call_id=call.id))
        return RunResult("failed", self._payload(error=f"no final answer after {MAX_TURNS} turns"))

    async def _call_mcp(self, call: ToolCall) -> str:
        assert self.mcp is not None
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError as exc:
            return f"error: arguments are not valid JSON ({exc})"
        if not isinstance(arguments, dict):
            return "error: arguments must be a JSON object"
        try:
            return await self.mcp.call(call.name, arguments)
        except Exception as exc:  # the gateway went away: the model hears it
            return f"error: MCP gateway call failed: {exc}"

    def _final(self, reply: ChatResponse) -> RunResult:
        final = parse_final(reply.text)
        if final is None:
            return RunResult(
                "failed", self._payload(error="the final reply has no JSON line with a confidence")
            )
        payload = self._payload(**{k: v for k, v in final.items() if k not in {"files"}})
        confidence, why = completion.parse_confidence(final)
        if why is not None:
            payload.pop("confidence", None)
            payload["error"] = f"unusable confidence in the final reply: {why}"
            return RunResult("failed", payload)
        payload["confidence"] = confidence
        return RunResult("success", payload)

    def _payload(self, **fields: Any) -> dict[str, Any]:
        last = self.responses[-1] if self.responses else None
        payload: dict[str, Any] = {
            "agent_id": self.context.agent_id,
            "role": self.role,
            "iteration": self.context.cfn.iteration,
            "files": list(self.workspace.written),
            "provider": last.provider if last else self.context.provider,
            "model": last.model if last else self.context.cfn.model,
            "offline": bool(last and last.offline),
            "turns": len(self.responses),
            "input_tokens": sum(r.usage.input_tokens for r in self.responses),
            "output_tokens": sum(r.usage.output_tokens for r in self.responses),
            "cost_usd": round(sum(r.cost_usd for r in self.responses), 6),
        }
        if self.mcp_note is not None:
            payload["mcp"] = self.mcp_note
        payload.update(fields)
        return payload

    # --- the whole run ----------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Lock, heartbeat, converse, report. Exactly one report per run."""
        ctx = self.context
        interval = ctx.cfn.heartbeat.interval
        lock_ttl = max(3 * interval, 1.0)
        try:
            handle = await locks.acquire_lock(
                self.redis, _lock_resource(ctx), ttl=lock_ttl, wait=lock_ttl + 1.0
            )
        except WaitTimeoutError:
            log.warning("another copy of %s is running; this one exits", ctx.agent_id)
            return RunResult("duplicate")
        try:
            if await self._already_reported():
                log.warning("%s already reported; nothing to do", ctx.agent_id)
                return RunResult("duplicate")
            async with Heartbeater(
                self.redis, ctx.task_id, ctx.agent_id, interval, pid=os.getpid()
            ):
                keeper = asyncio.create_task(self._keep_lock(handle, lock_ttl))
                stopper = asyncio.create_task(self._watch_stop())
                work = asyncio.create_task(self._converse_safely())
                try:
                    done, _pending = await asyncio.wait(
                        {work, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if work in done:
                        result = work.result()
                    else:
                        work.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await work
                        result = RunResult("failed", self._payload(error=stopper.result()))
                finally:
                    for extra in (keeper, stopper):
                        extra.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await extra
                await completion.signal_completion(
                    self.redis,
                    ctx.task_id,
                    ctx.agent_id,
                    result.result,
                    json.dumps(result.payload, default=str),
                    max_bytes=self.settings.cfn_context_max_bytes,
                )
                return result
        finally:
            with contextlib.suppress(CfnError):
                await locks.release_lock(self.redis, handle.resource, handle.token)

    async def _converse_safely(self) -> RunResult:
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._open_mcp(stack)
                return await self.converse()
        except CfnError as exc:
            return RunResult("failed", self._payload(error=str(exc)))

    async def _open_mcp(self, stack: contextlib.AsyncExitStack) -> None:
        """Connect to the MCP gateway when this agent was given a token for it."""
        url = self.settings.mcp_gateway_url
        token = self.settings.cfn_mcp_token
        if not url or token is None:
            return
        from cfn.agents.mcp_tools import GatewayTools  # the MCP SDK only when used

        try:
            self.mcp = await stack.enter_async_context(GatewayTools(url, token.get_secret_value()))
            self.mcp_note = f"{len(self.mcp.specs)} MCP tools via {url}"
        except Exception as exc:
            # The agent still works with its built-in tools; the report says why not MCP.
            self.mcp = None
            self.mcp_note = f"MCP gateway {url} unavailable: {exc}"
            log.warning("%s", self.mcp_note)

    async def _already_reported(self) -> bool:
        reported = await completion.reported_agents(self.redis, self.context.task_id)
        return self.context.agent_id in reported

    async def _keep_lock(self, handle: locks.LockHandle, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            with contextlib.suppress(CfnError):
                await locks.extend_lock(self.redis, handle.resource, handle.token, ttl)

    async def _watch_stop(self) -> str:
        """Returns (ending the run) when a ``stop`` signal arrives for this agent."""
        while True:
            try:
                signal = await agent_signals.wait_agent_signal(
                    self.redis, self.context.task_id, self.context.agent_id, 3600.0
                )
            except WaitTimeoutError:
                continue
            if signal.type == agent_signals.STOP:
                reason = signal.data.get("reason") or "stopped by a stop signal"
                return f"stopped: {reason}"


async def run_from_file(path: Path, settings: Settings) -> RunResult:
    """Entry point of ``cfn agent run``."""
    from cfn.profiles import load_profiles

    context = AgentContext.from_file(path)
    redis = RedisManager.from_settings(settings)
    service = agent_llm(settings, context)
    try:
        profiles = load_profiles(settings)
        profile = profiles.get(context.cfn.profile or context.agent_id)
        runtime = AgentRuntime(context, settings, redis, service, profile)
        return await runtime.run()
    finally:
        await service.aclose()
        await redis.close()


def agent_llm(settings: Settings, context: AgentContext) -> AgentLLM:
    """The agent's LLM: the gateway and token it was given at spawn.

    An agent run by hand (``cfn agent run`` without a token) is given one
    here, by the user running it, from the gateway cfn starts on first need.
    """
    from cfn.providers.gateway.client import GatewayLLM
    from cfn.providers.gateway.server import ensure_gateway, mint_agent_token

    token = settings.cfn_llm_token
    if settings.cfn_llm_gateway_url and token is not None:
        return GatewayLLM(settings.cfn_llm_gateway_url, token.get_secret_value())
    from cfn.providers import load_route_table

    url = ensure_gateway(settings)
    table = load_route_table(settings)
    route = table.route(context.provider, context.cfn.model)
    minted = mint_agent_token(
        settings,
        context.agent_id,
        context.task_id,
        provider=route.provider,
        model=route.model,
        providers=tuple(r.provider for r in table.chain(route)),
    )
    return GatewayLLM(url, minted)


def run_agent(path: Path, settings: Settings) -> tuple[int, str | None]:
    """One agent process's whole work: ``(exit code, error line or None)``.

    What ``cfn agent run`` and an agent forked by the agent server both do: 0 when
    the agent reported success, 1 when it reported failure, a CfnError's code when
    it could not run at all.
    """
    try:
        result = asyncio.run(run_from_file(path, settings))
    except CfnError as exc:
        return exc.exit_code, f"[ERROR] {exc}"
    if result.result == "failed":
        return 1, f"[ERROR] agent reported failure: {result.payload.get('error', '')}"
    return 0, None
