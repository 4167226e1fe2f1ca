"""Agent commands: the seed's spawn-agent.sh."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Annotated

import typer

from cfn.agents.spawner import spawn_agent
from cfn.cli.common import print_plain, settings
from cfn.errors import InvalidInputError


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
            settings(), agent_id, task_id, mode, provider, workspace=workspace, command=argv
        )
    )
    print_plain(handle.name)
