"""Agent commands: the seed's spawn-agent.sh; ``cfn agents list | kill`` (docker ps / kill)."""

from __future__ import annotations

import asyncio
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cfn.agents.spawn.agent import spawn_agent
from cfn.cli.common import err, out, print_json, print_plain, settings
from cfn.errors import InvalidInputError
from cfn.troubleshoot import find_agents, kill_agent

if TYPE_CHECKING:
    from cfn.agents.forkserver import AgentServer

agents_app = typer.Typer(help="Agents spawned here: list them, kill one.", no_args_is_help=True)
server_app = typer.Typer(
    help="The agent server builtin agents are forked from (CFN_AGENT_SERVER).",
    no_args_is_help=True,
)
agents_app.add_typer(server_app, name="server")
STATUS_STYLE = {"running": "yellow", "exited": "green", "starting": "cyan"}


def spawn_agent_cmd(
    agent_id: Annotated[str, typer.Argument(help="Agent id (1-128 of A-Z a-z 0-9 . _ -).")],
    task_id: Annotated[str, typer.Argument(help="Task id (1-128 of A-Z a-z 0-9 . _ -).")],
    mode: Annotated[str, typer.Argument(help="The agent's execution mode.")] = "cli",
    provider: Annotated[str, typer.Argument(help="LLM provider for the agent.")] = "zai",
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="Run this (shell words, no shell) instead of `python -m cfn agent run "
            "--context FILE`, e.g. 'bash examples/agents/bash-agent.sh'.",
        ),
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", help="The agent's working directory; default: the checkout."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="builtin | claude-code | command (default: CFN_AGENT_BACKEND, else builtin; "
            "--command implies command).",
        ),
    ] = None,
) -> None:
    """Start an agent detached (like `docker run -d`) and print its name, cfn-agent-AGENT-TASK.

    Limits come from AGENT_MEMORY_LIMIT (1g), AGENT_CPU_LIMIT (1.0) and AGENT_TIMEOUT
    (300 s); output goes to <state>/tasks/TASK/agents/AGENT/agent.log.
    """
    argv: list[str] | None = None
    if command is not None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise InvalidInputError(f"--command cannot be split into words: {exc}") from None
        if not argv:
            raise InvalidInputError("--command is empty")
    handle = asyncio.run(
        spawn_agent(
            settings(),
            agent_id,
            task_id,
            mode,
            provider,
            workspace=workspace,
            command=argv,
            backend=backend,
        )
    )
    print_plain(handle.name)


def _age(started: float | None) -> str:
    if started is None:
        return "-"
    seconds = max(0.0, time.time() - started)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M")


@agents_app.command("list")
def list_cmd(
    task_id: Annotated[str | None, typer.Option("--task-id", help="Only this task.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="Ended agents too (like docker ps -a).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Agents spawned from this checkout's state dir: running ones (all with --all)."""
    found = find_agents(settings(), task_id=task_id)
    if not show_all:
        found = [a for a in found if a.status in ("running", "starting")]
    if as_json:
        print_json([a.to_dict() for a in found])
        return
    table = Table(title=f"{len(found)} agent(s)" + ("" if show_all else " running"))
    for column in ("task", "agent", "pid", "status", "started", "exit", "log"):
        table.add_column(column)
    for agent in found:
        style = STATUS_STYLE.get(agent.status, "red")
        code = agent.exit.exit_code if agent.exit else None
        table.add_row(
            agent.task_id,
            agent.agent_id,
            str(agent.pid or "-"),
            f"[{style}]{agent.status}[/]",
            _age(agent.started_at),
            "-" if agent.exit is None else (str(code) if code is not None else agent.exit.reason),
            str(agent.log_path),
        )
    out.print(table)


@agents_app.command("kill")
def kill_cmd(
    agent_id: Annotated[str, typer.Argument(help="The agent to stop (e.g. impl-1-1).")],
    task_id: Annotated[
        str | None, typer.Option("--task-id", help="Its task, when several tasks use the id.")
    ] = None,
    graceful: Annotated[
        bool,
        typer.Option("--graceful", help="SIGTERM first, SIGKILL after CFN_AGENT_KILL_GRACE."),
    ] = False,
) -> None:
    """Stop a running agent (SIGKILL to it and everything it started) and wait for its end."""
    info = asyncio.run(kill_agent(settings(), agent_id, task_id, graceful=graceful))
    err.print(f"{info.name} stopped: {info.status} ({info.reason})", markup=False)


def _server() -> AgentServer:
    from cfn.agents.forkserver import AgentServer

    return AgentServer.from_settings(settings())


@server_app.command("status")
def server_status() -> None:
    """Show the agent server of this checkout (exit 1 when none runs)."""
    from cfn.agents.forkserver import code_stamp

    server = _server()
    info = server.running()
    table = Table(show_header=False)
    table.add_row("mode", settings().cfn_agent_server)
    table.add_row("running", "[green]yes[/]" if info else "[red]no[/]")
    table.add_row("directory", str(server.dir))
    if info is not None:
        current = info.stamp == code_stamp()
        table.add_row("pid", str(info.pid))
        table.add_row("socket", str(info.socket))
        table.add_row("up", _age(info.started_at))
        table.add_row("agents now", str(len(server.agents(info.pid))))
        table.add_row("code", "current" if current else "[yellow]changed (retiring)[/]")
        table.add_row("idle exit", f"{server.idle:g} s without agents")
    out.print(table)
    if info is None:
        raise typer.Exit(1)


@server_app.command("serve", hidden=True)
def server_serve(
    directory: Annotated[Path, typer.Argument(help="The server's directory.")],
    idle: Annotated[float, typer.Argument(min=0.001, max=86400, help="Idle seconds.")],
    preload: Annotated[
        bool, typer.Option("--preload/--no-preload", help="Import what children use first.")
    ] = True,
) -> None:
    """Run the agent server in the foreground (what agents and commands start on demand)."""
    from cfn.cli.served import serve

    raise typer.Exit(serve(directory, idle, preload=preload))


@server_app.command("start")
def server_start() -> None:
    """Start the agent server now (agents start it on demand otherwise)."""
    info = _server().start()
    out.print(f"agent server pid {info.pid} on {info.socket}")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the agent server (running agents keep running; a new one starts on demand)."""
    if _server().stop():
        out.print("agent server stopped")
    else:
        out.print("agent server was not running")
