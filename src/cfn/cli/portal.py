"""``cfn portal | token | worker``: the web portal, its tokens, orchestrator workers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from cfn.cli.common import err, out, print_plain, settings
from cfn.errors import CfnError, InvalidInputError

portal_app = typer.Typer(
    help="The web portal: REST API, Socket.IO live events, the dashboard.",
    invoke_without_command=True,
)

DASHBOARD_TTL = 12 * 3600


def _dashboard_url(base: str, ttl: int) -> str:
    """The dashboard with a single-use login code (10 min), never a token, in the link."""
    from cfn.portal.auth import load_secret, mint_login_code

    code = mint_login_code(load_secret(settings()), "dashboard", "operator", session_ttl=ttl)
    return f"{base}/#login={code}"


@portal_app.callback()
def portal_cmd(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Default: the orchestrator port (3000)."),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Default: CFN_PORTAL_HOST.")] = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="Run in the background; reuse the one already running."),
    ] = False,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not run an orchestrator worker in-process.")
    ] = False,
    token_ttl: Annotated[
        int,
        typer.Option(
            "--token-ttl", min=60, help="Lifetime of the session the printed link opens (s)."
        ),
    ] = DASHBOARD_TTL,
    no_link: Annotated[
        bool,
        typer.Option(
            "--no-link",
            hidden=True,
            help="Print the address without a login code (the detached portal's log is "
            "not a place for credentials; `cfn portal --detach` prints the link itself).",
        ),
    ] = False,
) -> None:
    """Start the portal on the orchestrator port; prints the dashboard's address."""
    if ctx.invoked_subcommand is not None:
        return
    from cfn.portal import server
    from cfn.system import instances

    cfg = settings()
    if detach:
        instance, started = server.start_detached(cfg, port)
        word = "started" if started else "already running"
        err.print(f"portal {word} (pid {instance.pid}); log: {instances.log_file(cfg)}")
        out.print(f"dashboard: {_dashboard_url(instance.url, token_ttl)}", markup=False)
        return
    existing = instances.running_instance(cfg)
    if existing is not None and (port is None or port == existing.port):
        raise CfnError(
            f"a portal of this checkout already runs at {existing.url} (pid {existing.pid}); "
            "`cfn portal stop` stops it"
        )
    chosen = server.resolve_port(cfg, port)
    base = instances.Instance(0, host or cfg.cfn_portal_host, chosen).url
    link = f"{base}/" if no_link else _dashboard_url(base, token_ttl)
    out.print(f"dashboard: {link}", markup=False)
    out.print(f"API docs: {base}/docs", markup=False)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(
            server.serve(
                cfg, port=chosen, host=host, worker=False if no_worker else None, ready=ready
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


@portal_app.command("stop")
def portal_stop() -> None:
    """Stop this checkout's detached portal."""
    from cfn.portal import server

    if server.stop_detached(settings()):
        err.print("portal stopped")
    else:
        err.print("no portal of this checkout was running")


@portal_app.command("link")
def portal_link(
    token_ttl: Annotated[
        int,
        typer.Option("--token-ttl", min=60, help="Lifetime of the session the link opens (s)."),
    ] = DASHBOARD_TTL,
) -> None:
    """Print a fresh dashboard link for the running portal (single use, valid 10 min)."""
    from cfn.system.instances import running_instance

    instance = running_instance(settings())
    if instance is None:
        err.print("no portal of this checkout is running (start one: cfn portal --detach)")
        raise typer.Exit(1)
    out.print(f"dashboard: {_dashboard_url(instance.url, token_ttl)}", markup=False)


@portal_app.command("status")
def portal_status() -> None:
    """Print the running portal's address (exit 1 when none runs)."""
    from cfn.system.instances import running_instance

    instance = running_instance(settings())
    if instance is None:
        err.print("no portal of this checkout is running")
        raise typer.Exit(1)
    print_plain(f"{instance.url} (pid {instance.pid})")


def token_cmd(
    sub: Annotated[str, typer.Option("--sub", help="Agent id, or a person's name.")],
    role: Annotated[str, typer.Option("--role", help="agent | operator | admin")] = "agent",
    task_id: Annotated[
        str | None, typer.Option("--task-id", help="Required for agent tokens.")
    ] = None,
    ttl: Annotated[
        int | None, typer.Option("--ttl", min=1, help="Seconds; default CFN_PORTAL_TOKEN_TTL.")
    ] = None,
) -> None:
    """Mint a portal JWT (the seed's generate_agent_token): sub, aud, exp, task_id, role."""
    from cfn.portal.auth import ROLES, load_secret, mint_token

    if role not in ROLES:
        raise InvalidInputError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    cfg = settings()
    print_plain(
        mint_token(load_secret(cfg), sub, role, task_id, float(ttl or cfg.cfn_portal_token_ttl))
    )


def worker_cmd(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, max=256, help="Tasks at once.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Consumer name; default host-pid.")
    ] = None,
    claim_idle: Annotated[
        float | None,
        typer.Option("--claim-idle", min=0.1, help="Seconds before a silent worker is replaced."),
    ] = None,
) -> None:
    """Run an orchestrator worker: CFN Loop tasks from the queue (XREADGROUP), until Ctrl-C."""
    from cfn.coordination.connection import RedisManager
    from cfn.loop.worker import Worker
    from cfn.store.repository import Store

    cfg = settings()

    async def main() -> None:
        redis = RedisManager.from_settings(cfg)
        store = Store.open(cfg)
        worker = Worker(
            cfg, redis, store, name=name, concurrency=concurrency, claim_idle=claim_idle
        )
        err.print(f"worker {worker.name}: waiting for tasks (Ctrl-C stops)")
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(worker.run())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await redis.close()
            store.close()
        for task_id, status in worker.finished:
            out.print(f"{task_id}: {status}", markup=False)

    asyncio.run(main())
