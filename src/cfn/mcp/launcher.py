"""``cfn mcp up|down|status``: the servers as local processes under the seed's limits.

Each server (and the gateway) runs as ``python -m cfn.mcp.serve NAME`` in a
session of its own, detached from the command that started it. Limits are
the seed's table (limit / reservation) applied through cgroup v1, the way
the agent spawner does it (``cfn.agents.shim.Cgroups``): the limit is
``memory.limit_in_bytes`` and ``cpu.cfs_quota_us``; the memory reservation is
``memory.soft_limit_in_bytes``, the CPU reservation ``cpu.shares`` (1024 per
CPU, as Kubernetes maps CPU requests). The process joins its
groups before it execs. There is no RLIMIT_AS fallback: Chromium and its
helpers reserve far more address space than they use, so an address-space
limit breaks the Playwright server; without writable cgroups (MCP_CGROUPS=auto)
the servers run unlimited and ``status`` says so. In containers the same
figures go into the compose file's ``deploy.resources``.

State: ``<state>/mcp/servers.json`` (pids, start times, ports, groups) and
one log per server under ``<state>/mcp/logs/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cfn.agents import shim
from cfn.agents.spawner import parse_cpu_limit, parse_memory_limit
from cfn.errors import McpServerError
from cfn.mcp.routing import SERVERS
from cfn.mcp.serve import GATEWAY, port_of
from cfn.settings import Settings

STATE_FILE = "servers.json"
START_TIMEOUT = 90.0
STOP_GRACE = 5.0
GATEWAY_LIMITS = ("256m", "128m", 0.5, 0.1)


@dataclass
class ServerProcess:
    name: str
    pid: int
    pid_start: int | None
    port: int
    url: str
    log: str
    limits: str
    memory_limit: str
    memory_reservation: str
    cpu_limit: float
    cpu_reservation: float
    cgroups: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0


@dataclass
class ServerStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    port: int | None
    url: str | None
    limits: str
    memory_limit: str
    cpu_limit: float
    memory_bytes: int | None = None
    detail: str = ""


def _limits(name: str) -> tuple[str, str, float, float]:
    if name == GATEWAY:
        return GATEWAY_LIMITS
    spec = SERVERS[name]
    return spec.memory_limit, spec.memory_reservation, spec.cpu_limit, spec.cpu_reservation


#: cpu.shares of one CPU (the kernel's default weight of a group or a task).
SHARES_PER_CPU = 1024
SHARES_MIN = 2


def cpu_shares(cpus: float) -> int:
    """The weight of a CPU reservation: 1024 per CPU, as Kubernetes maps CPU requests."""
    return max(SHARES_MIN, round(cpus * SHARES_PER_CPU))


def _apply_reservations(groups: shim.Cgroups, memory: int) -> None:
    """The memory reservation as the soft limit (reclaimed first above it)."""
    mem = groups.paths.get("memory")
    if mem:
        with contextlib.suppress(OSError):
            Path(mem, "memory.soft_limit_in_bytes").write_text(str(memory))


def _set_cpu_shares(groups: shim.Cgroups, cpus: float | None) -> None:
    """The CPU reservation as the group's ``cpu.shares`` (None: the default, 1024).

    Shares are a weight, not a floor: when the CPUs are contended, the groups
    under ``cfn/`` (these servers, and agents at the default 1024) split the CPU
    time ``cfn`` gets in proportion to their shares, so a server gets at least
    its reservation as long as the reservations of the busy groups add up to
    no more than that time. An idle machine gives any group all it asks for,
    up to its quota (the CPU limit). Like the quota, the weight is set once the
    server is healthy: at 102 shares among busy agents, a start would take
    many times longer.
    """
    cpu = groups.paths.get("cpu")
    if cpu:
        shares = SHARES_PER_CPU if cpus is None else cpu_shares(cpus)
        Path(cpu, "cpu.shares").write_text(str(shares))


def _set_cpu_quota(groups: shim.Cgroups, cpus: float | None) -> None:
    """CFS quota for ``cpus`` CPUs (None: unlimited).

    A server starts unthrottled and gets its quota once healthy: importing the
    SDK, Starlette and Playwright takes about 2 CPU-seconds, which at the seed's
    0.25 CPU would delay every start by 8 s or more.
    """
    cpu = groups.paths.get("cpu")
    if cpu:
        quota = -1 if cpus is None else max(shim.CFS_QUOTA_MIN_US, int(cpus * shim.CFS_PERIOD_US))
        Path(cpu, "cpu.cfs_quota_us").write_text(str(quota))


class Launcher:
    def __init__(self, settings: Settings, *, python: str = sys.executable) -> None:
        self.settings = settings
        self.python = python
        self.dir = settings.state_dir / "mcp"

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def read_state(self) -> dict[str, ServerProcess]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        out: dict[str, ServerProcess] = {}
        for name, item in data.items() if isinstance(data, dict) else ():
            with contextlib.suppress(TypeError):
                out[name] = ServerProcess(**item)
        return out

    def _write_state(self, state: dict[str, ServerProcess]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in state.items()}, indent=2))
        os.replace(tmp, self.state_path)

    def url(self, name: str) -> str:
        host = self.settings.mcp_host
        if host in ("0.0.0.0", "::"):  # noqa: S104 (a check, not a bind)
            host = "127.0.0.1"
        return f"http://{host}:{port_of(name, self.settings)}"

    # --- up ------------------------------------------------------------------------------

    def up(self, names: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
        """Start the servers (and the gateway) not already running; wait until healthy."""
        wanted = names or [*SERVERS, GATEWAY]
        for name in wanted:
            if name != GATEWAY and name not in SERVERS:
                raise McpServerError(f"unknown MCP server {name!r}; known: {', '.join(SERVERS)}")
        state = self.read_state()
        started: list[str] = []
        for name in wanted:
            current = state.get(name)
            if current is not None and shim.proc_alive(current.pid, current.pid_start):
                continue
            state[name] = self._start(name, env or {})
            started.append(name)
            self._write_state(state)
        deadline = time.monotonic() + START_TIMEOUT
        for name in started:
            self._wait_healthy(state[name], deadline)
            if state[name].cgroups:
                groups = shim.Cgroups(dict(state[name].cgroups))
                _set_cpu_quota(groups, state[name].cpu_limit)
                _set_cpu_shares(groups, state[name].cpu_reservation)
        return started

    def _start(self, name: str, env: dict[str, str]) -> ServerProcess:
        memory, reservation, cpus, cpu_reservation = _limits(name)
        memory_bytes = parse_memory_limit(memory, f"{name} memory limit")
        cpu_value = min(parse_cpu_limit(cpus, f"{name} CPU limit"), float(os.cpu_count() or 1))
        port = port_of(name, self.settings)
        groups: shim.Cgroups | None = None
        limits = "none"
        if self.settings.mcp_cgroups != "off":
            try:
                groups = shim.Cgroups.create(f"mcp-{name}-{port}", memory_bytes, cpu_value)
                _apply_reservations(groups, parse_memory_limit(reservation, f"{name} reservation"))
                # The quota and the weight apply once the server is healthy.
                _set_cpu_quota(groups, None)
                _set_cpu_shares(groups, None)
                limits = "cgroup"
            except OSError as exc:
                if groups is not None:  # made, but not all of it could be set: none of it
                    groups.remove()
                    groups = None
                if self.settings.mcp_cgroups == "on":
                    raise McpServerError(
                        f"cgroup v1 limits required (MCP_CGROUPS=on) but not available: {exc}"
                    ) from None
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = logs / f"{name}.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        join = groups.join if groups is not None else None

        def preexec() -> None:
            if join is not None:
                join(os.getpid())

        environment = {
            **os.environ,
            **env,
            "CFN_STATE_DIR": str(self.settings.state_dir),
            "CFN_MCP_SERVER": name,
        }
        try:
            proc = subprocess.Popen(
                [self.python, "-m", "cfn.mcp.serve", name, "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=environment,
                cwd=self.settings.project_root,
                start_new_session=True,
                preexec_fn=preexec if join is not None else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if groups is not None:
                groups.remove()
            raise McpServerError(f"could not start the {name} MCP server: {exc}") from None
        finally:
            os.close(log_fd)
        return ServerProcess(
            name=name,
            pid=proc.pid,
            pid_start=shim.proc_start_ticks(proc.pid),
            port=port,
            url=self.url(name),
            log=str(log_path),
            limits=limits,
            memory_limit=memory,
            memory_reservation=reservation,
            cpu_limit=cpus,
            cpu_reservation=cpu_reservation,
            cgroups=groups.paths if groups is not None else {},
            started_at=time.time(),
        )

    def _wait_healthy(self, item: ServerProcess, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not shim.proc_alive(item.pid, item.pid_start):
                raise McpServerError(f"the {item.name} MCP server exited at start; see {item.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(item.url + "/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)  # bounded wait for a port to open: nothing to subscribe to
        raise McpServerError(
            f"the {item.name} MCP server did not become healthy within {START_TIMEOUT:g} s; "
            f"see {item.log}"
        )

    # --- down ----------------------------------------------------------------------------

    def down(self, names: list[str] | None = None) -> list[str]:
        """SIGTERM each server, SIGKILL after a grace; remove its groups."""
        state = self.read_state()
        targets = [n for n in (names or list(state)) if n in state]
        for name in targets:
            item = state[name]
            if shim.proc_alive(item.pid, item.pid_start):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(item.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for name in targets:
            item = state[name]
            while shim.proc_alive(item.pid, item.pid_start) and time.monotonic() < deadline:
                time.sleep(0.05)
            if shim.proc_alive(item.pid, item.pid_start):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(item.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(item.pid, os.WNOHANG)
            if item.cgroups:
                shim.Cgroups(dict(item.cgroups)).remove()
            del state[name]
        self._write_state(state)
        return targets

    # --- status --------------------------------------------------------------------------

    def status(self) -> list[ServerStatus]:
        state = self.read_state()
        out: list[ServerStatus] = []
        for name in [*SERVERS, GATEWAY]:
            memory, _, cpus, _ = _limits(name)
            item = state.get(name)
            if item is None:
                out.append(ServerStatus(name, False, False, None, None, None, "-", memory, cpus))
                continue
            running = shim.proc_alive(item.pid, item.pid_start)
            healthy = False
            detail = ""
            if running:
                try:
                    reply = httpx.get(item.url + "/health", timeout=2.0)
                    healthy = reply.status_code == 200
                    detail = "" if healthy else f"health: HTTP {reply.status_code}"
                except httpx.HTTPError as exc:
                    detail = f"health: {type(exc).__name__}"
            usage = None
            mem = item.cgroups.get("memory")
            if mem:
                with contextlib.suppress(OSError, ValueError):
                    usage = int(Path(mem, "memory.usage_in_bytes").read_text())
            out.append(
                ServerStatus(
                    name, running, healthy, item.pid, item.port, item.url, item.limits,
                    item.memory_limit, item.cpu_limit, usage, detail,
                )
            )  # fmt: skip
        return out


def limits_table() -> list[dict[str, Any]]:
    """The seed's table as data (for docs, compose files and status)."""
    return [
        {
            "server": spec.name,
            "memory_limit": spec.memory_limit,
            "memory_reservation": spec.memory_reservation,
            "cpu_limit": spec.cpu_limit,
            "cpu_reservation": spec.cpu_reservation,
        }
        for spec in SERVERS.values()
    ]
