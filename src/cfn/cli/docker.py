"""``cfn docker``: the container engine (Podman's Docker API) and cfn's images."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cfn.cli.common import err, out, print_plain, settings

docker_app = typer.Typer(
    help="The container engine (Podman serving the Docker API) and cfn's images.",
    no_args_is_help=True,
)


@docker_app.command("up")
def docker_up() -> None:
    """Start cfn's podman service (unless DOCKER_HOST names another engine); print DOCKER_HOST."""
    from cfn.deploy.podman import docker_host

    host, managed = docker_host(settings(), start=True)
    if not managed:
        from cfn.deploy.podman import connect

        connect(settings(), start=False).close()
    print_plain(f"DOCKER_HOST={host}")


@docker_app.command("status")
def docker_status() -> None:
    """Whether the engine answers, and where; exit 1 when it does not."""
    from cfn.deploy.podman import status

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
    from cfn.deploy.podman import PodmanService

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
    from cfn.deploy.podman import connect
    from cfn.errors import InvalidInputError

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
