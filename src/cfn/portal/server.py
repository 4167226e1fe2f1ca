"""Running the portal under uvicorn, in the foreground or detached (and reused).

The port is the orchestrator's: 3000 in the main checkout, the seed's
``calculate_ports`` in a worktree, CFN_ORCHESTRATOR_PORT when set, recorded in
``<state>/ports.json``. A serving portal records itself in
``<state>/portal/instance.json`` (``cfn.system.instances``, which reads it
without uvicorn); later ``cfn portal --detach`` calls (``make run``) find it
answering and reuse it instead of starting another. Starting and stopping the
detached one is ``cfn.system.daemon``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import uvicorn

from cfn.errors import CfnError
from cfn.settings import Settings
from cfn.system.daemon import record_of, stop_process, wait_until
from cfn.system.instances import Instance, answers, portal_daemon, running_instance
from cfn.system.proc import signal_pid
from cfn.worktree.ports import PortRegistry, default_ports

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def resolve_port(settings: Settings, port: int | None = None) -> int:
    if port is not None:
        return port
    preferred = (
        settings.cfn_orchestrator_port or default_ports(settings.worktree_branch).orchestrator
    )
    mine = running_instance(settings)
    return PortRegistry(settings.state_dir).resolve(
        "orchestrator", preferred, lambda p: mine is not None and mine.port == p
    )


def _record(settings: Settings, host: str, port: int) -> None:
    portal_daemon(settings.state_dir).write_record(record_of(os.getpid(), host=host, port=port))


async def serve(
    settings: Settings,
    *,
    port: int,
    host: str | None = None,
    worker: bool | None = None,
    ready: asyncio.Event | None = None,
    record: bool = True,
) -> None:
    """Run the portal until SIGINT/SIGTERM (or the task is cancelled)."""
    from cfn.portal.app import Portal

    host = host or settings.cfn_portal_host
    portal = Portal(settings, worker=worker)
    config = uvicorn.Config(
        portal.asgi,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ws="websockets-sansio",
    )
    server = uvicorn.Server(config)
    await portal.start()
    try:
        serving = asyncio.create_task(server.serve())
        # uvicorn offers no event for "listening"; its flag is checked while it starts.
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if serving.done():
            await serving
            raise CfnError(f"the portal could not listen on {host}:{port}")
        if record:
            _record(settings, host, port)
        if ready is not None:
            ready.set()
        await serving
    finally:
        await portal.close()
        if record:
            with contextlib.suppress(OSError):
                portal_daemon(settings.state_dir).clear_record(os.getpid())


def start_detached(settings: Settings, port: int | None = None) -> tuple[Instance, bool]:
    """The running portal of this checkout, or a new detached one: ``(instance, started)``."""
    existing = running_instance(settings)
    if existing is not None and (port is None or existing.port == port):
        return existing, False
    chosen = resolve_port(settings, port)
    daemon = portal_daemon(settings.state_dir)
    log = daemon.log_file
    # --no-link: the login code goes to the caller's terminal, never into portal.log
    proc = daemon.spawn([sys.executable, "-m", "cfn", "portal", "--port", str(chosen), "--no-link"])
    instance = Instance(proc.pid, settings.cfn_portal_host, chosen)
    if wait_until(
        lambda: answers(instance.url, 0.5),
        START_TIMEOUT,
        exited=lambda: proc.poll() is not None,
    ):
        return instance, True
    if proc.poll() is not None:
        raise CfnError(f"the portal exited at start (code {proc.returncode}); see {log}")
    signal_pid(proc.pid, signal.SIGTERM, group=True)
    raise CfnError(f"the portal did not answer within {START_TIMEOUT:.0f} s; see {log}")


def stop_detached(settings: Settings, timeout: float = STOP_TIMEOUT) -> bool:
    instance = running_instance(settings)
    if instance is None:
        return False
    stop_process(instance.pid, grace=timeout, start_ticks=instance.pid_start)
    return True
