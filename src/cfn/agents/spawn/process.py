"""Agents as local processes, each under its own supervisor (seed: spawn-agent.sh).

Each agent runs under ``cfn.agents.shim``, started in a new session so that
neither survives nor dies with the orchestrator by accident, forked by the agent
server (cfn.agents.forkserver) when it runs, else a Python of its own: the supervisor
applies the memory and CPU limits (cgroups, v1 or v2, where writable,
RLIMIT_AS otherwise), enforces AGENT_TIMEOUT, and writes the exit record. Waiting is on
pidfds registered with the event loop: nothing polls.

Besides the files every runtime keeps (``cfn.agents.spawn.base``), the agent's
directory holds::

    shim.json      what the supervisor was asked to run (0600)
    state.json     pids and start times, written once the agent runs

The agent's environment is the orchestrator's plus the seed's AGENT_ID,
TASK_ID, MODE, PROVIDER and COMPOSE_PROJECT_NAME, and CFN_AGENT_CONTEXT,
CFN_AGENT_NAME, CFN_STATE_DIR, REDIS_URL and REDISCLI_AUTH (so both a Python
agent and plain ``redis-cli`` reach the same Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cfn.agents import shim
from cfn.agents.context import (
    CONTEXT_FILE,
    DEFAULT_COMPOSE_PROJECT,
    AgentContext,
    agent_dir,
    agent_name,
    write_private,
)
from cfn.agents.forkserver import AgentServer
from cfn.agents.spawn.base import (
    EXIT_FILE,
    LOG_FILE,
    AgentHandle,
    ExitInfo,
    HandleBase,
    Spawner,
    check_spawn_request,
    read_json_file,
)
from cfn.coordination import acl
from cfn.errors import AgentLookupError, AgentSpawnError, CfnError, InvalidInputError
from cfn.providers.routes import is_secret_variable, secret_variables
from cfn.settings import Settings
from cfn.system import forkwire as wire
from cfn.system.cgroups import Cgroups
from cfn.system.proc import proc_alive, proc_comm, proc_environ, proc_start_ticks

log = logging.getLogger(__name__)

SPEC_FILE = "shim.json"
STATE_FILE = shim.STATE_FILE
LOCK_FILE = ".spawn.lock"
READY_TIMEOUT = 30.0
#: How long the agent server may take to fork a supervisor.
SERVER_TIMEOUT = 10.0


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
        if start_ticks is not None and proc_start_ticks(pid) != start_ticks:
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
    """Whether ``pid`` is agent ``name``: its environment says so, or (an agent forked by
    the agent server, whose environ block is the server's) its comm is the agent's tag."""
    env = proc_environ(pid)
    if env is not None and env.get("CFN_AGENT_NAME") == name:
        return True
    return proc_comm(pid) == shim.comm_tag(name)


async def _until_closed(fd: int) -> None:
    """Return when the write end of pipe ``fd`` is closed (what is written is dropped)."""
    await _read_pipe(fd, line=False)


class _Supervisor:
    """A supervisor just started: forked by the agent server (which reaps it), or our
    own child (``popen``, reaped here)."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def reap(self) -> None:
        """After it exited: collect our child's status (nothing to do for a forked one)."""
        if self.popen is not None:
            self.popen.wait()


# --- the process handle ------------------------------------------------------------------------


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
        supervisor: _Supervisor | None = None,
        done_fd: int | None = None,
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
        self._supervisor = supervisor
        #: The read end of the supervisor's ready pipe: closed once exit.json is written.
        self._done_fd = done_fd
        self._cgroups = cgroups or {}
        self._info = None
        self._waiting = None

    def __repr__(self) -> str:
        return f"<ProcessHandle {self.name} pid={self.pid} limits={self.limits}>"

    @property
    def running(self) -> bool:
        return self.exit_info() is None and proc_alive(self.pid, self.pid_start)

    def exit_info(self) -> ExitInfo | None:
        if self._info is None:
            record = read_json_file(self.directory / EXIT_FILE)
            if record is not None and record.get("pid") == self.pid:
                self._info = ExitInfo.from_record(record)
        return self._info

    async def _wait(self) -> ExitInfo:
        if self._done_fd is not None:
            # Spawned here: the supervisor closes the pipe once exit.json is written
            # (or dies), sooner than its process is gone.
            try:
                await _until_closed(self._done_fd)
            finally:
                os.close(self._done_fd)
                self._done_fd = None
        else:
            # Re-attached: the supervisor exits right after writing exit.json.
            await wait_pid_exit(self.shim_pid, self.shim_start)
        if self._supervisor is not None and self._supervisor.popen is not None:
            await wait_pid_exit(self.shim_pid)
            self._supervisor.reap()  # already exited: reaps at once
        info = self.exit_info()
        if info is not None:
            return info
        # The supervisor vanished (SIGKILLed) without a record: wait for the agent itself.
        await wait_pid_exit(self.pid, self.pid_start)
        self._remove_cgroups()
        return self._lost("its supervisor died before recording the exit; exit status unknown")

    def _remove_cgroups(self) -> None:
        with contextlib.suppress(OSError):
            Cgroups(dict(self._cgroups)).remove(wait=0.5)

    def _signal(self, shim_signal: int) -> None:
        if self.exit_info() is not None:
            return
        if proc_alive(self.shim_pid, self.shim_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.shim_pid, shim_signal)
                return
        # No supervisor: signal the agent's process group directly.
        if proc_alive(self.pid, self.pid_start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def stop(self) -> None:
        self._signal(signal.SIGTERM)

    async def kill(self) -> None:
        self._signal(signal.SIGUSR1)


# --- the process spawner ------------------------------------------------------------------


def default_command(context_file: Path) -> list[str]:
    """``python -m cfn agent run --context FILE --supervised``: the Python agent runtime,
    in a process of its own under the supervisor."""
    return [
        sys.executable, "-m", "cfn", "agent", "run", "--context", str(context_file), "--supervised"
    ]  # fmt: skip


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _read_ready(fd: int, timeout: float) -> bytes:
    """The supervisor's first line on its ready pipe (less when it closes the pipe first)."""
    async with asyncio.timeout(timeout):
        return await _read_pipe(fd, line=True)


async def _read_pipe(fd: int, *, line: bool) -> bytes:
    """What arrives on pipe ``fd`` (on the event loop, no thread): up to the end of its
    first line when ``line``, else until its write end is closed (the data dropped)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data and line:
            chunks.append(data)
        if (not data or (line and data.endswith(b"\n"))) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


class ProcessSpawner:
    """Agents as local processes under a supervisor (limits, timeout, exit record)."""

    engine: str | None = None  # no container engine: agents are this machine's processes

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
        # Agents inherit the orchestrator's environment (PATH, locale, ...) as a child
        # process would, except every provider key: an agent's LLM calls go through
        # the LLM gateway with its own token (cfn.providers.gateway), and a command
        # its model runs must find no key to read.
        withheld = secret_variables(self.settings)
        inherited = {
            k: v for k, v in {**os.environ, **extra}.items() if not is_secret_variable(k, withheld)
        }
        access = context.cfn.redis
        if not (access.username and access.password):
            return {k: v for k, v in inherited.items() if k not in acl.SIGNING_SECRETS}
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

    def agent_server(self) -> str | None:
        """The agent server's socket, the server started when needed; None when it is off
        or cannot start (agents then start their own Python, as without it)."""
        if self.settings.cfn_agent_server == "off":
            return None
        try:
            return str(AgentServer.from_settings(self.settings).ensure().socket)
        except (CfnError, OSError) as exc:
            log.warning("agent server unavailable (%s); agents start without it", exc)
            return None

    async def spawn(
        self,
        context: AgentContext,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ProcessHandle:
        server = await asyncio.to_thread(self.agent_server)
        supervisor, ready_r, context = self._start(context, command, env, server)
        directory = self.agent_dir(context.task_id, context.agent_id)
        try:
            raw = await _read_ready(ready_r, self.ready_timeout)
        except TimeoutError:
            os.close(ready_r)
            supervisor.kill()
            await wait_pid_exit(supervisor.pid)
            raise AgentSpawnError(
                f"{context.name} did not start within {self.ready_timeout:g} s; "
                f"see {directory / LOG_FILE}"
            ) from None
        try:
            message = json.loads(raw.decode() or "null")
        except ValueError:
            message = None
        if not isinstance(message, dict) or "pid" not in message:
            os.close(ready_r)
            await wait_pid_exit(supervisor.pid)
            supervisor.reap()
            why = message.get("error") if isinstance(message, dict) else None
            raise AgentSpawnError(
                f"{context.name} was not started: {why or 'its supervisor exited'}; "
                f"see {directory / LOG_FILE}"
            )
        state = read_json_file(directory / STATE_FILE) or {}
        return ProcessHandle(
            task_id=context.task_id,
            agent_id=context.agent_id,
            name=context.name,
            directory=directory,
            pid=int(message["pid"]),
            pid_start=state.get("pid_start"),
            shim_pid=supervisor.pid,
            shim_start=state.get("shim_start"),
            limits=str(message.get("limits", "none")),
            supervisor=supervisor,
            done_fd=ready_r,
            cgroups=state.get("cgroups"),
        )

    def _start(
        self,
        context: AgentContext,
        command: Sequence[str] | None,
        env: Mapping[str, str] | None,
        server: str | None = None,
    ) -> tuple[_Supervisor, int, AgentContext]:
        """Validate, write the agent's files and start its supervisor."""
        limits, workspace = check_spawn_request(context, command, env)
        directory = self.agent_dir(context.task_id, context.agent_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(directory):
            self._refuse_if_running(context, directory)
            for stale in (STATE_FILE, EXIT_FILE):
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
                "cpu_burst": self.settings.cfn_agent_cpu_burst,
                "cpu_period_us": self.settings.cfn_agent_cpu_period_us,
                "timeout": limits.timeout,
                "kill_grace": self.settings.cfn_agent_kill_grace,
                "cgroups": self.settings.cfn_agent_cgroups,
                # The builtin runtime: a supervisor forked by the agent server forks it
                # (cfn imported already) instead of running the command.
                "fork": command is None,
                "context": str(context_file),
            }
            spec_file = directory / SPEC_FILE
            write_private(spec_file, json.dumps(spec, indent=2))
            environment = {**self.environment(context, context_file), **(env or {})}
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            ready_r, ready_w = os.pipe()
            try:
                supervisor = self._start_supervisor(
                    server, spec, spec_file, environment, workspace, log_fd, ready_w
                )
            except OSError as exc:
                os.close(ready_r)
                raise AgentSpawnError(
                    f"could not start the supervisor of {context.name}: {exc}"
                ) from None
            finally:
                os.close(ready_w)
                os.close(log_fd)
            return supervisor, ready_r, context

    def _start_supervisor(
        self,
        server: str | None,
        spec: dict[str, object],
        spec_file: Path,
        environment: dict[str, str],
        workspace: Path,
        log_fd: int,
        ready_w: int,
    ) -> _Supervisor:
        """The agent's supervisor: forked by the agent server when there is one, else a
        Python of its own (``python -I -S shim.py``); OSError when neither starts."""
        if server is not None:
            request = json.dumps({"spec": spec, "env": environment}).encode() + b"\n"
            try:
                pid, conn = wire.request_fork(
                    server, wire.SUPERVISOR, [log_fd, ready_w], request, SERVER_TIMEOUT
                )
            except (OSError, ValueError) as exc:
                note = f"[cfn] agent server not used ({exc}); the supervisor is a new Python\n"
                with contextlib.suppress(OSError):
                    os.write(log_fd, note.encode())
                log.warning("agent server not used for %s: %s", spec["name"], exc)
            else:
                # Its exit line is the server's business (it reaps the supervisor).
                conn.close()
                return _Supervisor(pid)
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
        return _Supervisor(popen.pid, popen)

    def _refuse_if_running(self, context: AgentContext, directory: Path) -> None:
        state = read_json_file(directory / STATE_FILE)
        if state is None or (directory / EXIT_FILE).exists():
            return
        for pid_key, start_key in (("pid", "pid_start"), ("shim_pid", "shim_start")):
            pid = state.get(pid_key)
            if isinstance(pid, int) and proc_alive(pid, state.get(start_key)):
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
        state = read_json_file(directory / STATE_FILE)
        if state is None:
            raise AgentLookupError(
                f"no agent {agent_id} of task {task_id} was spawned here ({directory})"
            )
        recorded = state.get("pid")
        if not isinstance(recorded, int):
            raise AgentLookupError(f"{directory / STATE_FILE} holds no pid")
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
        alive = proc_alive(recorded, handle.pid_start)
        if alive and not _is_agent_process(recorded, name):
            raise AgentLookupError(
                f"pid {recorded} is running but is not {name} (its environment says otherwise)"
            )
        return handle


def _conforms(spawner: ProcessSpawner, handle: ProcessHandle) -> tuple[Spawner, AgentHandle]:
    """Never called: makes mypy check that the process classes implement the protocols."""
    return spawner, handle
