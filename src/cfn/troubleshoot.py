"""The seed's debug commands for process agents: list, logs (follow), stats, kill.

The seed does these with ``docker ps``, ``docker logs -f``, ``docker stats
--no-stream`` and ``docker kill``; cfn's process agents keep the same facts
under ``<state>/tasks/{task}/agents/{agent}/`` (see ``cfn.agents.spawn``):
``state.json`` (pids, start), ``exit.json`` (why it ended) and ``agent.log``
(its stdout and stderr).

* ``find_agents``: every agent spawned from this state dir, with its status.
* ``follow_log``: a log's bytes as they are written, until the agent ends;
  woken by inotify on the agent's directory (no polling sleep loop).
* ``sample_stats``: CPU and memory of running agents, from their cgroups
  (``cfn.system.cgroups``, v1 or v2) and /proc (RSS, CPU ticks of every process in the
  agent's cgroup or process group), two samples ``interval`` apart.
* ``kill_agent``: SIGKILL through the agent's supervisor (or SIGTERM first with
  ``graceful``), then wait for its exit record.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import select
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn import keys
from cfn.agents import shim
from cfn.agents.spawn import spawner_for
from cfn.agents.spawn.base import LOG_FILE, ExitInfo, read_json_file
from cfn.errors import AgentLookupError, CfnError, InvalidInputError
from cfn.settings import Settings
from cfn.system import proc
from cfn.system.cgroups import Cgroups

CLK_TCK = os.sysconf("SC_CLK_TCK")
KILL_WAIT = 30.0

# --- finding agents -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentInfo:
    task_id: str
    agent_id: str
    directory: Path
    status: str
    pid: int | None = None
    started_at: float | None = None
    exit: ExitInfo | None = None
    cgroups: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"cfn-agent-{self.agent_id}-{self.task_id}"

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def running(self) -> bool:
        return self.status == "running"

    def to_dict(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "agentId": self.agent_id,
            "name": self.name,
            "status": self.status,
            "pid": self.pid,
            "startedAt": self.started_at,
            "exitCode": self.exit.exit_code if self.exit else None,
            "reason": self.exit.reason if self.exit else None,
            "log": str(self.log_path),
        }


def _describe(task_id: str, agent_id: str, directory: Path) -> AgentInfo:
    state = read_json_file(directory / shim.STATE_FILE)
    record = read_json_file(directory / shim.EXIT_FILE)
    pid = state.get("pid") if state else None
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    started = state.get("started_at") if state else None
    started = float(started) if isinstance(started, int | float) else None
    groups = state.get("cgroups") if state else None
    cgroups = {str(k): str(v) for k, v in groups.items()} if isinstance(groups, dict) else {}
    if record is not None:
        info = ExitInfo.from_record(record)
        return AgentInfo(task_id, agent_id, directory, info.status, pid, started, info, cgroups)
    if state is None:
        return AgentInfo(task_id, agent_id, directory, "starting")
    if proc.proc_alive(pid, state.get("pid_start")):
        return AgentInfo(task_id, agent_id, directory, "running", pid, started, None, cgroups)
    # Neither running nor recorded: its supervisor died with it (SIGKILL of both).
    return AgentInfo(task_id, agent_id, directory, "lost", pid, started, None, cgroups)


def find_agents(
    settings: Settings, *, task_id: str | None = None, agent_id: str | None = None
) -> list[AgentInfo]:
    """Agents spawned from this state dir, oldest first (ids validated first)."""
    if task_id is not None:
        keys.validate_id(task_id, "task id")
    if agent_id is not None:
        keys.validate_id(agent_id, "agent id")
    root = settings.state_dir / "tasks"
    found: list[AgentInfo] = []
    tasks = [root / task_id] if task_id is not None else sorted(_dirs(root))
    for task in tasks:
        agents_dir = task / "agents"
        names = [agents_dir / agent_id] if agent_id is not None else sorted(_dirs(agents_dir))
        for directory in names:
            if not directory.is_dir():
                continue
            try:
                keys.validate_id(task.name, "task id")
                keys.validate_id(directory.name, "agent id")
            except InvalidInputError:
                continue  # not one of ours
            found.append(_describe(task.name, directory.name, directory))
    found.sort(key=lambda a: (a.started_at or 0.0, a.task_id, a.agent_id))
    return found


def _dirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def find_agent(settings: Settings, agent_id: str, task_id: str | None = None) -> AgentInfo:
    """The one agent ``agent_id`` (of ``task_id``); a clear error when none or several."""
    found = find_agents(settings, task_id=task_id, agent_id=agent_id)
    if not found:
        where = f" of task {task_id!r}" if task_id else ""
        raise AgentLookupError(
            f"no agent {agent_id!r}{where} was spawned from {settings.state_dir} "
            "(`cfn agents list --all` lists them)"
        )
    if len(found) > 1:
        tasks = ", ".join(a.task_id for a in found)
        raise AgentLookupError(
            f"agent id {agent_id!r} is used by {len(found)} tasks ({tasks}); "
            "say which with --task-id"
        )
    return found[0]


# --- logs --------------------------------------------------------------------------------------

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")


class Inotify:
    """Linux inotify through libc (no extra package): wakes when a directory changes."""

    def __init__(self, directory: Path, mask: int) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd: int = fd
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"cannot watch {directory}: {os.strerror(code)}")

    def wait(self, timeout: float | None = None) -> list[str]:
        """Block until something changes (or ``timeout``); the names that changed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        names: list[str] = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            names.append(raw.rstrip(b"\0").decode("utf-8", "replace"))
            offset += _EVENT.size + length
        return names

    def close(self) -> None:
        os.close(self.fd)


