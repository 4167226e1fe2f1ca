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
import signal
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cfn.agents import changes
from cfn.agents import signals as agent_signals
from cfn.agents.context import AgentContext
from cfn.agents.heartbeat import Heartbeater
from cfn.agents.steps import StepWriter
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
from cfn.system.proc import become_subreaper, proc_descendants, signal_tree
from cfn.system.sandbox import Sandbox, usable

if TYPE_CHECKING:
    from cfn.agents.claude_code import ClaudeRun
    from cfn.agents.mcp_tools import GatewayTools
    from cfn.providers.usage import Totals

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


#: Claude Code's tools per role, when the profile names none (``tools:``).
CLAUDE_TOOLS: dict[str, tuple[str, ...]] = {
    "implementer": ("Read", "Write", "Edit", "Bash", "Glob", "Grep", "TodoWrite"),
    "validator": ("Read", "Bash", "Glob", "Grep"),
    "product-owner": ("Read", "Glob", "Grep"),
}
#: What the brief asks of a Claude Code agent's last line (its result).
FINAL_LINE = {
    "implementer": (
        "When you are done, end your final reply with ONE line that is a JSON object: "
        '{"confidence": <0..1>, "summary": "...", "files": ["..."], "concerns": "..."}'
    ),
    "validator": (
        "End your final reply with ONE line that is a JSON object: "
        '{"confidence": <0..1, how ready the work is>, "feedback": "...", "summary": "..."}'
    ),
    "product-owner": (
        "End your final reply with ONE line that is a JSON object: "
        '{"decision": "PROCEED" | "ITERATE" | "ABORT", "reason": "...", "confidence": <0..1>}'
    ),
}


