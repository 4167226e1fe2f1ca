"""Running the portal under uvicorn, in the foreground or detached (and reused).

The port is the orchestrator's: 3000 in the main checkout, the seed's
``calculate_ports`` in a worktree, CFN_ORCHESTRATOR_PORT when set, recorded in
``<state>/ports.json``. A detached portal records itself in
``<state>/portal/instance.json``; later ``cfn portal --detach`` calls (``make
run``) find it answering and reuse it instead of starting another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from cfn.errors import CfnError
from cfn.settings import Settings
from cfn.worktree.ports import PortRegistry, default_ports

START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Instance:
    pid: int
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"


def instance_file(settings: Settings) -> Path:
    return settings.state_dir / "portal" / "instance.json"


def log_file(settings: Settings) -> Path:
    return settings.state_dir / "portal" / "portal.log"


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when a cfn portal answers GET /api/ping at ``url``."""
    try:
        reply = httpx.get(f"{url}/api/ping", timeout=timeout)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and reply.json() == {"ok": True}


def running_instance(settings: Settings) -> Instance | None:
    """The recorded portal of this checkout, if its process lives and it answers."""
    try:
        data: dict[str, Any] = json.loads(instance_file(settings).read_text())
        instance = Instance(int(data["pid"]), str(data["host"]), int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(instance.pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return instance if answers(instance.url) else None


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
    path = instance_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}))
    os.replace(tmp, path)


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
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(instance_file(settings).read_text())
                if data.get("pid") == os.getpid():
                    instance_file(settings).unlink()


def start_detached(settings: Settings, port: int | None = None) -> tuple[Instance, bool]:
    """The running portal of this checkout, or a new detached one: ``(instance, started)``."""
    existing = running_instance(settings)
    if existing is not None and (port is None or existing.port == port):
        return existing, False
    chosen = resolve_port(settings, port)
    log = log_file(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cfn", "portal", "--port", str(chosen)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    instance = Instance(proc.pid, settings.cfn_portal_host, chosen)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CfnError(f"the portal exited at start (code {proc.returncode}); see {log}")
        if answers(instance.url, 0.5):
            return instance, True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    raise CfnError(f"the portal did not answer within {START_TIMEOUT:.0f} s; see {log}")


def stop_detached(settings: Settings, timeout: float = 10.0) -> bool:
    instance = running_instance(settings)
    if instance is None:
        return False
    os.kill(instance.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(instance.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    os.kill(instance.pid, signal.SIGKILL)
    return True
