"""``cfn``: the command line. Commands parse, call the package, print."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from cfn._version import __version__
from cfn.cli import agents as agents_cli
from cfn.cli import coordination as coord_cli
from cfn.cli import debug as debug_cli
from cfn.cli import health as health_cli
from cfn.cli import loop as loop_cli
from cfn.cli import portal as portal_cli
from cfn.cli import store as store_cli
from cfn.cli import worktree as worktree_cli
from cfn.cli.common import err, out, print_plain, settings, setup_logging
from cfn.cli.docker import docker_app
from cfn.cli.mcp import mcp_app
from cfn.cli.providers import providers_app
from cfn.cli.runtime import agent_app
from cfn.coordination.completion import CollectReport
from cfn.coordination.connection import RedisManager, mask_url
from cfn.coordination.embedded import EmbeddedRedis
from cfn.errors import CfnError
from cfn.worktree.ports import PortRegistry, calculate_ports, default_ports

app = typer.Typer(
    name="cfn",
    help="Run teams of AI coding agents through the CFN Loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
redis_app = typer.Typer(help="The embedded redis-server.", no_args_is_help=True)

app.add_typer(coord_cli.context_app, name="context")
app.add_typer(coord_cli.signal_app, name="signal")
app.add_typer(coord_cli.lock_app, name="lock")
app.add_typer(redis_app, name="redis")
app.add_typer(providers_app, name="providers")
app.add_typer(store_cli.db_app, name="db")
app.add_typer(store_cli.skills_app, name="skills")
app.command("collect-results")(coord_cli.collect_results_cmd)
app.command("wait-completion")(coord_cli.wait_completion_cmd)
app.command("keys")(coord_cli.keys_cmd)
app.command("spawn-agent")(agents_cli.spawn_agent_cmd)
app.add_typer(agents_cli.agents_app, name="agents")
app.command("health")(health_cli.health_cmd)
app.command("logs")(debug_cli.logs_cmd)
app.command("stats")(debug_cli.stats_cmd)
app.add_typer(agent_app, name="agent")
app.add_typer(mcp_app, name="mcp")
app.command("orchestrate")(loop_cli.orchestrate_cmd)
app.command("run")(loop_cli.run_cmd)
app.command("resume")(loop_cli.resume_cmd)
app.command("decide")(loop_cli.decide_cmd)
app.add_typer(portal_cli.portal_app, name="portal")
app.command("token")(portal_cli.token_cmd)
app.command("worker")(portal_cli.worker_cmd)
app.add_typer(worktree_cli.worktree_app, name="worktree")
app.add_typer(worktree_cli.compose_app, name="compose")
app.command("validate-config")(worktree_cli.validate_config_cmd)
app.add_typer(docker_app, name="docker")


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


# --- redis ------------------------------------------------------------------------


@redis_app.command("start")
def redis_start() -> None:
    """Start the embedded redis-server (or find the running one)."""
    url = EmbeddedRedis(settings()).ensure_running()
    print_plain(mask_url(url))


@redis_app.command("status")
def redis_status() -> None:
    """Show whether the embedded redis-server runs (exit 1 when it does not)."""
    if settings().redis_url:
        out.print(
            f"REDIS_URL is set ({mask_url(settings().redis_url or '')}); "
            "the embedded Redis is not used."
        )
    status = EmbeddedRedis(settings()).status()
    table = Table(show_header=False)
    table.add_row("running", "[green]yes[/]" if status.running else "[red]no[/]")
    table.add_row("port", str(status.port or "-"))
    table.add_row("pid", str(status.pid or "-"))
    table.add_row("data", str(status.data_dir))
    if status.running:
        table.add_row("url", mask_url(status.url or ""))
        table.add_row("keys", str(status.keys))
        table.add_row("memory", f"{(status.memory_bytes or 0) / 1024 / 1024:.1f} MiB")
        table.add_row("aof", "on" if status.aof_enabled else "off")
    out.print(table)
    if not status.running:
        raise typer.Exit(1)


@redis_app.command("env")
def redis_env() -> None:
    """Print shell exports so plain redis-cli (and the seed's bash scripts) reach it.

    Use as ``eval "$(cfn redis env)"``; it prints the password, so don't log it.
    """
    from urllib.parse import unquote, urlsplit

    url = settings().redis_url or EmbeddedRedis(settings()).ensure_running()
    parts = urlsplit(url)
    exports = {
        "REDIS_URL": url,
        "REDISCLI_AUTH": unquote(parts.password or ""),
        "CFN_REDIS_HOST": parts.hostname or "127.0.0.1",
        "CFN_REDIS_PORT": str(parts.port or 6379),
    }
    import shlex

    for name, value in exports.items():
        if value:
            print_plain(f"export {name}={shlex.quote(value)}")


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the embedded redis-server (its AOF keeps the data)."""
    if EmbeddedRedis(settings()).stop():
        out.print("embedded redis-server stopped")
    else:
        out.print("embedded redis-server was not running")


# --- ports ------------------------------------------------------------------------


@app.command("ports")
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


# --- demo ---------------------------------------------------------------------------


@app.command("demo")
def demo_cmd(
    agents: Annotated[int, typer.Option("--agents", min=1, max=50)] = 3,
) -> None:
    """Show the coordination primitives end to end on the embedded Redis."""
    from cfn.demo import run_demo

    cfg = settings()
    url = cfg.redis_url or EmbeddedRedis(cfg).ensure_running()
    out.print(f"[bold]cfn {__version__}[/] coordination demo on Redis {mask_url(url)}")
    out.print(
        "[dim]The agents below are demo processes that call no LLM; "
        "the CFN Loop replaces this demo.[/]"
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=out,
    ) as progress:
        bar = progress.add_task("agents reporting", total=agents + 1)

        def on_progress(text: str, report: CollectReport | None) -> None:
            if report is not None:
                progress.update(bar, completed=report.arrived, total=report.expected)
            else:
                progress.console.print(f"  • {text}")

        async def main() -> object:
            manager = RedisManager.from_settings(cfg)
            try:
                return await run_demo(manager, url, agents, on_progress)
            finally:
                await manager.close()

        result = asyncio.run(main())

    from cfn.demo import DemoResult

    assert isinstance(result, DemoResult)
    table = Table(title=f"Loop 3 results for {result.task_id}")
    for col in ("agent", "kind", "confidence", "status"):
        table.add_column(col)
    for item in result.report.results:
        kind = (
            "bash + redis-cli"
            if item.agent_id.endswith(f"-{agents + 1}-1") and result.bash_agent
            else "python"
        )
        conf = "-" if item.confidence is None else f"{item.confidence:.2f}"
        table.add_row(item.agent_id, kind, conf, "ok" if item.ok else f"failed: {item.reason}")
    out.print(table)
    mean = result.report.mean
    verdict = "[green]passed[/]" if result.report.met else "[red]failed[/]"
    out.print(
        f"gate: mean {mean:.3f} vs 0.75 → {verdict}"
        if mean is not None
        else "gate: no usable confidence"
    )
    out.print(f"loop2:start payload received: {result.loop2_payload}")
    out.print(f"lock fencing number: {result.fence}")
    out.print("keys written: " + ", ".join(result.keys))
    out.print(f"inspect them: [bold]cfn keys --pattern '*{result.task_id}*'[/]")


def main() -> None:
    """Entry point: run the app; CfnError becomes one ``[ERROR]`` line and an exit code."""
    try:
        app()
    except CfnError as exc:
        err.print(f"[ERROR] {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[ERROR] interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