def _arguments(call: ToolCall) -> Any:
    try:
        return call.parsed_arguments()
    except ValueError:
        return {"_raw": call.arguments}


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
        *,
        gateway: tuple[str, str] | None = None,
    ) -> None:
        self.context = context
        self.settings = settings
        self.redis = redis
        self.service = service
        self.profile = profile
        #: The LLM gateway's URL and this agent's token (what a Claude Code agent is given).
        self.gateway = gateway
        self.role = context.cfn.role or "implementer"
        self.steps = StepWriter(redis, context.task_id, context.agent_id)
        self.claude_turns = 0
        self.gateway_totals: Totals | None = None
        timeout = min(context.resources.timeout_seconds, 600.0)
        self.workspace = Workspace(
            Path(context.workspace),
            command_timeout=timeout,
            sandbox_mode=settings.cfn_sandbox,
            hidden=(settings.state_dir.resolve(),),
        )
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
            if reply.text:
                await self.steps.write("text", reply.text)
            if not reply.tool_calls:
                return self._final(reply)
            messages.append(Message("assistant", reply.text, reply.tool_calls))
            for call in reply.tool_calls:
                await self.steps.write(
                    "tool_use", tool=call.name, tool_id=call.id, arguments=_arguments(call)
                )
                if self.role != "implementer" and call.name == "write_file":
                    output = "error: this role may not write files"
                elif self.mcp is not None and call.name in self.mcp.names:
                    output = await self._call_mcp(call)
                else:
                    output = await execute(self.workspace, call)
                await self.steps.write(
                    "tool_result",
                    output,
                    tool=call.name,
                    tool_id=call.id,
                    is_error=output.startswith("error"),
                )
                messages.append(Message("tool", output, tool_call_id=call.id))
        return RunResult("failed", self._payload(error=f"no final answer after {MAX_TURNS} turns"))

    # --- the claude-code backend --------------------------------------------------------

    def _claude_run(self) -> ClaudeRun:
        from cfn.agents.claude_code import ClaudeRun, find_claude
        from cfn.mcp.routing import mcp_endpoint

        if self.gateway is None:
            raise CfnError("a claude-code agent needs the LLM gateway's URL and a token")
        binary = find_claude(self.settings.cfn_claude_bin)
        name = self.profile.name if self.profile else self.context.agent_id
        system = INSTRUCTIONS.get(self.role, INSTRUCTIONS["implementer"]).format(name=name)
        if self.profile is not None and self.profile.instructions:
            system += "\n\nYour profile's instructions:\n" + self.profile.instructions
        tools = (
            self.profile.tools
            if self.profile is not None and self.profile.tools
            else CLAUDE_TOOLS.get(self.role, CLAUDE_TOOLS["implementer"])
        )
        mcp: dict[str, Any] | None = None
        url, token = self.settings.mcp_gateway_url, self.settings.cfn_mcp_token
        if url and token is not None:
            mcp = {
                "mcpServers": {
                    "cfn": {
                        "type": "http",
                        "url": mcp_endpoint(url),
                        "headers": {"Authorization": f"Bearer {token.get_secret_value()}"},
                    }
                }
            }
            tools = (*tools, "mcp__cfn")
        base = Path(self.context.cfn.log_file).parent if self.context.cfn.log_file else None
        config = (base or self.settings.state_dir / "claude" / self.context.agent_id) / "claude"
        sandbox = None
        if usable(self.settings.cfn_sandbox):
            # The CLI, its Bash commands and its file tools: the workspace, its own
            # config directory and its binary; not the state directory it lives in.
            config.mkdir(mode=0o700, parents=True, exist_ok=True)
            sandbox = Sandbox(
                self.workspace.root,
                network=True,  # the LLM and MCP gateways (and what the task fetches)
                writable=(config.resolve(),),
                readable=(binary.resolve().parent,),
                hidden=(self.settings.state_dir.resolve(),),
            )
        return ClaudeRun(
            binary=binary,
            workspace=self.workspace.root,
            prompt=_brief(self.context)
            + "\n\n"
            + FINAL_LINE.get(self.role, FINAL_LINE["implementer"]),
            system_prompt_append=system,
            model=self.context.cfn.model or "cfn-routed",
            allowed_tools=tuple(tools),
            gateway_url=self.gateway[0],
            token=self.gateway[1],
            config_dir=config,
            mcp_config=mcp,
            max_turns=self.settings.cfn_claude_max_turns,
            base_env=os.environ,
            sandbox=sandbox,
        )

    async def converse_claude(self) -> RunResult:
        """The work done by the Claude Code CLI; its final reply's last line is the result."""
        from cfn.agents.claude_code import Step, run_claude

        run = self._claude_run()
        self.mcp_note = f"Claude Code {run.binary}"

        async def on_step(step: Step) -> None:
            await self.steps.write(
                step.kind,
                step.text,
                tool=step.tool,
                tool_id=step.tool_id,
                arguments=step.arguments,
                is_error=step.is_error,
            )

        before = await asyncio.to_thread(changes.listing, run.workspace)
        final = await run_claude(run, on_step, timeout=self.context.resources.timeout_seconds)
        await self._report_changes(before, run.workspace)
        self.claude_turns = final.num_turns
        await self._claude_usage()
        if final.is_error or final.subtype != "success":
            why = "; ".join(final.errors) or final.text or final.subtype
            return RunResult(
                "failed", self._payload(error=f"Claude Code ended with an error: {why}")
            )
        return self._final_text(final.text)

    async def _report_changes(self, before: changes.Listing | None, root: Path) -> None:
        """The files the CLI's run changed in the workspace, by any tool (``Bash`` too):
        one ``system`` step naming them (the dashboard's "files changed") and the
        report's ``files``."""
        found = changes.compare(before, await asyncio.to_thread(changes.listing, root))
        if not found:
            return
        for path in found.changed:
            if path not in self.steps.files and str(root / path) not in self.steps.files:
                self.steps.files.append(path)
        summary = ", ".join(found.changed) or "none"
        if found.deleted:
            summary += "; deleted: " + ", ".join(found.deleted)
        await self.steps.write(
            "system",
            f"files changed: {summary}",
            arguments={"files": list(found.changed), "deleted": list(found.deleted)},
        )

    async def _claude_usage(self) -> None:
        """What the gateway charged this agent (the CLI's own figures are Anthropic's prices)."""
        from cfn.providers import RedisLedger

        try:
            self.gateway_totals = await RedisLedger(self.redis).totals(
                self.context.task_id, self.context.agent_id
            )
        except CfnError as exc:
            log.warning("this agent's usage could not be read: %s", exc)

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
        return self._final_text(reply.text)

    def _final_text(self, text: str) -> RunResult:
        final = parse_final(text)
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
        if self.context.cfn.backend == "claude-code":
            totals = self.gateway_totals
            files = [f for f in self.steps.files if f not in payload["files"]]
            payload.update(
                backend="claude-code",
                files=payload["files"] + files,
                turns=self.claude_turns,
                input_tokens=totals.input_tokens if totals else 0,
                output_tokens=totals.output_tokens if totals else 0,
                cost_usd=round(totals.cost_usd, 6) if totals else 0.0,
            )
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
                    # ``work`` too when this run is cancelled (the process's SIGTERM):
                    # it stops what it started before the run ends.
                    for extra in (work, keeper, stopper):
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
            if self.context.cfn.backend == "claude-code":
                return await self.converse_claude()
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
    from cfn.providers.gateway.client import GatewayLLM

    context = AgentContext.from_file(path)
    redis = RedisManager.from_settings(settings)
    url, token = gateway_access(settings, context)
    service = GatewayLLM(url, token)
    try:
        profiles = load_profiles(settings)
        profile = profiles.get(context.cfn.profile or context.agent_id)
        runtime = AgentRuntime(context, settings, redis, service, profile, gateway=(url, token))
        return await runtime.run()
    finally:
        await service.aclose()
        await redis.close()


