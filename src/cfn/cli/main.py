"""``cfn``: the command line. Commands parse, call the package, print.

The command table below names where each command lives; a command's module is
imported only when that command runs (or when help lists it). Every ``cfn``
process used to import all of them, ~0.7 s of CPU before a one-line LPUSH.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup
from typer.main import get_command, get_command_from_info, get_group
from typer.models import CommandInfo

from cfn._version import __version__
from cfn.cli.common import err, print_plain, setup_logging
from cfn.errors import CfnError

if TYPE_CHECKING:
    # Typer vendors its own click; its types are the ones the group works with.
    from typer._click import Command, Context

#: name -> (module under cfn.cli, attribute): a Typer sub-app is a group, a function a command.
COMMANDS: dict[str, tuple[str, str]] = {
    "context": ("coordination", "context_app"),
    "signal": ("coordination", "signal_app"),
    "lock": ("coordination", "lock_app"),
    "redis": ("redis_server", "redis_app"),
    "providers": ("providers", "providers_app"),
    "llm-gateway": ("gateway", "gateway_app"),
    "db": ("store", "db_app"),
    "skills": ("store", "skills_app"),
    "collect-results": ("coordination", "collect_results_cmd"),
    "wait-completion": ("coordination", "wait_completion_cmd"),
    "keys": ("coordination", "keys_cmd"),
    "spawn-agent": ("agents", "spawn_agent_cmd"),
    "agents": ("agents", "agents_app"),
    "health": ("health", "health_cmd"),
    "logs": ("debug", "logs_cmd"),
    "stats": ("debug", "stats_cmd"),
    "agent": ("runtime", "agent_app"),
    "mcp": ("mcp", "mcp_app"),
    "orchestrate": ("loop", "orchestrate_cmd"),
    "run": ("loop", "run_cmd"),
    "resume": ("loop", "resume_cmd"),
    "decide": ("loop", "decide_cmd"),
    "portal": ("portal", "portal_app"),
    "token": ("portal", "token_cmd"),
    "worker": ("portal", "worker_cmd"),
    "worktree": ("worktree", "worktree_app"),
    "compose": ("worktree", "compose_app"),
    "validate-config": ("worktree", "validate_config_cmd"),
    "docker": ("docker", "docker_app"),
    "ports": ("worktree", "ports_cmd"),
    "demo": ("demo", "demo_cmd"),
}


class LazyGroup(TyperGroup):
    """The root group: builds a command from :data:`COMMANDS` the first time it is asked for."""

    def list_commands(self, ctx: Context) -> list[str]:
        # COMMANDS' order whether or not a command was built already (cfn.cli.main.warm).
        return [*(n for n in super().list_commands(ctx) if n not in COMMANDS), *COMMANDS]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.add_command(_load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


def _load(name: str) -> Command:
    module, attribute = COMMANDS[name]
    target: Any = getattr(importlib.import_module(f"cfn.cli.{module}"), attribute)
    if isinstance(target, typer.Typer):
        group = get_group(target)
        group.name = name
        return group
    return get_command_from_info(
        CommandInfo(name=name, callback=target),
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
    )


app = typer.Typer(
    name="cfn",
    cls=LazyGroup,
    help="Run teams of AI coding agents through the CFN Loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        print_plain(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    setup_logging(verbose)


@lru_cache(maxsize=1)
def root_command() -> Command:
    """The click command behind ``app``, built once per process (Typer builds it anew
    on every call; the agent server builds it before forking commands)."""
    command: Command = get_command(app)
    return command


def warm(names: Iterable[str]) -> None:
    """Build the named commands now (the agent server does, so forked ones start ready)."""
    group = root_command()
    assert isinstance(group, LazyGroup)
    for name in names:
        if name in COMMANDS and name not in group.commands:
            group.add_command(_load(name), name)


def main(prog_name: str | None = None) -> None:
    """Run the app; CfnError becomes one ``[ERROR]`` line and an exit code.

    ``prog_name`` is what usage lines call the program (``cfn`` or ``python -m cfn``,
    cfn.cli.launch.prog_name); click guesses it from the process otherwise.
    """
    try:
        root_command()(prog_name=prog_name)
    except CfnError as exc:
        err.print(f"[ERROR] {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[ERROR] interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
