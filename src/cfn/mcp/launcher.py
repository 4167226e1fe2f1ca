"""``cfn mcp up|down|status``: the servers as local processes under the seed's limits.

Each server (and the gateway) runs as ``python -m cfn.mcp.serve NAME`` in a
session of its own, detached from the command that started it. Limits are
the seed's table (limit / reservation) applied through cgroups, the way
the agent supervisor does it (``cfn.system.cgroups``, v1 or v2): the limit is
the memory limit and the CFS quota; the memory reservation is the soft limit
(v2: ``memory.low``), the CPU reservation the group's weight (``cpu.shares``,
1024 per CPU, as Kubernetes maps CPU requests; v2: ``cpu.weight``, 100 per
CPU). The process joins its groups before it execs; starting, the health
wait and stopping are ``cfn.system.daemon``'s. There is no RLIMIT_AS fallback: Chromium and its
helpers reserve far more address space than they use, so an address-space
limit breaks the Playwright server; without writable cgroups (MCP_CGROUPS=auto)
the servers run unlimited and ``status`` says so. In containers the same
figures go into the compose file's ``deploy.resources``.

State: ``<state>/mcp/servers.json`` (pids, start times, ports, groups) and
one log per server under ``<state>/mcp/logs/``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cfn.errors import McpServerError
from cfn.mcp import forked
from cfn.mcp.routing import GATEWAY, SERVERS, port_of
from cfn.settings import Settings, early
from cfn.system import forkwire
from cfn.system.cgroups import Cgroups
from cfn.system.daemon import Daemon, stop_process, wait_until
from cfn.system.limits import parse_cpu_limit, parse_memory_limit
from cfn.system.proc import proc_alive, proc_start_ticks, signal_pid

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


def _apply_reservations(groups: Cgroups, memory: int) -> None:
    """The memory reservation as the soft limit (reclaimed first above it)."""
    with contextlib.suppress(OSError):
        groups.set_memory_reservation(memory)


def _set_cpu_shares(groups: Cgroups, cpus: float | None) -> None:
    """The CPU reservation as the group's weight (None: the default, one CPU's worth).

    A weight is not a floor: when the CPUs are contended, the groups under
    ``cfn/`` (these servers, and agents at the default weight) split the CPU
    time ``cfn`` gets in proportion to their weights, so a server gets at least
    its reservation as long as the reservations of the busy groups add up to
    no more than that time. An idle machine gives any group all it asks for,
    up to its quota (the CPU limit). Like the quota, the weight is set once the
    server is healthy: at a tenth of a CPU among busy agents, a start would
    take many times longer.
    """
    groups.set_cpu_weight(cpus)


def _set_cpu_quota(groups: Cgroups, cpus: float | None) -> None:
    """CFS quota for ``cpus`` CPUs (None: unlimited).

    A server starts unthrottled and gets its quota once healthy: importing the
    SDK, Starlette and Playwright takes about 2 CPU-seconds, which at the seed's
    0.25 CPU would delay every start by 8 s or more.
    """
    groups.set_cpu_quota(cpus)


def _answers_as(item: ServerProcess, timeout: float) -> str | None:
    """None when ``item``'s own process answers its /health; otherwise what is wrong.

    Another process on the port (another checkout's server, while ours died with
    EADDRINUSE) answers too: the pid in the reply tells them apart."""
    try:
        reply = httpx.get(item.url + "/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if reply.status_code != 200:
        return f"HTTP {reply.status_code}"
    try:
        body = reply.json()
    except ValueError:
        body = None
    pid = body.get("pid") if isinstance(body, dict) else None
    if pid != item.pid:
        return f"port {item.port} is answered by another process (pid {pid}), not {item.pid}"
    return None


class Launcher:
    def __init__(self, settings: Settings, *, python: str = sys.executable) -> None:
        self.settings = settings
        self.python = python
        self.dir = settings.state_dir / "mcp"
        # One record for all the servers; each has its own log under logs/.
        self.daemon = Daemon(self.dir, record=STATE_FILE, log="logs/launcher.log", private=False)

    @property
    def state_path(self) -> Path:
        return self.daemon.record_file

    def read_state(self) -> dict[str, ServerProcess]:
        out: dict[str, ServerProcess] = {}
        for name, item in self.daemon.read_record().items():
            with contextlib.suppress(TypeError):
                out[name] = ServerProcess(**item)
        return out

    def _write_state(self, state: dict[str, ServerProcess]) -> None:
        self.daemon.write_record({k: asdict(v) for k, v in state.items()})

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
            if current is not None and proc_alive(current.pid, current.pid_start):
                continue
            state[name] = self._start(name, env or {})
            started.append(name)
            self._write_state(state)
        deadline = time.monotonic() + START_TIMEOUT
        for name in started:
            self._wait_healthy(state[name], deadline)
            if state[name].cgroups:
                groups = Cgroups(dict(state[name].cgroups))
                _set_cpu_quota(groups, state[name].cpu_limit)
                _set_cpu_shares(groups, state[name].cpu_reservation)
        return started

    def _start(self, name: str, env: dict[str, str]) -> ServerProcess:
        memory, reservation, cpus, cpu_reservation = _limits(name)
        memory_bytes = parse_memory_limit(memory, f"{name} memory limit")
        cpu_value = min(parse_cpu_limit(cpus, f"{name} CPU limit"), float(os.cpu_count() or 1))
        port = port_of(name, self.settings)
        groups: Cgroups | None = None
        limits = "none"
        if self.settings.mcp_cgroups != "off":
            try:
                groups = Cgroups.create(f"mcp-{name}-{port}", memory_bytes, cpu_value)
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
                        f"cgroup limits required (MCP_CGROUPS=on) but not available: {exc}"
                    ) from None
        log_path = self.dir / "logs" / f"{name}.log"
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
        pid = self._fork(name, port, environment, groups, log_path)
        if pid is None:
            try:
                proc = self.daemon.spawn(
                    [self.python, "-m", "cfn.mcp.serve", name, "--port", str(port)],
                    env=environment,
                    cwd=self.settings.project_root,
                    log=log_path,
                    preexec=preexec if join is not None else None,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                if groups is not None:
                    groups.remove()
                raise McpServerError(f"could not start the {name} MCP server: {exc}") from None
            pid = proc.pid
        return ServerProcess(
            name=name,
            pid=pid,
            pid_start=proc_start_ticks(pid),
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

    def _fork(
        self,
        name: str,
        port: int,
        env: dict[str, str],
        groups: Cgroups | None,
        log_path: Path,
    ) -> int | None:
        """Fork the server from this checkout's agent server when it runs (cfn.mcp.forked);
        None when it does not or refuses: then the server starts as its own Python."""
        if self.settings.cfn_agent_server != "auto" or self.python != sys.executable:
            return None
        socket_path = str(self.settings.agent_server_dir / early.SERVER_SOCKET)
        request = forked.request(
            name, port, str(self.settings.project_root), env, groups.paths if groups else {}
        )
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid, conn = forkwire.request_fork(socket_path, forkwire.MCP_SERVER, [log_fd], request)
        except (OSError, ValueError):
            return None
        finally:
            os.close(log_fd)
        conn.close()  # the server reaps it; its exit status is nobody's business here
        return int(pid)

    def _wait_healthy(self, item: ServerProcess, deadline: float) -> None:
        def healthy() -> bool:
            return _answers_as(item, 1.0) is None

        def exited() -> bool:
            return not proc_alive(item.pid, item.pid_start)

        if exited():
            raise McpServerError(f"the {item.name} MCP server exited at start; see {item.log}")
        if wait_until(healthy, deadline - time.monotonic(), exited=exited):
            return
        if exited():
            raise McpServerError(f"the {item.name} MCP server exited at start; see {item.log}")
        raise McpServerError(
            f"the {item.name} MCP server did not become healthy within {START_TIMEOUT:g} s; "
            f"see {item.log}"
        )

    # --- down ----------------------------------------------------------------------------

    def down(self, names: list[str] | None = None) -> list[str]:
        """SIGTERM each server, SIGKILL after a grace; remove its groups."""
        state = self.read_state()
        targets = [n for n in (names or list(state)) if n in state]
        # All of them are asked at once, then each gets what is left of one grace.
        for name in targets:
            item = state[name]
            if proc_alive(item.pid, item.pid_start):
                signal_pid(item.pid, signal.SIGTERM, group=True)
        deadline = time.monotonic() + STOP_GRACE
        for name in targets:
            item = state[name]
            stop_process(
                item.pid,
                grace=max(0.0, deadline - time.monotonic()),
                start_ticks=item.pid_start,
                signum=None,
                group=True,
            )
            if item.cgroups:
                Cgroups(dict(item.cgroups)).remove()
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
            running = proc_alive(item.pid, item.pid_start)
            healthy = False
            detail = ""
            if running:
                problem = _answers_as(item, 2.0)
                healthy = problem is None
                detail = "" if problem is None else f"health: {problem}"
            usage = Cgroups(dict(item.cgroups)).memory_usage() if item.cgroups else None
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
