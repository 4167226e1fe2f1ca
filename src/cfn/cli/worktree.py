"""``cfn worktree``, ``cfn compose`` and ``cfn validate-config``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cfn.cli.common import err, out, print_plain, settings
from cfn.worktree.ports import PortRegistry, calculate_ports, default_ports

worktree_app = typer.Typer(
    help="Git worktrees with their own Redis, database and ports.", no_args_is_help=True
)
compose_app = typer.Typer(help="Compose files generated from cfn's settings.", no_args_is_help=True)


@worktree_app.command("create")
def worktree_create(
    branch: Annotated[str, typer.Argument(help="Branch to check out (created from HEAD if new).")],
    path: Annotated[
        Path | None,
        typer.Argument(help="Where; default ../cfn-{branch} next to the main checkout."),
    ] = None,
) -> None:
    """git worktree add, plus the worktree's .cfn/worktree.env (branch, project, ports)."""
    from cfn.worktree.manage import create

    created = create(Path.cwd(), branch, path)
    tree = created.worktree
    for service, (was, now) in created.moved.items():
        err.print(f"{service}: port {was} is taken or reserved; using {now}", markup=False)
    word = "new branch" if created.new_branch else "branch"
    out.print(f"worktree {tree.path} ({word} {branch})", markup=False)
    out.print(f"  COMPOSE_PROJECT_NAME={tree.project}", markup=False)
    out.print(
        f"  ports: redis {tree.ports.redis}, postgres {tree.ports.postgres}, "
        f"orchestrator {tree.ports.orchestrator}",
        markup=False,
    )
    out.print(f"  environment: {tree.env_file}", markup=False)
    out.print(f"next: cd {tree.path} && cfn run --epic '...'", markup=False)


@worktree_app.command("list")
def worktree_list() -> None:
    """Every worktree with its project, ports and whether its Redis and portal are up."""
    from cfn.worktree.manage import list_worktrees, status

    table = Table(title="Worktrees")
    for column in ("branch", "path", "project", "ports redis/pg/orch", "redis", "portal"):
        table.add_column(column, overflow="fold", no_wrap=column.startswith("ports"))
    for tree in list_worktrees(Path.cwd()):
        state = status(tree)
        redis_port = state.redis_port or tree.ports.redis
        name = (tree.branch or f"(detached {tree.head})") + (" (main)" if tree.is_main else "")
        table.add_row(
            name,
            str(tree.path),
            tree.project,
            f"{redis_port}/{tree.ports.postgres}/{tree.ports.orchestrator}",
            "[green]up[/]" if state.redis_up else "[dim]down[/]",
            f"[green]{state.portal_url}[/]" if state.portal_url else "[dim]down[/]",
        )
    out.print(table)


@worktree_app.command("remove")
def worktree_remove(
    branch: Annotated[str, typer.Argument(help="The worktree's branch (the branch is kept).")],
    force: Annotated[
        bool, typer.Option("--force", help="Remove even with uncommitted changes.")
    ] = False,
) -> None:
    """Stop the worktree's Redis and portal, delete its .cfn state, git worktree remove."""
    from cfn.worktree.manage import remove

    removed = remove(Path.cwd(), branch, force)
    if removed.redis_stopped:
        err.print("embedded redis-server stopped")
    if removed.portal_stopped:
        err.print("portal stopped")
    out.print(f"removed worktree {removed.worktree.path} (branch {branch} kept)", markup=False)


@compose_app.command("generate")
def compose_generate(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to write; default CFN_COMPOSE_DIR or the checkout."),
    ] = None,
) -> None:
    """Write docker-compose.yml, docker-compose.worktree.yml and docker-compose.test.yml."""
    from cfn.deploy.compose import generate

    for path in generate(settings(), directory):
        print_plain(str(path))


def validate_config_cmd(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also list every check that passed.")
    ] = False,
) -> None:
    """Check settings, ports, compose files, profiles, routes and the MCP mapping.

    Each problem is one line; the exit code is the number of problems (at most 125).
    """
    from cfn.deploy.validate import validate

    report = validate()
    for check in report.checks:
        if verbose:
            mark = "[OK]" if not check.problems else "[FAIL]"
            out.print(f"{mark} {check.name}: {check.detail}", markup=False)
        for problem in check.problems:
            err.print(f"[ERROR] {check.name}: {problem}", markup=False)
    count = report.problem_count
    if verbose or count:
        out.print(f"{count} problem(s)", markup=False)
    raise typer.Exit(report.exit_code)


def ports_cmd(
    branch: Annotated[str | None, typer.Argument(help="Branch; default: this checkout.")] = None,
) -> None:
    """Print Redis, PostgreSQL and orchestrator ports (the seed's calculate_ports)."""
    if branch is not None:
        ports = calculate_ports(branch)
        for port in (ports.redis, ports.postgres, ports.orchestrator):
            print_plain(str(port))
        return
    cfg = settings()
    defaults = default_ports(cfg.worktree_branch)
    recorded = PortRegistry(cfg.state_dir).read()
    table = Table(title=f"Ports of {cfg.project_root}")
    table.add_column("service")
    table.add_column("default", justify="right")
    table.add_column("in use", justify="right")
    for service in ("redis", "postgres", "orchestrator"):
        entry = recorded.get(service)
        # CFN_*_PORT (a worktree's .cfn/worktree.env) is what this checkout asks for.
        wanted = getattr(cfg, f"cfn_{service}_port", None) or defaults.get(service)
        table.add_row(service, str(wanted), str(entry["port"]) if entry else "-")
    out.print(table)
