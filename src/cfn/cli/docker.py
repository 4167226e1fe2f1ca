"""``cfn docker``: the container engine (Podman's Docker API) and cfn's images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cfn.cli.common import err, out, print_plain, settings
from cfn.errors import InvalidInputError

docker_app = typer.Typer(
    help="The container engine (Podman serving the Docker API) and cfn's images.",
    no_args_is_help=True,
)


@docker_app.command("up")
def docker_up() -> None:
    """Start cfn's podman service (unless DOCKER_HOST names another engine); print DOCKER_HOST."""
    from cfn.system.podman import docker_host

    host, managed = docker_host(settings(), start=True)
    if not managed:
        from cfn.system.podman import connect

        connect(settings(), start=False).close()
    print_plain(f"DOCKER_HOST={host}")


@docker_app.command("status")
def docker_status() -> None:
    """Whether the engine answers, and where; exit 1 when it does not."""
    from cfn.system.podman import status

    state = status(settings())
    table = Table(title="container engine")
    for col in ("DOCKER_HOST", "managed by cfn", "running", "pid", "version", "API"):
        table.add_column(col)
    table.add_row(
        state.docker_host,
        "yes" if state.managed else "no (DOCKER_HOST)",
        "[green]yes[/]" if state.running else "[red]no[/]",
        str(state.pid or "-"),
        state.version or "-",
        state.api_version or "-",
    )
    out.print(table)
    if not state.running:
        raise typer.Exit(1)


@docker_app.command("down")
def docker_down() -> None:
    """Stop cfn's podman service (containers and images stay)."""
    from cfn.system.podman import PodmanService

    if settings().docker_host:
        err.print("[ERROR] DOCKER_HOST is set: that engine is not cfn's to stop", markup=False)
        raise typer.Exit(1)
    stopped = PodmanService(settings()).stop()
    print_plain("podman service stopped" if stopped else "podman service was not running")


@docker_app.command("build")
def docker_build(
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="agent, orchestrator or redis (repeatable); default all."),
    ] = None,
    rebuild_base: Annotated[
        bool, typer.Option("--rebuild-base", help="Run debootstrap again even if up to date.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Build the images even if up to date.")
    ] = False,
) -> None:
    """Build cfn-python:bookworm (debootstrap), then cfn-agent, cfn-orchestrator, cfn-redis.

    The seed's build-from-linux.sh: everything is built on this machine, and each
    step is skipped while its inputs are unchanged.
    """
    from cfn.deploy.images import ALL_IMAGES, ImageBuilder
    from cfn.system.podman import connect

    kinds = image or list(ALL_IMAGES)
    bad = [k for k in kinds if k not in ALL_IMAGES]
    if bad:
        raise InvalidInputError(f"unknown image {bad[0]!r}: choose from {', '.join(ALL_IMAGES)}")
    client = connect(settings())
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[step]}[/]"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("starting", step="build")

            def report(step: str, message: str) -> None:
                progress.update(task, description=message, step=step)
                progress.console.print(f"[dim]{step}:[/] {message}", markup=True, highlight=False)

            result = ImageBuilder(settings(), client, progress=report).build(
                kinds, force_base=rebuild_base, force=force
            )
    finally:
        client.close()
    table = Table(title="images")
    table.add_column("step")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for name in result.built:
        seconds = result.seconds.get(name)
        first_wheel = name == "dependency wheels" or (
            name == "cfn wheel" and "dependency wheels" not in result.built
        )
        if seconds is None and first_wheel:
            seconds = result.seconds.get("wheels")  # the wheel steps are timed together
        table.add_row(name, "built", "-" if seconds is None else f"{seconds:.1f}")
    for name in result.cached:
        table.add_row(name, "up to date", "-")
    table.add_row("total", "", f"{result.seconds.get('total', 0.0):.1f}")
    out.print(table)


# --- `cfn docker compose`: the generated files through the driver (no compose plugin here) ---

compose_app = typer.Typer(
    help="Bring cfn's generated compose files up, run a one-off service, take them down "
    "(the subset of `docker compose` they need).",
    no_args_is_help=True,
)
docker_app.add_typer(compose_app, name="compose")

FileOpt = Annotated[
    list[Path] | None,
    typer.Option("--file", "-f", help="Compose file (repeatable); default docker-compose.yml."),
]
ProjectOpt = Annotated[
    str | None,
    typer.Option("--project-name", "-p", help="Default: COMPOSE_PROJECT_NAME or cfn's project."),
]


def _stack(files: list[Path] | None, project: str | None, profiles: list[str] | None) -> Any:
    from cfn.deploy.compose import COMPOSE_FILE
    from cfn.deploy.stack import ComposeStack
    from cfn.system.podman import connect
    from cfn.worktree.project import compose_project

    current = settings()
    chosen = files or [(current.cfn_compose_dir or current.project_root) / COMPOSE_FILE]
    for path in chosen:
        if not path.is_file():
            raise InvalidInputError(f"compose file {path} not found (cfn compose generate)")
    name = project or compose_project(current)
    client = connect(current)
    return ComposeStack(client, chosen, name, profiles=tuple(profiles or ()))


@compose_app.command("up")
def compose_up(
    services: Annotated[list[str] | None, typer.Argument(help="Default: every active one.")] = None,
    file: FileOpt = None,
    project: ProjectOpt = None,
    profile: Annotated[list[str] | None, typer.Option("--profile")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, max=3600)] = 300.0,
) -> None:
    """`docker compose up -d --wait`: create and start, then wait until healthy."""
    stack = _stack(file, project, profile)
    started = stack.up(services or None, timeout=timeout)
    print_plain(f"{stack.project}: up and healthy: {', '.join(started)}")


@compose_app.command(
    "run",
    # Everything after SERVICE is the command, options included (as `docker compose run`).
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def compose_run(
    service: Annotated[str, typer.Argument()],
    command: Annotated[
        list[str] | None, typer.Argument(help="Replaces the service's command.")
    ] = None,
    file: FileOpt = None,
    project: ProjectOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, max=24 * 3600)] = 1800.0,
) -> None:
    """`docker compose run --rm SERVICE [COMMAND]`: its output, and its exit code as ours."""
    stack = _stack(file, project, None)
    result = stack.run(service, command or None, timeout=timeout)
    out.out(result.logs, highlight=False, end="")
    raise typer.Exit(result.exit_code)


@compose_app.command("down")
def compose_down(
    file: FileOpt = None,
    project: ProjectOpt = None,
    volumes: Annotated[
        bool, typer.Option("--volumes", "-v", help="Remove its volumes too.")
    ] = False,
) -> None:
    """`docker compose down [-v]`: the project's containers, networks (and volumes)."""
    stack = _stack(file, project, None)
    removed = stack.down(volumes=volumes)
    print_plain(
        f"{stack.project}: removed {removed['containers']} container(s), "
        f"{removed['networks']} network(s), {removed['volumes']} volume(s)"
    )
