"""The seed's ``check_system_health``: is every part of cfn up, as one report.

Checks, run at once, each with its own time limit:

* ``redis`` and ``redis-fallback``: PING on the primary (REDIS_URL, the
  Sentinel-watched master, or the embedded redis-server) and on
  REDIS_FALLBACK_1, each on its own connection (no failover hides a dead one).
* ``database``: ``SELECT 1`` on DATABASE_URL / DB_PATH, and whether the schema
  is at the newest revision (a warning when not).
* ``mcp:<server>``: each MCP server's and the gateway's ``/health``, where
  ``cfn mcp up`` recorded them (or, with MCP_AUTH_TOKEN set, on the configured
  ports).
* ``llm-gateway``: the LLM gateway agents call answers ``/healthz``
  (CFN_LLM_GATEWAY_URL, else cfn's own while it runs: it is started on first need).
* ``portal``: this checkout's portal (``cfn portal``) answers ``/api/ping``.
* ``agents``: agents marked running in the database against live heartbeats
  in Redis and live processes on this machine; marked running with neither is
  a warning (an orchestrator died without recording their end).
* ``container:<service>``: with DOCKER_HOST set (Docker or Podman's API), the
  compose project's orchestrator, redis and postgres containers are running
  (and healthy, when they have a health check).

A part that is not set up (no fallback, no MCP servers, no portal, no
DOCKER_HOST) is reported as ``ok`` with ``configured: false`` and says so;
nothing is guessed. The number of ``error`` checks is the CLI's exit code
(capped at 125), as ``check_system_health`` returns its error count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from cfn.agents.spawn import spawner_for
from cfn.coordination.connection import RedisManager, mask_url
from cfn.coordination.embedded import EmbeddedRedis
from cfn.errors import CfnError, ConfigError, InvalidInputError
from cfn.mcp.launcher import Launcher
from cfn.mcp.routing import GATEWAY, SERVERS
from cfn.settings import Settings
from cfn.store import migrate
from cfn.store.engine import database_url, describe, make_engine, ping
from cfn.store.records import AgentRecord
from cfn.store.repository import Store
from cfn.system.instances import instance_file, llm_gateway_daemon, parse_instance
from cfn.system.proc import proc_alive
from cfn.troubleshoot import find_agents
from cfn.worktree.project import compose_project

Status = Literal["ok", "warn", "error"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "error")
DEFAULT_TIMEOUT = 3.0
MAX_EXIT = 125
CONTAINER_SERVICES = ("orchestrator", "redis", "postgres")
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    latency_ms: float | None = None
    configured: bool = True
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "latencyMs": self.latency_ms,
            "configured": self.configured,
            "data": self.data,
        }


@dataclass(frozen=True)
class HealthReport:
    checks: list[Check]
    took_ms: float

    @property
    def errors(self) -> int:
        return sum(1 for c in self.checks if c.status == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for c in self.checks if c.status == "warn")

    @property
    def status(self) -> Status:
        if self.errors:
            return "error"
        return "warn" if self.warnings else "ok"

    @property
    def exit_code(self) -> int:
        """The seed's ``return $errors``, capped so a shell never reads it as a signal."""
        return min(self.errors, MAX_EXIT)

    def check(self, name: str) -> Check:
        for item in self.checks:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "errors": self.errors,
            "warnings": self.warnings,
            "tookMs": self.took_ms,
            "checks": [c.to_dict() for c in self.checks],
        }


def _ms(began: float) -> float:
    return round((time.perf_counter() - began) * 1000, 2)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --- Redis ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProbeConnection:
    """Connection settings for one quick PING: short connect timeout, no retries."""

    redis_connect_timeout: float
    redis_username: str
    redis_password: str
    redis_retry_delay_on_failover: float = 0.05
    redis_max_retries_per_request: int = 0


async def _ping(manager: RedisManager, name: str, label: str) -> Check:
    began = time.perf_counter()
    try:
        await manager.run(lambda r: r.ping())
    except CfnError as exc:
        return Check(name, "error", f"{label} not responding: {_short(exc)}", _ms(began))
    finally:
        await manager.close()
    return Check(name, "ok", f"PONG from {label}", _ms(began))


