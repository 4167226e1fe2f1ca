"""Starting agents (seed: spawn-agent.sh), limiting them, and watching them end.

``Spawner`` is the interface the orchestrator uses; ``ProcessSpawner`` runs
each agent as a local process (the container spawner comes with Docker).

Each agent runs under its own supervisor (``cfn.agents.shim``), started in a
new session so that neither survives nor dies with the orchestrator by
accident: the supervisor applies the memory and CPU limits (cgroup v1 where
writable, RLIMIT_AS otherwise), enforces AGENT_TIMEOUT, and writes the exit
record. Waiting is on pidfds registered with the event loop: nothing polls.

Per agent, under ``<state>/tasks/{task}/agents/{agent}/``::

    context.json   the seed's CLI context (0600), CFN_AGENT_CONTEXT points here
    agent.log      stdout and stderr of the agent (and one line each from its supervisor)
    shim.json      what the supervisor was asked to run (0600)
    state.json     pids and start times, written once the agent runs
    exit.json      why it ended: exit code, signal, timed out, killed, OOM-killed

The agent's environment is the orchestrator's plus the seed's AGENT_ID,
TASK_ID, MODE, PROVIDER and COMPOSE_PROJECT_NAME, and CFN_AGENT_CONTEXT,
CFN_AGENT_NAME, CFN_STATE_DIR, REDIS_URL and REDISCLI_AUTH (so both a Python
agent and plain ``redis-cli`` reach the same Redis).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from cfn import keys
from cfn.agents import shim
from cfn.agents.context import (
    CONTEXT_FILE,
    DEFAULT_COMPOSE_PROJECT,
    DEFAULT_MODE,
    DEFAULT_PROVIDER,
    AgentContext,
    agent_dir,
    agent_name,
    generate_cli_context,
    resolve_endpoint,
    write_private,
)
from cfn.coordination import acl
from cfn.errors import AgentLookupError, AgentSpawnError, InvalidInputError
from cfn.settings import Settings

if TYPE_CHECKING:
    from cfn.agents.container import ContainerHandle

LOG_FILE = "agent.log"
SPEC_FILE = "shim.json"
LOCK_FILE = ".spawn.lock"
READY_TIMEOUT = 30.0
MEMORY_MIN = 4 * 1024 * 1024
MEMORY_MAX = 1024**5
_MEMORY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)([bkmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


# --- limits ------------------------------------------------------------------------------


def parse_memory_limit(value: object, what: str = "AGENT_MEMORY_LIMIT") -> int:
    """``512m``/``1g``/``1.5g``/``65536k``/bytes (docker's units) → bytes."""
    match = _MEMORY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInputError(
            f"{what} {value!r} is not a memory size: use a number with an optional unit "
            "b, k, m, g or t (e.g. 512m, 1g)"
        )
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MEMORY_MIN <= number <= MEMORY_MAX:
        raise InvalidInputError(
            f"{what} {value!r} is out of range: use at least 4m (and at most 1024t)"
        )
    return int(number)


def parse_cpu_limit(value: object, what: str = "AGENT_CPU_LIMIT") -> float:
    """CPUs as ``docker run --cpus`` takes them: 0.01 up to the machine's CPU count."""
    try:
        cpus = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        cpus = math.nan
    available = os.cpu_count() or 1
    if isinstance(value, bool) or not math.isfinite(cpus) or not 0.01 <= cpus <= available:
        raise InvalidInputError(
            f"{what} {value!r} is not a CPU limit: use a number from 0.01 to {available} "
            "(this machine's CPUs), e.g. 1.0 or 0.5"
        )
    return cpus


@dataclass(frozen=True)
class AgentLimits:
    memory: str
    memory_bytes: int
    cpus: float
    timeout: float

    @classmethod
    def from_context(cls, context: AgentContext) -> AgentLimits:
        """The limits a context asks for (AGENT_* settings went into it), validated."""
        memory = context.resources.memory_limit
        return cls(
            memory=memory,
            memory_bytes=parse_memory_limit(memory),
            cpus=parse_cpu_limit(context.cfn.cpu_limit),
            timeout=context.resources.timeout_seconds,
        )


# --- exit information ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExitInfo:
    """Why an agent ended."""

    task_id: str
    agent_id: str
    name: str
    pid: int
    exit_code: int | None
    signal: int | None
    timed_out: bool = False
    oom_killed: bool = False
    killed: bool = False
    lost: bool = False
    reason: str = ""
    duration: float | None = None
    limits: str = "none"
    max_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Exited by itself with code 0 (whether its *work* succeeded is its report's call)."""
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.oom_killed
            and not self.killed
            and not self.lost
        )

    @property
    def status(self) -> str:
        """One word: exited, failed, oom, timeout, killed or lost."""
        if self.lost:
            return "lost"
        if self.oom_killed:
            return "oom"
        if self.timed_out:
            return "timeout"
        if self.killed:
            return "killed"
        return "exited" if self.exit_code == 0 else "failed"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("record")
        data["status"] = self.status
        data["ok"] = self.ok
        return data

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ExitInfo:
        cpu = None
        if isinstance(record.get("cpu_user"), int | float):
            cpu = round(float(record["cpu_user"]) + float(record.get("cpu_system") or 0), 6)
        return cls(
            task_id=str(record.get("task_id", "")),
            agent_id=str(record.get("agent_id", "")),
            name=str(record.get("name", "")),
            pid=int(record.get("pid") or 0),
            exit_code=record.get("exit_code"),
            signal=record.get("signal"),
            timed_out=bool(record.get("timed_out")),
            oom_killed=bool(record.get("oom_killed")),
            killed=bool(record.get("killed") or record.get("stop_requested")),
            reason=str(record.get("reason") or shim.describe(record)),
            duration=record.get("duration"),
            limits=str(record.get("limits", "none")),
            max_memory_bytes=record.get("max_memory_bytes"),
            cpu_seconds=cpu,
            record=record,
        )


# --- interfaces ------------------------------------------------------------------------------


@runtime_checkable
class AgentHandle(Protocol):
    """A started (or re-attached) agent."""

    task_id: str
    agent_id: str
    name: str
    pid: int

    @property
    def log_path(self) -> Path: ...

    def exit_info(self) -> ExitInfo | None:
        """The exit record if the agent has ended, without waiting."""

    async def wait(self) -> ExitInfo:
        """Wait (no polling) until the agent has ended; why it ended."""

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after CFN_AGENT_KILL_GRACE; returns at once."""

    async def kill(self) -> None:
        """SIGKILL the agent and everything it started; returns at once."""


class Spawner(Protocol):
    """How the orchestrator starts agents; one implementation per runtime."""

    async def spawn(
        self,
        context: AgentContext,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> AgentHandle:
        """Start the agent ``context`` describes, detached; return once it runs."""

    async def attach(self, task_id: str, agent_id: str, pid: int | None = None) -> AgentHandle:
        """Find an agent spawned earlier (maybe by another orchestrator process)."""


# --- pidfd waiting ------------------------------------------------------------------------------


async def wait_pid_exit(pid: int, start_ticks: int | None = None) -> None:
    """Return when process ``pid`` has exited (a pidfd on the event loop; no polling).

    With ``start_ticks``, a different process that reused the pid counts as
    "already exited".
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if start_ticks is not None and shim.proc_start_ticks(pid) != start_ticks:
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, on_ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def _is_agent_process(pid: int, name: str) -> bool:
    env = shim.proc_environ(pid)
    return env is not None and env.get("CFN_AGENT_NAME") == name


# --- the process handle ------------------------------------------------------------------------


class HandleBase(abc.ABC):
    """What every agent handle shares: its files, one waiter however many callers
    wait, and the record of an exit nobody saw."""

    task_id: str
    agent_id: str
    name: str
    directory: Path
    pid: int
    limits: str
    _info: ExitInfo | None
    _waiting: asyncio.Future[ExitInfo] | None

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def context_path(self) -> Path:
        return self.directory / CONTEXT_FILE

    async def wait(self) -> ExitInfo:
        if self._info is not None:
            return self._info
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiting)

    @abc.abstractmethod
    async def _wait(self) -> ExitInfo:
        """Wait for the agent to end and return its exit record (each kind its own way)."""

    def _lost(self, reason: str) -> ExitInfo:
        """The agent ended without an exit record: status unknown, ``reason`` why."""
        self._info = ExitInfo(
            task_id=self.task_id,
            agent_id=self.agent_id,
            name=self.name,
            pid=self.pid,
            exit_code=None,
            signal=None,
            lost=True,
            reason=reason,
            limits=self.limits,
        )
        return self._info


