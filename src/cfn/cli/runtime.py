"""``cfn agent run``: the process an agent is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cfn.cli.common import err, settings

agent_app = typer.Typer(
    help="Run an agent (what spawned agent processes execute).", no_args_is_help=True
)


@agent_app.command("run")
def agent_run(
    context: Annotated[
        Path, typer.Option("--context", help="The agent's context JSON (the seed's format).")
    ],
    supervised: Annotated[
        bool,
        typer.Option(
            "--supervised",
            hidden=True,
            help="Given by cfn's spawners: this process is the agent's alone (SIGTERM stops "
            "it in order; what its tools leave behind is ended with it).",
        ),
    ] = False,
) -> None:
    """Run one agent from its context file; exit 0 when it reported success."""
    from cfn.agents.runtime import run_agent

    code, message = run_agent(context, settings(), supervised=supervised)
    if message:
        err.print(message, markup=False)
    if code:
        raise typer.Exit(code)
