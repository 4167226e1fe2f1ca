"""The CLI's command table: every entry resolves, and a command loads only its own module."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from cfn.cli.main import COMMANDS, LazyGroup, app


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_of_the_table_resolves(name: str) -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    with typer.Context(group) as ctx:
        command = group.get_command(ctx, name)
        assert command is not None and command.name == name
        assert name in group.list_commands(ctx)
        assert command.help or command.short_help, f"{name} has no help text"


def test_a_command_imports_only_what_it_uses() -> None:
    code = (
        "import sys\n"
        "from cfn.cli.main import main\n"
        "sys.argv = ['cfn', 'ports', 'main']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('cfn.cli.')))\n"
        "print('cfn.loop' in sys.modules, 'sqlalchemy' in sys.modules, 'fastapi' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert lines[:3] == ["6479", "5532", "3101"]  # calculate_ports("main")
    assert lines[3] == "['cfn.cli.common', 'cfn.cli.main', 'cfn.cli.worktree']"
    assert lines[4] == "False False False"


def test_an_unknown_command_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cfn", "no-such-command"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "No such command 'no-such-command'" in done.stderr
    assert "Traceback" not in done.stderr