class ProcessHandle(HandleBase):
    """An agent process under its supervisor; works the same after re-attaching."""

    def __init__(
        self,
        *,
        task_id: str,
        agent_id: str,
        name: str,
        directory: Path,
        pid: int,
        pid_start: int | None,
        shim_pid: int,
        shim_start: int | None,
        limits: str,
        popen: subprocess.Popen[bytes] | None = None,
        cgroups: dict[str, str] | None = None,
    ) -> None:
        self.task_id = task_id
        self.agent_id = agent_id
        self.name = name
        self.directory = directory
        self.pid = pid
        self.pid_start = pid_start
        self.shim_pid = shim_pid
        self.shim_start = shim_start
        self.limits = limits
        self._popen = popen
        self._cgroups = cgroups or {}
        self._info = None
        self._waiting = None

    def __repr__(self) -> str:
        return f"<ProcessHandle {self.name} pid={self.pid} limits={self.limits}>"

    @property
    def running(self) -> bool:
        return self.exit_info() is None and shim.proc_alive(self.pid, self.pid_start)

    def exit_info(self) -> ExitInfo | None:
        if self._info is None:
            record = read_json_file(self.directory / shim.EXIT_FILE)
            if record is not None and record.get("pid") == self.pid:
                self._info = ExitInfo.from_record(record)
        return self._info

    async def _wait(self) -> ExitInfo:
        # The supervisor outlives the agent and exits right after writing exit.json.
        await wait_pid_exit(self.shim_pid, self.shim_start)
        if self._popen is not None:
            self._popen.wait()  # already exited: reaps at once
        info = self.exit_info()
        if info is not None:
            return info
        # The supervisor vanished (SIGKILLed) without a record: wait for the agent itself.
        await wait_pid_exit(self.pid, self.pid_start)
        self._remove_cgroups()
        return self._lost("its supervisor died before recording the exit; exit status unknown")

    def _remove_cgroups(self) -> None:
        with contextlib.suppress(OSError):
            shim.Cgroups(dict(self._cgroups)).remove(wait=0.5)

    def _signal(self, shim_signal: int) -> None:
        if self.exit_info() is not None:
            return
        if shim.proc_alive(self.shim_pid, self.shim_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.shim_pid, shim_signal)
                return
        # No supervisor: signal the agent's process group directly.
        if shim.proc_alive(self.pid, self.pid_start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def stop(self) -> None:
        self._signal(signal.SIGTERM)

    async def kill(self) -> None:
        self._signal(signal.SIGUSR1)


# --- the process spawner ------------------------------------------------------------------


def default_command(context_file: Path) -> list[str]:
    """``python -m cfn agent run --context FILE``: the Python agent runtime."""
    return [sys.executable, "-m", "cfn", "agent", "run", "--context", str(context_file)]


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path`` (an agent's state or exit record); None when the
    file is missing, unreadable, half-written or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _read_ready(fd: int, timeout: float) -> bytes:
    """Everything the supervisor writes on its ready pipe, until it closes it."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


class ProcessSpawner:
    """Agents as local processes under a supervisor (limits, timeout, exit record)."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str | None = None,
        python: str = sys.executable,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.python = python
        self.ready_timeout = ready_timeout

    def agent_dir(self, task_id: str, agent_id: str) -> Path:
        return agent_dir(self.settings.state_dir, task_id, agent_id)

    def environment(self, context: AgentContext, context_file: Path) -> dict[str, str]:
        """The seed's variables plus cfn's, over the orchestrator's own environment."""
        extra = {
            "AGENT_ID": context.agent_id,
            "TASK_ID": context.task_id,
            "MODE": context.mode,
            "PROVIDER": context.cfn.provider,
            "COMPOSE_PROJECT_NAME": context.cfn.compose_project or DEFAULT_COMPOSE_PROJECT,
            "CFN_AGENT_CONTEXT": str(context_file),
            "CFN_AGENT_NAME": context.name,
            "CFN_STATE_DIR": str(self.settings.state_dir),
            "AGENT_MEMORY_LIMIT": context.resources.memory_limit,
            "AGENT_TIMEOUT": context.resources.timeout,
            "AGENT_CPU_LIMIT": context.cfn.cpu_limit,
            "CFN_AGENT_HEARTBEAT_INTERVAL": repr(context.cfn.heartbeat.interval),
        }
        if self.redis_url:
            extra[context.cfn.redis.url_env] = self.redis_url
            password = urlsplit(self.redis_url).password
            if password is None and self.settings.redis_password:
                password = self.settings.redis_password
            if password:
                extra[context.cfn.redis.password_env] = unquote(password)
        # Agents inherit the orchestrator's environment (PATH, provider keys, ...),
        # the same way a child process would without an explicit env.
        inherited = {**os.environ, **extra}
        access = context.cfn.redis
        if not (access.username and access.password):
            return {
                k: v for k, v in inherited.items() if k not in acl.SIGNING_SECRETS
            }
        # The agent has its own Redis ACL user: no admin secret reaches it.
        admin = {
            acl.url_password(self.redis_url),
            acl.url_password(os.environ.get("REDIS_URL")),
            acl.url_password(self.settings.redis_fallback_1),
            self.settings.redis_password,
        }
        return acl.agent_environment(
            inherited,
            acl.AgentCredentials(access.username, access.password),
            url_env=access.url_env,
            password_env=access.password_env,
            admin_secrets={s for s in admin if s},
        )

    async def spawn(
        self,
        context: AgentContext,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ProcessHandle:
        popen, ready_r, context = self._start(context, command, env)
        directory = self.agent_dir(context.task_id, context.agent_id)
        try:
            raw = await _read_ready(ready_r, self.ready_timeout)
        except TimeoutError:
            popen.kill()
            await wait_pid_exit(popen.pid)
            popen.wait()
            raise AgentSpawnError(
                f"{context.name} did not start within {self.ready_timeout:g} s; "
                f"see {directory / LOG_FILE}"
            ) from None
        finally:
            os.close(ready_r)
        try:
            message = json.loads(raw.decode() or "null")
        except ValueError:
            message = None
        if not isinstance(message, dict) or "pid" not in message:
            await wait_pid_exit(popen.pid)
            popen.wait()
            why = message.get("error") if isinstance(message, dict) else None
            raise AgentSpawnError(
                f"{context.name} was not started: {why or 'its supervisor exited'}; "
                f"see {directory / LOG_FILE}"
            )
        state = read_json_file(directory / shim.STATE_FILE) or {}
        return ProcessHandle(
            task_id=context.task_id,
            agent_id=context.agent_id,
            name=context.name,
            directory=directory,
            pid=int(message["pid"]),
            pid_start=state.get("pid_start"),
            shim_pid=popen.pid,
            shim_start=state.get("shim_start"),
            limits=str(message.get("limits", "none")),
            popen=popen,
            cgroups=state.get("cgroups"),
        )

    def _start(
        self,
        context: AgentContext,
        command: Sequence[str] | None,
        env: Mapping[str, str] | None,
    ) -> tuple[subprocess.Popen[bytes], int, AgentContext]:
        """Validate, write the agent's files and start its supervisor (fork + exec, fast)."""
        limits = AgentLimits.from_context(context)
        workspace = Path(context.workspace)
        if not workspace.is_dir():
            raise InvalidInputError(f"workspace {workspace} is not a directory")
        if command is not None and (
            not command or not all(isinstance(a, str) and a for a in command)
        ):
            raise InvalidInputError("the agent command must be a non-empty list of arguments")
        for name in env or {}:
            if not name or "=" in name or "\0" in name:
                raise InvalidInputError(f"invalid environment variable name {name!r}")

        directory = self.agent_dir(context.task_id, context.agent_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(directory):
            self._refuse_if_running(context, directory)
            for stale in (shim.STATE_FILE, shim.EXIT_FILE):
                (directory / stale).unlink(missing_ok=True)
            log_path = directory / LOG_FILE
            context = context.model_copy(
                update={"cfn": context.cfn.model_copy(update={"log_file": str(log_path)})}
            )
            context_file = directory / CONTEXT_FILE
            write_private(context_file, context.to_json())
            argv = list(command) if command is not None else default_command(context_file)
            spec = {
                "name": context.name,
                "task_id": context.task_id,
                "agent_id": context.agent_id,
                "dir": str(directory),
                "command": argv,
                "cwd": str(workspace),
                "log": str(log_path),
                "memory": limits.memory,
                "memory_bytes": limits.memory_bytes,
                "cpus": limits.cpus,
                "timeout": limits.timeout,
                "kill_grace": self.settings.cfn_agent_kill_grace,
                "cgroups": self.settings.cfn_agent_cgroups,
            }
            spec_file = directory / SPEC_FILE
            write_private(spec_file, json.dumps(spec, indent=2))
            environment = {**self.environment(context, context_file), **(env or {})}
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            ready_r, ready_w = os.pipe()
            try:
                popen = subprocess.Popen(
                    [self.python, "-I", "-S", shim.__file__, str(spec_file), str(ready_w)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=log_fd,
                    pass_fds=(ready_w,),
                    env=environment,
                    cwd=workspace,
                    start_new_session=True,
                )
            except OSError as exc:
                os.close(ready_r)
                raise AgentSpawnError(
                    f"could not start the supervisor of {context.name}: {exc}"
                ) from None
            finally:
                os.close(ready_w)
                os.close(log_fd)
            return popen, ready_r, context

    def _refuse_if_running(self, context: AgentContext, directory: Path) -> None:
        state = read_json_file(directory / shim.STATE_FILE)
        if state is None or (directory / shim.EXIT_FILE).exists():
            return
        for pid_key, start_key in (("pid", "pid_start"), ("shim_pid", "shim_start")):
            pid = state.get(pid_key)
            if isinstance(pid, int) and shim.proc_alive(pid, state.get(start_key)):
                raise AgentSpawnError(
                    f"{context.name} is already running (pid {state.get('pid')}); "
                    "re-attach to it or stop it before spawning it again"
                )

    async def attach(self, task_id: str, agent_id: str, pid: int | None = None) -> ProcessHandle:
        """Re-attach to an agent spawned earlier, after checking ``pid`` really is it.

        A pid is trusted only if /proc says it is the same process that was
        started (its start time) and its environment names this agent; then
        its exit is awaited on a pidfd, which pins the process, so a pid
        reused later cannot be mistaken for it.
        """
        directory = self.agent_dir(task_id, agent_id)
        name = agent_name(task_id, agent_id)
        state = read_json_file(directory / shim.STATE_FILE)
        if state is None:
            raise AgentLookupError(
                f"no agent {agent_id} of task {task_id} was spawned here ({directory})"
            )
        recorded = state.get("pid")
        if not isinstance(recorded, int):
            raise AgentLookupError(f"{directory / shim.STATE_FILE} holds no pid")
        if pid is not None:
            if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
                raise InvalidInputError(f"invalid pid {pid!r}")
            if pid != recorded:
                raise AgentLookupError(
                    f"pid {pid} is not {name}: that agent was started as pid {recorded}"
                )
        handle = ProcessHandle(
            task_id=task_id,
            agent_id=agent_id,
            name=name,
            directory=directory,
            pid=recorded,
            pid_start=state.get("pid_start"),
            shim_pid=int(state.get("shim_pid") or 0),
            shim_start=state.get("shim_start"),
            limits=str(state.get("limits", "none")),
            cgroups=state.get("cgroups"),
        )
        if handle.exit_info() is not None:
            return handle
        alive = shim.proc_alive(recorded, handle.pid_start)
        if alive and not _is_agent_process(recorded, name):
            raise AgentLookupError(
                f"pid {recorded} is running but is not {name} (its environment says otherwise)"
            )
        return handle


def validate_agent_ids(task_id: str, agent_id: str, mode: str, provider: str) -> None:
    """The spawn-agent arguments, checked before anything starts."""
    keys.validate_id(agent_id, "agent id")
    keys.validate_id(task_id, "task id")
    keys.validate_id(mode, "mode")
    keys.validate_id(provider, "provider")


# --- the seed's spawn-agent.sh ---------------------------------------------------------------


def agent_redis_url(settings: Settings) -> str:
    """The Redis URL agents get: REDIS_URL, else the embedded redis-server (started if need be)."""
    if settings.cfn_redis_sentinels:  # as RedisManager: the sentinels come first
        from cfn.coordination.connection import sentinel_url

        return sentinel_url(
            list(settings.cfn_redis_sentinels),
            settings.cfn_redis_sentinel_master,
            settings.redis_username or None,
            settings.redis_password or None,
        )
    if settings.redis_url:
        return settings.redis_url
    from cfn.coordination.embedded import EmbeddedRedis

    return EmbeddedRedis(settings).ensure_running()


async def spawn_agent(
    settings: Settings,
    agent_id: str,
    task_id: str,
    mode: str = DEFAULT_MODE,
    provider: str = DEFAULT_PROVIDER,
    *,
    workspace: Path | None = None,
    command: Sequence[str] | None = None,
    redis_url: str | None = None,
) -> ProcessHandle | ContainerHandle:
    """``spawn-agent.sh AGENT_ID TASK_ID [MODE] [PROVIDER]``: a detached process agent.

    Every argument and limit is checked before Redis is touched or anything
    starts, so bad input spawns nothing.
    """
    validate_agent_ids(task_id, agent_id, mode, provider)
    parse_memory_limit(settings.agent_memory_limit)
    parse_cpu_limit(settings.agent_cpu_limit)
    place = (workspace or settings.project_root).resolve()
    if not place.is_dir():
        raise InvalidInputError(f"workspace {place} is not a directory")
    url = redis_url or agent_redis_url(settings)
    endpoint = await resolve_endpoint(url)
    context = generate_cli_context(
        task_id,
        agent_id,
        settings=settings,
        redis_host=endpoint.host,
        redis_port=endpoint.port,
        workspace=place,
        mode=mode,
        provider=provider,
        redis_username=urlsplit(url).username or settings.redis_username,
    )
    if settings.spawn_mode == "docker":  # CFN_SPAWN_MODE=docker or the seed's MODE=docker
        from cfn.agents.container import ContainerSpawner

        return await ContainerSpawner(settings, redis_url=url).spawn(context, command=command)
    return await ProcessSpawner(settings, redis_url=url).spawn(context, command=command)


def _conforms(spawner: ProcessSpawner, handle: ProcessHandle) -> tuple[Spawner, AgentHandle]:
    """Never called: makes mypy check that the process classes implement the protocols."""
    return spawner, handle
