"""``cfn mcp``: tokens for agents and operators; the MCP servers' processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cfn.cli.common import out, print_plain, settings
from cfn.errors import InvalidInputError

if TYPE_CHECKING:
    from cfn.mcp.launcher import Launcher, ServerStatus

mcp_app = typer.Typer(help="MCP servers, gateway and tokens.", no_args_is_help=True)


def _names(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


@mcp_app.command("token")
def token_cmd(
    agent_id: Annotated[str, typer.Option("--agent-id", help="The agent the token is for.")],
    task_id: Annotated[str, typer.Option("--task-id", help="The task the token is for.")],
    skills: Annotated[
        str, typer.Option("--skills", help="Comma-separated skills, e.g. redis-management.")
    ],
    scope: Annotated[
        str, typer.Option("--scope", help="read (default) or read,write (allows deletes).")
    ] = "read",
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Lifetime in seconds; default MCP_TOKEN_TTL.")
    ] = None,
) -> None:
    """Print a signed token (JWT) for an agent: its skills decide which servers it reaches."""
    from cfn.mcp.tokens import TokenAuthority

    cfg = settings()
    skill_list = _names(skills)
    if not skill_list:
        raise InvalidInputError("--skills needs at least one skill")
    from cfn.mcp.routing import skill_mapping

    known = skill_mapping(cfg)
    unknown = [s for s in skill_list if s not in known]
    if unknown:
        raise InvalidInputError(
            f"unknown skill(s) {', '.join(map(repr, unknown))}: MCP_SKILL_MAPPING knows "
            f"{', '.join(sorted(known))}"
        )
    token = TokenAuthority.from_settings(cfg).mint(
        agent_id,
        task_id,
        skill_list,
        scope=_names(scope) or ["read"],
        ttl=ttl if ttl is not None else cfg.mcp_token_ttl,
    )
    print_plain(token)


@mcp_app.command("up")
def up_cmd(
    servers: Annotated[
        str | None,
        typer.Option("--servers", help="Comma-separated subset (default: all and the gateway)."),
    ] = None,
) -> None:
    """Start the MCP servers and the gateway as processes with the seed's limits."""
    from cfn.mcp.launcher import Launcher

    launcher = Launcher(settings())
    started = launcher.up(_names(servers))
    out.print(f"started: {', '.join(started)}" if started else "already running")
    _status_table(launcher)


@mcp_app.command("down")
def down_cmd(
    servers: Annotated[
        str | None, typer.Option("--servers", help="Comma-separated subset (default: all).")
    ] = None,
) -> None:
    """Stop the MCP servers started by `cfn mcp up`."""
    from cfn.mcp.launcher import Launcher

    stopped = Launcher(settings()).down(_names(servers))
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@mcp_app.command("status")
def status_cmd() -> None:
    """Show each server: running, healthy, port, limits, memory in use (exit 1 if any is down)."""
    from cfn.mcp.launcher import Launcher

    statuses = _status_table(Launcher(settings()))
    if not all(s.running and s.healthy for s in statuses):
        raise typer.Exit(1)


def _status_table(launcher: Launcher) -> list[ServerStatus]:
    statuses = launcher.status()
    table = Table(title="MCP servers")
    for column in ("server", "state", "pid", "port", "limits", "memory", "cpus", "in use"):
        table.add_column(column)
    for item in statuses:
        if not item.running:
            state = "[red]stopped[/]"
        elif item.healthy:
            state = "[green]healthy[/]"
        else:
            state = f"[yellow]unhealthy[/] {item.detail}"
        used = f"{item.memory_bytes / 1048576:.0f} MiB" if item.memory_bytes else "-"
        table.add_row(
            item.name,
            state,
            str(item.pid or "-"),
            str(item.port or "-"),
            item.limits,
            item.memory_limit,
            f"{item.cpu_limit:g}",
            used,
        )
    out.print(table)
    return statuses