async def check_redis(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """PING the primary alone (never its fallback)."""
    probe = _ProbeConnection(timeout, settings.redis_username, settings.redis_password)
    if settings.cfn_redis_sentinels:
        quick = settings.model_copy(
            update={
                "redis_fallback_1": None,
                "redis_connect_timeout": timeout,
                "redis_max_retries_per_request": 0,
            }
        )
        manager = RedisManager.from_settings(quick)
        return await _ping(manager, "redis", manager.active_label)
    if settings.redis_url:
        url = settings.redis_url
    else:
        status = await asyncio.to_thread(EmbeddedRedis(settings).status)
        if not status.running or not status.url:
            return Check(
                "redis",
                "error",
                "the embedded redis-server is not running (REDIS_URL is unset); "
                "start it with `cfn redis start`",
            )
        url = status.url
    return await _ping(RedisManager.from_url(url, probe), "redis", mask_url(url))


async def check_redis_fallback(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> Check:
    url = settings.redis_fallback_1
    if not url:
        return Check(
            "redis-fallback", "ok", "not configured (REDIS_FALLBACK_1 unset)", configured=False
        )
    probe = _ProbeConnection(timeout, settings.redis_username, settings.redis_password)
    return await _ping(RedisManager.from_url(url, probe), "redis-fallback", mask_url(url))


# --- database ---------------------------------------------------------------------------------


def _database_check(settings: Settings) -> Check:
    url = database_url(settings)
    label = describe(url)
    if _sqlite_missing(settings):
        return Check(
            "database",
            "error",
            f"{label}: the database file does not exist (created by the first "
            "`cfn run` or `cfn db upgrade`)",
        )
    engine = make_engine(settings, url)
    began = time.perf_counter()
    try:
        ping(engine)
        latency = _ms(began)
        current = migrate.current(engine)
    except Exception as exc:  # the driver's own errors, whatever the backend
        return Check("database", "error", f"{label} not accessible: {_short(exc)}", _ms(began))
    finally:
        engine.dispose()
    head = migrate.head()
    if current != head:
        return Check(
            "database",
            "warn",
            f"{label} answers, but its schema is at {current or 'no revision'}, not {head}: "
            "run `cfn db upgrade`",
            latency,
            data={"revision": current, "head": head},
        )
    return Check("database", "ok", f"SELECT 1 on {label}", latency, data={"revision": current})


async def check_database(settings: Settings) -> Check:
    return await asyncio.to_thread(_database_check, settings)


# --- HTTP services ------------------------------------------------------------------------------


async def _http_health(
    client: httpx.AsyncClient, name: str, url: str, *, expect: Any = None
) -> Check:
    began = time.perf_counter()
    try:
        reply = await client.get(url)
    except httpx.HTTPError as exc:
        return Check(name, "error", f"{url}: {type(exc).__name__} {_short(exc)}", _ms(began))
    latency = _ms(began)
    if reply.status_code != 200:
        return Check(name, "error", f"{url}: HTTP {reply.status_code}", latency)
    if expect is not None:
        try:
            body = reply.json()
        except ValueError:
            body = None
        if body != expect:
            return Check(name, "error", f"{url}: unexpected answer {reply.text[:80]!r}", latency)
    return Check(name, "ok", f"{url}: HTTP 200", latency)


async def check_mcp(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """``/health`` of each MCP server and the gateway."""
    launcher = Launcher(settings)
    try:
        recorded = await asyncio.to_thread(launcher.read_state)
    except (OSError, ValueError, TypeError) as exc:
        return [Check("mcp", "error", f"{launcher.state_path} unreadable: {_short(exc)}")]
    names = [*SERVERS, GATEWAY]
    if not recorded and settings.mcp_auth_token is None:
        return [
            Check(
                "mcp",
                "ok",
                "not configured (no `cfn mcp up` here and MCP_AUTH_TOKEN unset)",
                configured=False,
            )
        ]
    checks: list[Check] = []
    probes: list[tuple[str, str]] = []
    for name in names:
        item = recorded.get(name)
        if item is None and recorded:
            # `cfn mcp up --servers ...` started a subset: the rest is not expected.
            checks.append(
                Check(f"mcp:{name}", "ok", "not started by `cfn mcp up`", configured=False)
            )
            continue
        if item is not None and not proc_alive(item.pid, item.pid_start):
            checks.append(
                Check(
                    f"mcp:{name}",
                    "error",
                    f"process {item.pid} (started by `cfn mcp up`) is gone; see {item.log}",
                )
            )
            continue
        probes.append((name, (item.url if item is not None else launcher.url(name)) + "/health"))
    async with httpx.AsyncClient(timeout=timeout) as client:
        checks += await asyncio.gather(
            *(_http_health(client, f"mcp:{name}", url) for name, url in probes)
        )
    order = {f"mcp:{n}": i for i, n in enumerate(names)}
    return sorted(checks, key=lambda c: order.get(c.name, len(order)))


async def check_llm_gateway(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """The LLM gateway agents call: the configured one, else cfn's own while it runs."""
    url = settings.cfn_llm_gateway_url
    if not url:
        record = llm_gateway_daemon(settings.state_dir).read_record()
        recorded = record.get("url")
        start = record.get("pid_start")
        if not isinstance(recorded, str) or not proc_alive(
            record.get("pid"), start if isinstance(start, int) else None
        ):
            return Check(
                "llm-gateway",
                "ok",
                "not running (cfn starts it when agents need it)",
                configured=False,
            )
        url = recorded
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await _http_health(
            client,
            "llm-gateway",
            f"{url.rstrip('/')}/healthz",
            expect={"ok": True, "service": "cfn-llm-gateway"},
        )


async def check_portal(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> Check:
    """This checkout's detached portal (``cfn portal``) answers ``/api/ping``."""
    path = instance_file(settings)
    try:
        instance = parse_instance(json.loads(path.read_text()))
    except FileNotFoundError:
        return Check(
            "portal", "ok", "not configured (no `cfn portal` started here)", configured=False
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Check("portal", "error", f"{path} unreadable: {_short(exc)}")
    if not proc_alive(instance.pid, instance.pid_start):
        return Check(
            "portal",
            "error",
            f"the portal recorded at {instance.url} (pid {instance.pid}) is not running; "
            "start it with `cfn portal`",
        )
    async with httpx.AsyncClient(timeout=timeout) as client:
        found = await _http_health(
            client, "portal", f"{instance.url}/api/ping", expect={"ok": True}
        )
    return found


# --- agents -----------------------------------------------------------------------------------


def _sqlite_missing(settings: Settings) -> bool:
    """A SQLite database whose file does not exist (opening it would create it)."""
    url = database_url(settings)
    return (
        url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
        and not Path(str(url.database)).is_file()
    )


def _running_rows(settings: Settings) -> list[AgentRecord]:
    if _sqlite_missing(settings):
        raise ConfigError("the database file does not exist")
    with Store.open(settings, auto_migrate=False) as store:
        return store.list_agents(status="running")


def _live_processes(settings: Settings) -> set[tuple[str, str]]:
    """Agents of this machine whose process runs (state.json, no exit.json, alive)."""
    return {(a.task_id, a.agent_id) for a in find_agents(settings) if a.running}


async def _heartbeats(settings: Settings, timeout: float) -> set[tuple[str, str]]:
    """(task, agent) of every live ``swarm:{task}:heartbeat:{agent}`` key."""
    probe = _ProbeConnection(timeout, settings.redis_username, settings.redis_password)
    if settings.cfn_redis_sentinels or not settings.redis_url:
        manager = RedisManager.from_settings(
            settings.model_copy(
                update={"redis_connect_timeout": timeout, "redis_max_retries_per_request": 0}
            )
        )
    else:
        manager = RedisManager.from_url(settings.redis_url, probe, settings.redis_fallback_1)

    async def scan(r: Any) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        async for key in r.scan_iter(match="swarm:*:heartbeat:*", count=1000):
            parts = str(key).split(":")
            if len(parts) == 4:
                found.add((parts[1], parts[3]))
        return found

    try:
        return await manager.run(scan)
    finally:
        await manager.close()


async def check_agents(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> Check:
    began = time.perf_counter()
    try:
        rows = await asyncio.to_thread(_running_rows, settings)
    except Exception as exc:  # no database: the database check says why
        return Check("agents", "warn", f"cannot read agent records: {_short(exc)}", _ms(began))
    live = await asyncio.to_thread(_live_processes, settings)
    beats: set[tuple[str, str]] | None
    redis_note = ""
    try:
        if settings.redis_url or settings.cfn_redis_sentinels:
            beats = await _heartbeats(settings, timeout)
        else:
            status = await asyncio.to_thread(EmbeddedRedis(settings).status)
            beats = await _heartbeats(settings, timeout) if status.running else None
            if beats is None:
                redis_note = "; heartbeats unknown (no Redis)"
    except CfnError as exc:
        beats = None
        redis_note = f"; heartbeats unknown ({_short(exc)})"
    marked = {(r.task_id, r.agent_id) for r in rows}
    beating = beats or set()
    stale = sorted(a for a in marked if a not in beating and a not in live)
    data: dict[str, Any] = {
        "markedRunning": len(marked),
        "heartbeats": None if beats is None else len(beats),
        "processes": len(live),
        "stale": [f"{t}/{a}" for t, a in stale[:20]],
    }
    summary = (
        f"{len(marked)} marked running, "
        + ("? heartbeats" if beats is None else f"{len(beating)} live heartbeats")
        + f", {len(live)} agent processes here"
    )
    if stale and beats is not None:
        names = ", ".join(f"{t}/{a}" for t, a in stale[:5]) + (" ..." if len(stale) > 5 else "")
        return Check(
            "agents",
            "warn",
            f"{summary}; {len(stale)} marked running with no heartbeat and no process "
            f"({names}): their orchestrator may have died, `cfn resume TASK` continues it",
            _ms(began),
            data=data,
        )
    return Check("agents", "ok", summary + redis_note, _ms(began), data=data)


# --- containers (Docker or Podman API) ---------------------------------------------------------


def docker_client(docker_host: str, timeout: float = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    """An HTTP client for the Docker Engine API at DOCKER_HOST (unix:// or tcp://)."""
    parts = urlsplit(docker_host)
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        if not path:
            raise ConfigError(f"DOCKER_HOST {docker_host!r} names no socket path")
        transport = httpx.AsyncHTTPTransport(uds=path)
        return httpx.AsyncClient(transport=transport, base_url="http://docker", timeout=timeout)
    if parts.scheme in ("tcp", "http"):
        if not parts.hostname:
            raise ConfigError(f"DOCKER_HOST {docker_host!r} names no host")
        return httpx.AsyncClient(
            base_url=f"http://{parts.hostname}:{parts.port or 2375}", timeout=timeout
        )
    raise ConfigError(
        f"DOCKER_HOST {docker_host!r} is not supported: use unix:///path/to/docker.sock "
        "or tcp://host:port"
    )


def container_endpoint(settings: Settings) -> str | None:
    """DOCKER_HOST; without it, the engine the agents' runtime uses (cfn's own Podman
    service in docker mode); None when agents are local processes."""
    if settings.docker_host:
        return settings.docker_host
    return spawner_for(settings).engine


async def check_containers(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """The compose project's orchestrator, redis and postgres containers (seed: docker ps)."""
    endpoint = container_endpoint(settings)
    if endpoint is None:
        return [
            Check(
                "containers",
                "ok",
                "not configured (DOCKER_HOST unset and CFN_SPAWN_MODE/MODE not docker: "
                "cfn runs as local processes)",
                configured=False,
            )
        ]
    project = compose_project(settings)
    began = time.perf_counter()
    try:
        client = docker_client(endpoint, timeout)
    except ConfigError as exc:
        return [Check("containers", "error", str(exc))]
    filters = json.dumps({"label": [f"{COMPOSE_PROJECT_LABEL}={project}"]})
    try:
        async with client:
            reply = await client.get(f"/containers/json?all=1&filters={quote(filters)}")
    except httpx.HTTPError as exc:
        return [
            Check(
                "containers",
                "error",
                f"the container API at {endpoint} does not answer: "
                f"{type(exc).__name__} {_short(exc)}",
                _ms(began),
            )
        ]
    latency = _ms(began)
    if reply.status_code != 200:
        return [Check("containers", "error", f"container API: HTTP {reply.status_code}", latency)]
    try:
        listed = reply.json()
    except ValueError:
        listed = None
    if not isinstance(listed, list):
        return [Check("containers", "error", "container API: not a list of containers", latency)]
    by_service: dict[str, list[dict[str, Any]]] = {}
    for item in listed:
        if isinstance(item, dict):
            labels = item.get("Labels") or {}
            service = labels.get(COMPOSE_SERVICE_LABEL) if isinstance(labels, dict) else None
            if isinstance(service, str):
                by_service.setdefault(service, []).append(item)
    return [
        _container_check(project, service, by_service.get(service, []), latency)
        for service in CONTAINER_SERVICES
    ]


def _container_name(item: dict[str, Any]) -> str:
    names = item.get("Names") or []
    if isinstance(names, list) and names:
        return str(names[0]).lstrip("/")
    return str(item.get("Id", "?"))[:12]


def _container_check(
    project: str, service: str, items: list[dict[str, Any]], latency: float
) -> Check:
    name = f"container:{service}"
    if not items:
        return Check(
            name, "error", f"service {service} not running: no container in project {project}",
            latency,
        )  # fmt: skip
    running = [i for i in items if i.get("State") == "running"]
    if not running:
        first = items[0]
        return Check(
            name,
            "error",
            f"service {service} not running: {_container_name(first)} is "
            f"{first.get('State') or '?'} ({first.get('Status') or ''})".rstrip(" ()"),
            latency,
        )
    item = running[0]
    status = str(item.get("Status") or "")
    detail = f"{_container_name(item)}: {status or 'running'}"
    if "unhealthy" in status:
        return Check(name, "error", detail, latency)
    if "health: starting" in status or "starting" in status.lower():
        return Check(name, "warn", detail, latency)
    return Check(name, "ok", detail, latency)


# --- all of it ---------------------------------------------------------------------------------


async def _bounded(
    name: str, make: Callable[[], Awaitable[Check | list[Check]]], limit: float
) -> list[Check]:
    began = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            result = await make()
    except TimeoutError:
        return [Check(name, "error", f"no answer within {limit:g} s", _ms(began))]
    except CfnError as exc:
        return [Check(name, "error", _short(exc), _ms(began))]
    return result if isinstance(result, list) else [result]


async def check_system(
    settings: Settings,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    portal: Check | None = None,
) -> HealthReport:
    """Every check at once; ``portal`` replaces the portal check (the portal asking itself)."""
    began = time.perf_counter()
    limit = timeout * 2 + 1  # a check may make a couple of round trips
    jobs: list[tuple[str, Callable[[], Awaitable[Check | list[Check]]]]] = [
        ("redis", lambda: check_redis(settings, timeout)),
        ("redis-fallback", lambda: check_redis_fallback(settings, timeout)),
        ("database", lambda: check_database(settings)),
        ("llm-gateway", lambda: check_llm_gateway(settings, timeout)),
        ("mcp", lambda: check_mcp(settings, timeout)),
        ("agents", lambda: check_agents(settings, timeout)),
        ("containers", lambda: check_containers(settings, timeout)),
    ]
    if portal is None:
        jobs.insert(5, ("portal", lambda: check_portal(settings, timeout)))
    results = await asyncio.gather(*(_bounded(n, make, limit) for n, make in jobs))
    checks = [c for group in results for c in group]
    if portal is not None:
        checks.insert(len(checks) - 2, portal)
    return HealthReport(checks, _ms(began))


def validate_timeout(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.1 <= float(value) <= 60
    ):
        raise InvalidInputError(f"timeout must be from 0.1 to 60 seconds, got {value!r}")
    return float(value)


__all__ = [
    "CONTAINER_SERVICES",
    "STATUSES",
    "Check",
    "HealthReport",
    "check_agents",
    "check_containers",
    "check_database",
    "check_mcp",
    "check_portal",
    "check_redis",
    "check_redis_fallback",
    "check_system",
    "docker_client",
    "validate_timeout",
]
