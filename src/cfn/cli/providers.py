"""``cfn providers``: explain routing, list routes, make a one-off call, show usage."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cfn.cli.common import out, print_plain, settings
from cfn.errors import InvalidInputError

if TYPE_CHECKING:
    from cfn.providers import ChatResponse, TaskTraits

# The provider SDKs take about a second to import: commands import them when run,
# so the rest of the CLI (and every agent process) starts without them.

providers_app = typer.Typer(help="LLM provider routing and clients.", no_args_is_help=True)

AgentOpt = Annotated[
    str, typer.Option("--agent", help="Agent id (its profile may name a provider).")
]
ComplexityOpt = Annotated[
    str | None, typer.Option("--complexity", help="Task complexity: low, medium or high.")
]
CostOpt = Annotated[bool, typer.Option("--cost-sensitive", help="The task is cost-sensitive.")]


def _traits(complexity: str | None, cost_sensitive: bool) -> TaskTraits:
    from cfn.providers import TaskTraits
    from cfn.providers.types import COMPLEXITIES

    if complexity is not None and complexity not in COMPLEXITIES:
        raise InvalidInputError(
            f"invalid --complexity {complexity!r}: use one of {', '.join(COMPLEXITIES)}"
        )
    return TaskTraits(complexity, cost_sensitive)  # type: ignore[arg-type]


@providers_app.command("route")
def route_cmd(
    agent: AgentOpt = "coder",
    complexity: ComplexityOpt = None,
    cost_sensitive: CostOpt = False,
    provider: Annotated[str | None, typer.Option("--provider", help="Force a provider.")] = None,
) -> None:
    """Explain which provider and model an agent's call goes to, and why."""
    from cfn.providers import LLMService

    service = LLMService(settings())
    decision = service.route(agent, _traits(complexity, cost_sensitive), provider=provider)
    for number, reason in enumerate(decision.reasons, 1):
        out.print(f"{number}. {reason}", markup=False)
    verdict = "[red]not callable[/]" if decision.problem else "[green]ok[/]"
    out.print(f"→ [bold]{decision.label}[/] ({verdict})")
    if decision.problem:
        raise typer.Exit(1)


@providers_app.command("list")
def list_cmd(
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Check each base URL answers.")
    ] = True,
    urls: Annotated[bool, typer.Option("--urls", help="Show base URLs.")] = False,
) -> None:
    """Routes, whether their key is set, and whether their endpoint answers."""
    from cfn.providers.probe import probe_all
    from cfn.providers.routes import load_route_table
    from cfn.providers.types import OFFLINE

    cfg = settings()
    table = load_route_table(cfg)
    reach = asyncio.run(probe_all(table, timeout=2.0)) if probe else {}
    view = Table(title="Provider routes (" + ", ".join(table.sources) + ")")
    for col in ("provider", "model", "key set", "reachable", "fallbacks"):
        view.add_column(col, overflow="fold")
    if urls:
        view.add_column("api / base url", overflow="fold")
    for name, route in table.routes.items():
        spec = table.specs[name]
        if spec.is_offline:
            creds, reachable = "not needed", "OFFLINE (no model)"
        else:
            creds = (
                ("[green]yes[/]" if spec.key is not None else f"[red]no[/]: {spec.key_vars[0]}")
                if spec.needs_key
                else "not needed"
            )
            reachable = reach.get(name, "not checked")
        chain = ", ".join(str(r.provider) for r in table.chain(route)[1:]) or "-"
        cells = [name, route.model, creds, reachable, chain]
        view.add_row(*cells, *([f"{spec.kind} {spec.base_url}"] if urls else []))
    out.print(view)
    mode = "on" if cfg.cfn_custom_routing else "off (every agent uses DEFAULT_PROVIDER)"
    out.print(f"custom routing (CFN_CUSTOM_ROUTING): {mode}")
    if not table.real_providers_with_keys():
        out.print(
            f"[yellow]No real provider has a key: calls use the {OFFLINE.upper()} provider "
            "(deterministic stand-in, no model is called).[/]"
        )


@providers_app.command("profiles")
def profiles_cmd() -> None:
    """Agent profiles: built-in and from CFN_AGENTS_DIR."""
    from cfn.profiles import load_profiles

    profiles = load_profiles(settings())
    view = Table(title="Agent profiles")
    for col in ("id", "name", "provider", "model", "temperature", "max tokens", "source"):
        view.add_column(col)
    for p in profiles:
        view.add_row(
            p.id,
            p.name,
            p.provider or "-",
            p.model or "-",
            "-" if p.temperature is None else str(p.temperature),
            "-" if p.max_tokens is None else str(p.max_tokens),
            profiles.source(p.id),
        )
    out.print(view)


