"""Where each of cfn's daemons keeps its files, and the detached portal's record.

Commands that only need to find, report or stop a checkout's servers (``cfn
health``, ``cfn worktree remove``, ``cfn portal link``) read these records
instead of importing the servers' own packages: the portal's record is read
without uvicorn, Redis's without redis-py.

The portal records itself in ``<state>/portal/instance.json`` while it
serves (``{"pid", "host", "port"}``, plus ``pid_start``); a record without a
start time, as tests write, is trusted on its pid alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from cfn.settings import Settings
from cfn.system.daemon import Daemon
from cfn.system.proc import proc_alive


def redis_daemon(state_dir: Path) -> Daemon:
    """The embedded redis-server's files (its record holds its password: 0600)."""
    return Daemon(state_dir / "redis", record="instance.json", log="redis.log", pid="redis.pid")


def portal_daemon(state_dir: Path) -> Daemon:
    """The detached portal's files."""
    return Daemon(state_dir / "portal", record="instance.json", log="portal.log", private=False)


def podman_daemon(state_dir: Path) -> Daemon:
    """cfn's Podman API service: a pid file, no record (the socket is its address)."""
    return Daemon(state_dir / "podman", record="service.json", log="service.log", pid="service.pid")


def llm_gateway_daemon(state_dir: Path) -> Daemon:
    """cfn's own LLM gateway (its record holds a fingerprint of its settings: 0600)."""
    return Daemon(state_dir / "llm-gateway", record="instance.json", log="gateway.log")


@dataclass(frozen=True)
class Instance:
    pid: int
    host: str
    port: int
    pid_start: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"


def instance_file(settings: Settings) -> Path:
    return portal_daemon(settings.state_dir).record_file


def log_file(settings: Settings) -> Path:
    return portal_daemon(settings.state_dir).log_file


def read_instance(settings: Settings) -> Instance | None:
    """The recorded portal, whether or not it still runs; None without a usable record.
    ValueError-family errors from a garbled record propagate to the caller (health
    reports them) through :func:`parse_instance`."""
    data = portal_daemon(settings.state_dir).read_record()
    try:
        return parse_instance(data) if data else None
    except (ValueError, KeyError, TypeError):
        return None


def parse_instance(data: dict[str, object]) -> Instance:
    """An :class:`Instance` from a record; KeyError, ValueError or TypeError if garbled."""
    start = data.get("pid_start")
    return Instance(
        int(data["pid"]),  # type: ignore[call-overload]
        str(data["host"]),
        int(data["port"]),  # type: ignore[call-overload]
        start if isinstance(start, int) else None,
    )


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when a cfn portal answers GET /api/ping at ``url``."""
    try:
        reply = httpx.get(f"{url}/api/ping", timeout=timeout)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and reply.json() == {"ok": True}


def running_instance(settings: Settings) -> Instance | None:
    """The recorded portal of this checkout, if its process lives and it answers."""
    instance = read_instance(settings)
    if instance is None or not proc_alive(instance.pid, instance.pid_start):
        return None
    return instance if answers(instance.url) else None
