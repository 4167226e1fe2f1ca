"""Agents as containers (seed: spawn-agent.sh's ``docker run``) through the docker SDK.

Selected by CFN_SPAWN_MODE=docker or the seed's MODE=docker, never by a
socket's presence. The engine is DOCKER_HOST, else cfn's own Podman service
(cfn.system.podman), started on first use.

Each agent is the seed's container: name ``cfn-agent-{agent}-{task}``, network
``{project}_cfn-network`` (created when missing), ``mem_limit`` / ``nano_cpus``
from AGENT_MEMORY_LIMIT / AGENT_CPU_LIMIT, the seed's variables (AGENT_ID,
TASK_ID, MODE, PROVIDER, COMPOSE_PROJECT_NAME) and cfn's, and the workspace
mounted at ``/workspace``. The context file is mounted read-only at
``/run/cfn/context.json``.

Semantics match the process runtime (``cfn.agents.spawn.process``):
AGENT_TIMEOUT is enforced inside the container (coreutils ``timeout`` is its
PID 1, so it holds even when the orchestrator is gone), ``stop`` is SIGTERM
then SIGKILL after CFN_AGENT_KILL_GRACE, ``kill`` is SIGKILL, the engine's OOM
flag marks ``oom``, and the end is written to the same ``exit.json`` (with the
log copied to ``agent.log``); the ended container stays (the seed runs
``docker run -d`` without ``--rm``) until the same agent is spawned again or it
is pruned, and ``attach`` works after a restart either way. Waiting is the
engine's blocking ``wait`` call in a thread: nothing polls.

Reaching Redis: containers on a user network reach the host at the network's
gateway address. When the agents' Redis URL names the loopback address (cfn's
embedded redis-server), the container gets the gateway address instead and
the server is asked (``CONFIG SET bind``) to listen there too, with its
password unchanged; a Redis elsewhere is passed through as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from cfn.agents.context import (
    CONTEXT_FILE,
    DEFAULT_COMPOSE_PROJECT,
    AgentContext,
    agent_dir,
    agent_name,
    write_private,
)
from cfn.agents.spawn.base import (
    EXIT_FILE,
    AgentHandle,
    AgentLimits,
    ExitInfo,
    HandleBase,
    Spawner,
    check_spawn_request,
    read_json_file,
)
from cfn.errors import AgentLookupError, AgentSpawnError, InvalidInputError
from cfn.providers.routes import SECRET_SUFFIXES
from cfn.settings import Settings
from cfn.system.podman import run_to_end
from cfn.worktree.project import CFN_NETWORK, compose_project

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container
    from docker.models.networks import Network

log = logging.getLogger(__name__)

CONTAINER_CONTEXT = "/run/cfn/context.json"
CONTAINER_WORKSPACE = "/workspace"
CONTAINER_STATE = "/var/lib/cfn"
STATE_FILE = "container.json"
KILL_MARK = ".kill-requested"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LABEL_TASK = "cfn.task"
LABEL_AGENT = "cfn.agent"
LABEL_STATE = "cfn.state-dir"
LABEL_PROJECT = "cfn.project"

#: Settings the agent reads that mean the same inside a container (never paths, never
#: a secret: provider keys stay in the LLM gateway): routes and limits, Redis client knobs.
FORWARDED_PREFIXES = ("CFN_PROVIDER", "CFN_RETRY_AFTER", "REDIS_CONNECT", "REDIS_MAX_RETRIES")
FORWARDED = {
    "CFN_CUSTOM_ROUTING",
    "PROVIDER_ROUTES",
    "DEFAULT_PROVIDER",
    "HIGH_COMPLEXITY_PROVIDER",
    "COST_PROVIDER",
    "CFN_OFFLINE_WHEN_NO_KEYS",
    "CFN_TASK_BUDGET_USD",
    "CFN_PRICE_TABLE",
    "CFN_CONTEXT_MAX_BYTES",
    "REDIS_LAZY_CONNECT",
    "REDIS_RETRY_DELAY_ON_FAILOVER",
    "ZAI_API_STYLE",
}


def _forwarded(name: str) -> bool:
    return (
        name in FORWARDED
        or name.startswith(FORWARDED_PREFIXES)
        or name.endswith("_BASE_URL")
    ) and not name.endswith(SECRET_SUFFIXES)


def network_name(settings: Settings) -> str:
    """``{project}_cfn-network`` (or CFN_DOCKER_NETWORK)."""
    return settings.cfn_docker_network or f"{compose_project(settings)}_{CFN_NETWORK}"


def _address_on_host(address: str) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _seconds_between(started: str | None, finished: str | None) -> float | None:
    def parse(value: str | None) -> datetime | None:
        if not value or value.startswith("0001-"):
            return None
        text = value.replace("Z", "+00:00")
        # Engines give nanoseconds; Python takes microseconds.
        head, dot, rest = text.partition(".")
        if dot:
            digits = "".join(ch for ch in rest if ch.isdigit())
            zone = rest[len(digits) :]
            text = f"{head}.{digits[:6]}{zone}"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None

    a, b = parse(started), parse(finished)
    return round((b - a).total_seconds(), 3) if a and b else None


class ContainerHandle(HandleBase):
    """A started (or re-attached) agent container; the same interface as ProcessHandle."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        task_id: str,
        agent_id: str,
        directory: Path,
        container_id: str,
        pid: int,
        limits: str,
        timeout: float,
        kill_grace: float = 5.0,
    ) -> None:
        self.client = client
        self.task_id = task_id
        self.agent_id = agent_id
        self.name = agent_name(task_id, agent_id)
        self.directory = directory
        self.container_id = container_id
        self.pid = pid
        self.limits = limits
        self.timeout = timeout
        self.kill_grace = kill_grace
        self._info = None
        self._waiting = None
        self._reaper: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<ContainerHandle {self.name} id={self.container_id[:12]} limits={self.limits}>"

    def _container(self) -> Container | None:
        import docker.errors

        try:
            return self.client.containers.get(self.container_id)
        except docker.errors.NotFound:
            return None

    def inspect(self) -> dict[str, Any]:
        """``docker inspect`` of the container (empty once it has been removed)."""
        container = self._container()
        return dict(container.attrs) if container is not None else {}

    @property
    def running(self) -> bool:
        if self.exit_info() is not None:
            return False
        state = self.inspect().get("State") or {}
        return bool(state.get("Running"))

    def exit_info(self) -> ExitInfo | None:
        if self._info is None:
            record = read_json_file(self.directory / EXIT_FILE)
            if record is not None and record.get("container_id") == self.container_id:
                self._info = ExitInfo.from_record(record)
        return self._info

    async def _wait(self) -> ExitInfo:
        return await asyncio.to_thread(self._wait_blocking)

    def _wait_blocking(self) -> ExitInfo:
        import docker.errors

        info = self.exit_info()
        if info is not None:
            return info
        container = self._container()
        if container is None:
            return self._lost("its container is gone and no exit was recorded")
        try:
            # The engine's wait returns when the container ends; no timeout of our own,
            # since `timeout` inside the container bounds it.
            container.wait(timeout=None)
            container.reload()
        except docker.errors.NotFound:
            return self.exit_info() or self._lost("its container was removed while running")
        except docker.errors.APIError as exc:
            return self._lost(f"waiting on the engine failed: {exc}")
        return self._record(container)

    def _record(self, container: Container) -> ExitInfo:
        """Write exit.json and agent.log from the ended container.

        The container stays, as the seed's ``docker run -d`` (no ``--rm``) leaves it, for
        ``docker logs`` / ``docker inspect``; spawning the same agent again replaces it.
        """
        import docker.errors

        state = container.attrs.get("State") or {}
        code = state.get("ExitCode")
        exit_code = int(code) if isinstance(code, int) else None
        duration = _seconds_between(state.get("StartedAt"), state.get("FinishedAt"))
        killed = (self.directory / KILL_MARK).exists()
        oom = bool(state.get("OOMKilled"))
        # coreutils timeout: 124 after its TERM, 137 when the grace ran out too.
        timed_out = not killed and (
            exit_code == 124
            or (exit_code == 137 and duration is not None and duration >= self.timeout)
        )
        sig = exit_code - 128 if exit_code is not None and exit_code > 128 else None
        if oom:
            reason = f"killed by the engine: out of memory (limit {self.limits})"
        elif timed_out:
            reason = f"timed out after {self.timeout:g} s (AGENT_TIMEOUT)"
        elif killed:
            reason = "stopped on request" if sig == 15 else "killed on request"
        elif exit_code == 0:
            reason = "exited with code 0"
        elif sig is not None:
            reason = f"ended by signal {sig} (exit code {exit_code})"
        else:
            reason = f"exited with code {exit_code}"
        record = {
            "task_id": self.task_id,
            "agent_id": self.agent_id,
            "name": self.name,
            "pid": self.pid,
            "container_id": self.container_id,
            "exit_code": exit_code,
            "signal": sig,
            "timed_out": timed_out,
            "oom_killed": oom,
            "killed": killed,
            "reason": reason,
            "duration": duration,
            "limits": self.limits,
            "runtime": "container",
        }
        with contextlib.suppress(docker.errors.APIError, OSError):
            logs = container.logs(stdout=True, stderr=True)
            with open(self.log_path, "ab") as handle:
                handle.write(logs)
        write_private(self.directory / EXIT_FILE, json.dumps(record, indent=2))
        self._info = ExitInfo.from_record(record)
        return self._info

    def _signal(self, kill: bool) -> None:
        import docker.errors

        if self.exit_info() is not None:
            return
        container = self._container()
        if container is None:
            return
        try:
            # Stopped or killed on request counts as killed, as with the process runtime.
            (self.directory / KILL_MARK).touch()
            if kill:
                container.kill()
            else:
                container.kill(signal="SIGTERM")
        except docker.errors.APIError as exc:
            log.debug("signalling %s: %s", self.name, exc)

    async def stop(self) -> None:
        """SIGTERM now, SIGKILL after CFN_AGENT_KILL_GRACE if it is still running."""
        await asyncio.to_thread(self._signal, False)
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self._kill_after_grace())

    async def _kill_after_grace(self) -> None:
        await asyncio.sleep(self.kill_grace)
        if await asyncio.to_thread(lambda: self.running):
            await self.kill()

    async def kill(self) -> None:
        await asyncio.to_thread(self._signal, True)