def _footer(reply: ChatResponse) -> str:
    hops = " | ".join(h.describe() for h in reply.hops)
    return (
        f"[{reply.label}] tokens in/out {reply.usage.input_tokens}/{reply.usage.output_tokens}, "
        f"cost ${reply.cost_usd:.6f}, {reply.latency_ms:.0f} ms; hops: {hops}"
    )


@providers_app.command("call")
def call_cmd(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    agent: AgentOpt = "coder",
    task_id: Annotated[
        str | None,
        typer.Option("--task-id", help="Charge the task's budget in Redis (else: this run only)."),
    ] = None,
    complexity: ComplexityOpt = None,
    cost_sensitive: CostOpt = False,
    provider: Annotated[str | None, typer.Option("--provider", help="Force a provider.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Force a model.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print text as it arrives.")] = False,
) -> None:
    """Send one prompt through routing, fallback and the budget; print the reply."""
    from cfn.coordination.connection import RedisManager
    from cfn.providers import ChatRequest, LLMService, RedisLedger

    cfg = settings()
    traits = _traits(complexity, cost_sensitive)
    request = ChatRequest.of(prompt, system)

    async def main() -> ChatResponse:
        manager = RedisManager.from_settings(cfg) if task_id else None
        service = LLMService(cfg, ledger=RedisLedger(manager) if manager else None)
        try:
            tid = task_id or "cli"
            if not stream:
                return await service.complete(
                    request,
                    agent_id=agent,
                    task_id=tid,
                    task=traits,
                    provider=provider,
                    model=model,
                )
            final: ChatResponse | None = None
            events = service.stream(
                request, agent_id=agent, task_id=tid, task=traits, provider=provider, model=model
            )
            async for event in events:
                if event.kind == "text":
                    out.out(event.text, end="", highlight=False)
                elif event.kind == "tool_call" and event.tool_call is not None:
                    out.print(f"\n[tool call] {event.tool_call.name}({event.tool_call.arguments})")
                elif event.response is not None:
                    final = event.response
            out.out("")
            assert final is not None
            return final
        finally:
            await service.aclose()
            if manager is not None:
                await manager.close()

    reply = asyncio.run(main())
    if not stream:
        print_plain(reply.text)
        for tc in reply.tool_calls:
            print_plain(f"[tool call] {tc.name}({tc.arguments})")
    out.print(_footer(reply), markup=False, style="dim")


@providers_app.command("usage")
def usage_cmd(
    task_id: Annotated[str, typer.Option("--task-id", help="The task.")],
    calls: Annotated[int, typer.Option("--calls", min=0, max=1000, help="Recent calls.")] = 10,
) -> None:
    """LLM spend of a task (from Redis): totals, per agent, recent calls."""
    from cfn.coordination.connection import RedisManager
    from cfn.providers import RedisLedger

    cfg = settings()

    async def main() -> tuple[object, dict[str, object], list[dict[str, object]]]:
        manager = RedisManager.from_settings(cfg)
        try:
            ledger = RedisLedger(manager)
            return (
                await ledger.totals(task_id),
                dict(await ledger.agents(task_id)),
                await ledger.recent_calls(task_id, calls) if calls else [],
            )
        finally:
            await manager.close()

    totals, agents, recent = asyncio.run(main())
    budget = cfg.cfn_task_budget_usd
    view = Table(title=f"LLM usage of task {task_id}")
    for col in ("agent", "calls", "tokens in", "tokens out", "cost (USD)"):
        view.add_column(col)
    for name, t in sorted(agents.items()):
        view.add_row(name, *_cells(t))
    view.add_row("[bold]task[/]", *_cells(totals))
    out.print(view)
    if budget is not None:
        out.print(f"budget (CFN_TASK_BUDGET_USD): ${budget:.4f}")
    for item in recent:
        flag = " OFFLINE" if item.get("offline") else ""
        out.print(
            f"{item.get('agent_id')} {item.get('provider')}:{item.get('model')}{flag} "
            f"{item.get('status')} ${float(str(item.get('cost_usd') or 0)):.6f}",
            markup=False,
        )


def _cells(t: object) -> list[str]:
    from cfn.providers.usage import Totals

    assert isinstance(t, Totals)
    return [str(t.calls), str(t.input_tokens), str(t.output_tokens), f"{t.cost_usd:.6f}"]