def gateway_access(settings: Settings, context: AgentContext) -> tuple[str, str]:
    """The agent's LLM gateway and token, as it was given them at spawn.

    An agent run by hand (``cfn agent run`` without a token) is given them
    here, by the user running it, from the gateway cfn starts on first need.
    """
    token = settings.cfn_llm_token
    if settings.cfn_llm_gateway_url and token is not None:
        return settings.cfn_llm_gateway_url, token.get_secret_value()
    from cfn.providers import load_route_table
    from cfn.providers.gateway.server import ensure_gateway, mint_agent_token

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
    return url, minted


def _log_transcript() -> None:
    """The agent's steps go to its log (stderr: agent.log, ``docker logs``), one line each."""
    import sys

    from cfn.agents.steps import transcript

    if not transcript.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        transcript.addHandler(handler)
        transcript.setLevel(logging.INFO)
        transcript.propagate = False


class _Terminated(Exception):
    """The agent process was sent SIGTERM (its supervisor's stop or timeout)."""


async def _stoppable(work: Awaitable[RunResult]) -> RunResult:
    """``work``, cancelled on SIGTERM so that what it started is stopped in order (the
    Claude Code CLI and its commands: SIGTERM, a grace, SIGKILL), not orphaned."""
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def on_sigterm() -> None:
        nonlocal stopped
        if stopped:
            return  # one stop: a second SIGTERM must not cut the CLI's grace short
        stopped = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await work
    except asyncio.CancelledError:
        if stopped:
            raise _Terminated() from None
        raise


def run_agent(
    path: Path, settings: Settings, *, supervised: bool = False
) -> tuple[int, str | None]:
    """One agent process's whole work: ``(exit code, error line or None)``.

    What ``cfn agent run`` and an agent forked by the agent server both do: 0 when
    the agent reported success, 1 when it reported failure, a CfnError's code when
    it could not run at all.

    ``supervised``: the process is the agent's alone, started by cfn's supervisor
    (forked, ``--supervised``, a container). Then a SIGTERM (a stop, the timeout)
    cancels the run, so the Claude Code CLI and its commands get their grace (the
    supervisor signals them too) and the lock is released, before the process ends
    by that SIGTERM; and, as its tools' subreaper, it ends whatever they left
    running below it. Not otherwise:
    ``cfn agent run`` in a shell or in a test's process must not touch processes
    that are not the agent's.
    """
    _log_transcript()
    if not supervised:
        try:
            result = asyncio.run(run_from_file(path, settings))
        except CfnError as exc:
            return exc.exit_code, f"[ERROR] {exc}"
        return _outcome(result)
    # What the agent's tools leave behind when their parent dies (a Claude Code Bash
    # command runs in a session of its own) stays below this process, to be ended here.
    become_subreaper()
    terminated = False
    try:
        result = asyncio.run(_stoppable(run_from_file(path, settings)))
    except CfnError as exc:
        return exc.exit_code, f"[ERROR] {exc}"
    except _Terminated:
        terminated = True
        return 128 + signal.SIGTERM, None
    finally:
        signal_tree(proc_descendants(os.getpid()), signal.SIGKILL)
        if terminated:
            # Stopped as asked, with its tools and CLI ended first: now end as a
            # SIGTERM ends a process, so the supervisor records the signal.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
    return _outcome(result)


def _outcome(result: RunResult) -> tuple[int, str | None]:
    if result.result == "failed":
        return 1, f"[ERROR] agent reported failure: {result.payload.get('error', '')}"
    return 0, None