def tail_bytes(path: Path, lines: int | None) -> tuple[bytes, int]:
    """The last ``lines`` lines of ``path`` (all when None) and the offset read up to."""
    if lines is not None and (isinstance(lines, bool) or not 0 <= lines <= 1_000_000):
        raise InvalidInputError(f"--tail must be from 0 to 1000000 lines, got {lines!r}")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return b"", 0
    end = len(data)
    if lines is None:
        return data, end
    if lines == 0:
        return b"", end
    body = data[:-1] if data.endswith(b"\n") else data
    cut = len(body)
    for _ in range(lines):
        cut = body.rfind(b"\n", 0, cut)
        if cut < 0:
            return data, end
    return data[cut + 1 :], end


def follow_log(agent: AgentInfo, offset: int) -> Iterator[bytes]:
    """What the agent writes to its log from ``offset`` on, until its exit is recorded.

    Wakes on inotify events of the agent's directory (the log grows, exit.json
    appears); the 1 s select timeout only re-checks that the agent still lives
    when its supervisor was killed without writing exit.json.
    """
    watch = Inotify(agent.directory, IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)
    try:
        position = offset
        while True:
            chunk, position = _read_from(agent.log_path, position)
            if chunk:
                yield chunk
            if not _still_running(agent):
                chunk, position = _read_from(agent.log_path, position)
                if chunk:
                    yield chunk
                return
            watch.wait(1.0)
    finally:
        watch.close()


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:  # truncated (a respawn): start over
                offset = 0
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


def _still_running(agent: AgentInfo) -> bool:
    if (agent.directory / shim.EXIT_FILE).exists():
        return False
    state = read_json_file(agent.directory / shim.STATE_FILE)
    if state is None:
        return True  # still starting
    return proc.proc_alive(state.get("pid"), state.get("pid_start")) or proc.proc_alive(
        state.get("shim_pid"), state.get("shim_start")
    )


# --- stats -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentStats:
    agent: AgentInfo
    processes: int
    cpu_percent: float
    rss_bytes: int
    cgroup_memory_bytes: int | None
    memory_limit_bytes: int | None
    cpu_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "taskId": self.agent.task_id,
            "agentId": self.agent.agent_id,
            "pid": self.agent.pid,
            "processes": self.processes,
            "cpuPercent": round(self.cpu_percent, 1),
            "cpuSeconds": round(self.cpu_seconds, 2),
            "rssBytes": self.rss_bytes,
            "cgroupMemoryBytes": self.cgroup_memory_bytes,
            "memoryLimitBytes": self.memory_limit_bytes,
        }


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(process group, CPU ticks) of ``pid``."""
    found = proc.proc_stat_fields(pid, 5, 14, 15)
    return None if found is None else (found[0], found[1] + found[2])


def _members(agent: AgentInfo) -> set[int]:
    """The agent's processes: its cgroup's, else every process in its process group."""
    pids = Cgroups(dict(agent.cgroups)).pids()
    if pids or agent.pid is None:
        return pids
    return proc.proc_group_members(agent.pid)


def _sample(agents: list[AgentInfo]) -> dict[str, tuple[set[int], int]]:
    out: dict[str, tuple[set[int], int]] = {}
    for agent in agents:
        pids = _members(agent)
        ticks = 0
        for pid in pids:
            stat = _proc_stat(pid)
            if stat is not None:
                ticks += stat[1]
        out[agent.name] = (pids, ticks)
    return out


def sample_stats(agents: list[AgentInfo], interval: float = 0.5) -> list[AgentStats]:
    """CPU (% of one CPU over ``interval``) and memory of each running agent."""
    if isinstance(interval, bool) or not 0.05 <= interval <= 60:
        raise InvalidInputError(f"interval must be from 0.05 to 60 seconds, got {interval!r}")
    running = [a for a in agents if a.running]
    first = _sample(running)
    began = time.monotonic()
    time.sleep(interval)  # the measurement window, like `docker stats`' one sample
    second = _sample(running)
    elapsed = time.monotonic() - began
    stats: list[AgentStats] = []
    for agent in running:
        pids, ticks = second.get(agent.name, (set(), 0))
        _, before = first.get(agent.name, (set(), 0))
        used = max(0, ticks - before) / CLK_TCK
        stats.append(
            AgentStats(
                agent=agent,
                processes=len(pids),
                cpu_percent=100.0 * used / elapsed if elapsed > 0 else 0.0,
                rss_bytes=sum(proc.proc_rss_bytes(p) for p in pids),
                cgroup_memory_bytes=Cgroups(dict(agent.cgroups)).memory_usage(),
                memory_limit_bytes=Cgroups(dict(agent.cgroups)).memory_limit(),
                cpu_seconds=ticks / CLK_TCK,
            )
        )
    return stats


# --- kill --------------------------------------------------------------------------------------


async def kill_agent(
    settings: Settings,
    agent_id: str,
    task_id: str | None = None,
    *,
    graceful: bool = False,
    wait: float = KILL_WAIT,
) -> ExitInfo:
    """Stop a running agent (SIGKILL, or SIGTERM then SIGKILL) and return its exit record."""
    agent = find_agent(settings, agent_id, task_id)
    if not agent.running:
        raise CfnError(f"{agent.name} is not running (it is {agent.status})")
    handle = await spawner_for(settings).attach(agent.task_id, agent.agent_id)
    await (handle.stop() if graceful else handle.kill())
    try:
        async with asyncio.timeout(wait):
            return await handle.wait()
    except TimeoutError:
        raise CfnError(f"{agent.name} did not end within {wait:g} s of the signal") from None


__all__ = [
    "AgentInfo",
    "AgentStats",
    "Inotify",
    "find_agent",
    "find_agents",
    "follow_log",
    "kill_agent",
    "sample_stats",
    "tail_bytes",
]