class ContainerSpawner:
    """Agents as containers on ``{project}_cfn-network`` with the seed's limits."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str | None = None,
        client: docker.DockerClient | None = None,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self._client = client
        self._bound: set[str] = set()

    @property
    def engine(self) -> str:
        """DOCKER_HOST, else cfn's own Podman service's socket (not started by asking)."""
        from cfn.system.podman import docker_host

        return docker_host(self.settings, start=False)[0]

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            from cfn.system.podman import connect

            self._client = connect(self.settings)
        return self._client

    def agent_dir(self, task_id: str, agent_id: str) -> Path:
        return agent_dir(self.settings.state_dir, task_id, agent_id)

    # --- the network and the way to Redis -------------------------------------------------

    def ensure_network(self) -> Network:
        import docker.errors
        from docker.types import IPAMConfig, IPAMPool

        name = network_name(self.settings)
        try:
            return self.client.networks.get(name)
        except docker.errors.NotFound:
            pass
        project = compose_project(self.settings)
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=self.settings.cfn_network_subnet)])
        try:
            return self.client.networks.create(
                name,
                driver="bridge",
                ipam=ipam,
                labels={
                    "com.docker.compose.project": project,
                    "com.docker.compose.network": CFN_NETWORK,
                },
            )
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.NotFound):
                return self.client.networks.get(name)  # created meanwhile
            raise AgentSpawnError(f"could not create network {name}: {exc}") from None

    def gateway(self, network: Network) -> str:
        network.reload()
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            gateway = config.get("Gateway")
            if gateway:
                return str(gateway)
        raise AgentSpawnError(f"network {network.name} has no gateway address")

    def _bring_up(self, network: Network, image: str, gateway: str) -> None:
        """Podman creates a network's bridge with its first container: run one that exits."""
        if _address_on_host(gateway):
            return
        run_to_end(self.client, image, timeout=60, entrypoint=["true"], network=network.name)
        if not _address_on_host(gateway):
            raise AgentSpawnError(
                f"the gateway {gateway} of {network.name} is not on this host, so containers "
                "cannot reach its Redis there"
            )

    def container_redis_url(self, url: str, gateway: str) -> str:
        """The URL as a container must use it: the loopback host becomes the gateway."""
        parts = urlsplit(url)
        if parts.hostname not in LOOPBACK:
            return url
        netloc = parts.netloc.rpartition("@")
        host_port = f"{gateway}:{parts.port or 6379}"
        new = f"{netloc[0]}@{host_port}" if netloc[1] else host_port
        return urlunsplit((parts.scheme, new, parts.path, parts.query, parts.fragment))

    def _listen_on(self, gateway: str) -> None:
        """Ask the host's Redis (the admin URL) to listen on the gateway address too."""
        if self.redis_url is None or gateway in self._bound:
            return
        if urlsplit(self.redis_url).hostname not in LOOPBACK:
            return
        import redis

        client = redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0, decode_responses=True
        )
        try:
            current = str(client.config_get("bind").get("bind", "")).split()
            if gateway not in current:
                client.config_set("bind", " ".join([*current, gateway]))
                log.info("Redis now also listens on %s for containers", gateway)
        except redis.RedisError as exc:
            raise AgentSpawnError(
                f"agents in containers reach Redis at {gateway} (the network's gateway), but "
                f"Redis would not listen there: {exc}; make it listen on {gateway} or set "
                "REDIS_URL to an address containers reach"
            ) from None
        finally:
            client.close()
        self._bound.add(gateway)

    # --- environment ----------------------------------------------------------------------

    def environment(
        self, context: AgentContext, env: Mapping[str, str] | None, gateway: str
    ) -> dict[str, str]:
        forwarded = {k: v for k, v in os.environ.items() if _forwarded(k.upper())}
        extra = {
            "AGENT_ID": context.agent_id,
            "TASK_ID": context.task_id,
            "MODE": context.mode,
            "PROVIDER": context.cfn.provider,
            "COMPOSE_PROJECT_NAME": context.cfn.compose_project or DEFAULT_COMPOSE_PROJECT,
            "CFN_AGENT_CONTEXT": CONTAINER_CONTEXT,
            "CFN_AGENT_NAME": context.name,
            "CFN_STATE_DIR": CONTAINER_STATE,
            "AGENT_MEMORY_LIMIT": context.resources.memory_limit,
            "AGENT_TIMEOUT": context.resources.timeout,
            "AGENT_CPU_LIMIT": context.cfn.cpu_limit,
            "CFN_AGENT_HEARTBEAT_INTERVAL": repr(context.cfn.heartbeat.interval),
        }
        access = context.cfn.redis
        if self.redis_url:
            extra[access.url_env] = self.container_redis_url(self.redis_url, gateway)
            password = urlsplit(self.redis_url).password
            if password is None and self.settings.redis_password:
                password = self.settings.redis_password
            if password:
                extra[access.password_env] = unquote(password)
        merged = {**forwarded, **extra, **(env or {})}
        # Whatever the launcher passes (its own REDIS_URL with an agent's ACL user, say)
        # must name an address the container reaches too.
        for key in (access.url_env, "REDIS_URL"):
            if merged.get(key, "").startswith(("redis://", "rediss://")):
                merged[key] = self.container_redis_url(merged[key], gateway)
        llm = merged.get("CFN_LLM_GATEWAY_URL", "")
        if llm.startswith(("http://", "https://")):
            merged["CFN_LLM_GATEWAY_URL"] = self.container_redis_url(llm, gateway)
        return merged

    # --- spawn / attach -------------------------------------------------------------------

    async def spawn(
        self,
        context: AgentContext,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ContainerHandle:
        limits, workspace = await asyncio.to_thread(check_spawn_request, context, command, env)
        return await asyncio.to_thread(self._spawn, context, limits, workspace, command, env)

    def _spawn(
        self,
        context: AgentContext,
        limits: AgentLimits,
        workspace: Path,
        command: Sequence[str] | None,
        env: Mapping[str, str] | None,
    ) -> ContainerHandle:
        import docker.errors

        image = self.settings.cfn_agent_image
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise AgentSpawnError(
                f"image {image} is missing: build it with `cfn docker build` "
                "(scripts/build-images.sh)"
            ) from None
        network = self.ensure_network()
        gateway = self.gateway(network)
        self._bring_up(network, image, gateway)
        self._listen_on(gateway)

        directory = self.agent_dir(context.task_id, context.agent_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = context.name
        try:
            existing = self.client.containers.get(name)
        except docker.errors.NotFound:
            existing = None
        if existing is not None:
            if (existing.attrs.get("State") or {}).get("Running"):
                raise AgentSpawnError(
                    f"{name} is already running (container {existing.short_id}); "
                    "re-attach to it or stop it before spawning it again"
                )
            existing.remove(force=True)
        for stale in (EXIT_FILE, STATE_FILE, KILL_MARK):
            (directory / stale).unlink(missing_ok=True)

        inside = context.model_copy(
            update={
                "workspace": CONTAINER_WORKSPACE,
                "coordination": context.coordination.model_copy(
                    update={
                        "redis": context.coordination.redis.model_copy(
                            update={
                                "host": gateway
                                if context.coordination.redis.host in LOOPBACK
                                else context.coordination.redis.host
                            }
                        )
                    }
                ),
                "cfn": context.cfn.model_copy(
                    update={"state_dir": CONTAINER_STATE, "log_file": None}
                ),
            }
        )
        context_file = directory / CONTEXT_FILE
        write_private(context_file, inside.to_json())
        grace = self.settings.cfn_agent_kill_grace
        entrypoint = [
            "timeout",
            "--signal=TERM",
            f"--kill-after={grace:g}s",
            f"{limits.timeout:g}s",
        ]
        argv = (
            list(command)
            if command is not None
            else ["cfn", "agent", "run", "--context", CONTAINER_CONTEXT, "--supervised"]
        )
        limits_text = f"container: memory {limits.memory}, cpus {limits.cpus:g}"
        try:
            container = self.client.containers.run(
                image,
                command=argv,
                entrypoint=entrypoint,
                name=name,
                detach=True,
                network=network.name,
                mem_limit=limits.memory_bytes,
                nano_cpus=round(limits.cpus * 1e9),
                environment=self.environment(context, env, gateway),
                volumes={
                    str(workspace): {"bind": CONTAINER_WORKSPACE, "mode": "rw"},
                    str(context_file): {"bind": CONTAINER_CONTEXT, "mode": "ro"},
                },
                working_dir=CONTAINER_WORKSPACE,
                # The host's user, so what the agent writes in the workspace is the user's.
                user=f"{os.getuid()}:{os.getgid()}",
                labels={
                    LABEL_TASK: context.task_id,
                    LABEL_AGENT: context.agent_id,
                    LABEL_STATE: str(self.settings.state_dir),
                    LABEL_PROJECT: compose_project(self.settings),
                },
            )
        except docker.errors.APIError as exc:
            raise AgentSpawnError(f"{name} was not started: {exc.explanation or exc}") from None
        container.reload()
        pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
        state = {
            "container_id": container.id,
            "name": name,
            "pid": pid,
            "image": image,
            "network": network.name,
            "limits": limits_text,
            "timeout": limits.timeout,
            "kill_grace": grace,
            "started": time.time(),
        }
        write_private(directory / STATE_FILE, json.dumps(state, indent=2))
        return ContainerHandle(
            self.client,
            task_id=context.task_id,
            agent_id=context.agent_id,
            directory=directory,
            container_id=str(container.id),
            pid=pid,
            limits=limits_text,
            timeout=limits.timeout,
            kill_grace=grace,
        )

    async def attach(self, task_id: str, agent_id: str, pid: int | None = None) -> ContainerHandle:
        """Re-attach to an agent container spawned earlier (maybe by another orchestrator)."""
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise InvalidInputError(f"invalid pid {pid!r}")
        return await asyncio.to_thread(self._attach, task_id, agent_id, pid)

    def _attach(self, task_id: str, agent_id: str, pid: int | None) -> ContainerHandle:
        directory = self.agent_dir(task_id, agent_id)
        name = agent_name(task_id, agent_id)
        state = read_json_file(directory / STATE_FILE)
        if state is None or not isinstance(state.get("container_id"), str):
            raise AgentLookupError(
                f"no agent container {agent_id} of task {task_id} was spawned here ({directory})"
            )
        recorded = int(state.get("pid") or 0)
        if pid is not None and pid != recorded:
            raise AgentLookupError(
                f"pid {pid} is not {name}: that container was started as pid {recorded}"
            )
        handle = ContainerHandle(
            self.client,
            task_id=task_id,
            agent_id=agent_id,
            directory=directory,
            container_id=state["container_id"],
            pid=recorded,
            limits=str(state.get("limits", "none")),
            timeout=float(state.get("timeout") or self.settings.agent_timeout),
            kill_grace=float(state.get("kill_grace") or self.settings.cfn_agent_kill_grace),
        )
        if handle.exit_info() is not None:
            return handle
        attrs = handle.inspect()
        if attrs and (attrs.get("Name") or "").lstrip("/") != name:
            raise AgentLookupError(f"container {handle.container_id[:12]} is not {name}")
        return handle


def _conforms(spawner: ContainerSpawner, handle: ContainerHandle) -> tuple[Spawner, AgentHandle]:
    """Never called: makes mypy check that the container classes implement the protocols."""
    return spawner, handle
