"""Podman as the Docker engine: its settings and the Docker-API socket, started on demand.

No Docker daemon runs here; Podman serves the Docker API from ``podman system
service``. cfn runs that service itself, one per state dir, on
``<state>/podman/podman.sock`` with the settings ``../shared/DESIGN.md`` asks
for (``default_ulimits = []`` under ``[containers]``, ``runtime = "runc"``
under ``[engine]``) in its own ``containers.conf``, handed to every podman it
starts through ``CONTAINERS_CONF``, so the machine's files stay untouched.

Which engine cfn talks to is never guessed from a socket lying around:
``DOCKER_HOST`` when it is set, otherwise this service (started by
``cfn docker up`` or on first use by the container spawner and the image build).

It lives here, below both, because the agents' container runtime needs it as
much as ``cfn.deploy`` does; its pid file, log, start and stop are
``cfn.system.daemon``'s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfn.errors import CfnError, ConfigError
from cfn.settings import Settings
from cfn.system.daemon import is_ours, stop_process, wait_until
from cfn.system.instances import podman_daemon

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

CONTAINERS_CONF = """\
# Written by cfn (cfn.system.podman); podman reads it through CONTAINERS_CONF.
[containers]
# The default nofile/nproc ulimits podman asks for exceed what this machine grants.
default_ulimits = []

[engine]
# Debian's podman prefers crun; runc is what is installed.
runtime = "runc"
"""
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class EngineUnavailableError(CfnError):
    """The container engine (Podman's Docker API) cannot be reached or started."""


@dataclass(frozen=True)
class EngineStatus:
    running: bool
    managed: bool  # cfn's own podman service (not an external DOCKER_HOST)
    docker_host: str
    pid: int | None
    version: str | None
    api_version: str | None


def _ping_unix(path: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """GET /version on a Docker-API unix socket; None when nothing answers."""
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        conn.sock = sock
        conn.request("GET", "/version")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        data = json.loads(body)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        sock.close()


class PodmanService:
    """``podman system service --time=0 unix://<state>/podman/podman.sock``, cfn's own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon = podman_daemon(settings.state_dir)
        self.dir = self.daemon.dir
        self.socket = self.dir / "podman.sock"
        self.log_file = self.daemon.log_file
        self.conf_file = self.dir / "containers.conf"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def podman_bin(self) -> str:
        found = shutil.which(self.settings.cfn_podman_bin)
        if found is None:
            raise EngineUnavailableError(
                f"{self.settings.cfn_podman_bin!r} is not installed: run scripts/bootstrap.sh "
                "(apt packages podman and runc) or set CFN_PODMAN_BIN"
            )
        return found

    def write_conf(self) -> Path:
        """Our containers.conf, rewritten only when its text differs (idempotent)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.conf_file.exists() or self.conf_file.read_text() != CONTAINERS_CONF:
            tmp = self.conf_file.with_suffix(".tmp")
            tmp.write_text(CONTAINERS_CONF)
            tmp.replace(self.conf_file)
        return self.conf_file

    def env(self) -> dict[str, str]:
        """The environment every podman command cfn runs gets."""
        return {**os.environ, "CONTAINERS_CONF": str(self.write_conf())}

    def pid(self) -> int | None:
        """The service's pid if the recorded one still is our podman service."""
        pid = self.daemon.read_pid()

        def service(argv: list[str]) -> bool:
            return argv[1:3] == ["system", "service"] and self.docker_host in argv

        return pid if pid is not None and is_ours(pid, argv=service) else None

    def running(self) -> bool:
        return self.pid() is not None and _ping_unix(self.socket) is not None

    def start(self) -> str:
        """Start the service unless it already answers; returns its DOCKER_HOST."""
        podman = self.podman_bin()
        with self.daemon.locked():
            live = self.pid()
            if live is not None:
                # Ours and alive: starting, or slow on a busy machine. Never replace a live
                # service here: other commands may be using it right now.
                if self._await_answer(START_TIMEOUT):
                    return self.docker_host
                raise EngineUnavailableError(
                    f"the podman service (pid {live}) does not answer on {self.socket}; "
                    "`cfn docker down` then `cfn docker up` restarts it"
                )
            self.socket.unlink(missing_ok=True)
            process = self.daemon.spawn(
                [podman, "system", "service", "--time=0", self.docker_host], env=self.env()
            )
            self.daemon.write_pid(process.pid)
            if wait_until(
                lambda: _ping_unix(self.socket) is not None,
                START_TIMEOUT,
                exited=lambda: process.poll() is not None,
            ):
                log.info("podman service %s started (pid %d)", self.docker_host, process.pid)
                return self.docker_host
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            self.daemon.clear_pid()
            tail = self.daemon.log_tail()
            raise EngineUnavailableError(
                f"podman system service did not answer on {self.socket} within "
                f"{START_TIMEOUT:g} s; see {self.log_file}" + (f": {tail}" if tail else "")
            )

    def _await_answer(self, timeout: float) -> bool:
        return wait_until(
            lambda: _ping_unix(self.socket, timeout=5.0) is not None, timeout, interval=0.2
        )

    def stop(self) -> bool:
        """Stop the service (containers keep running: podman owns them, not the service)."""
        with self.daemon.locked():
            pid = self.pid()
            if pid is not None:
                stop_process(pid, grace=STOP_TIMEOUT)
            self.daemon.clear_pid()
            self.socket.unlink(missing_ok=True)
            return pid is not None


def docker_host(settings: Settings, *, start: bool = True) -> tuple[str, bool]:
    """``(DOCKER_HOST, managed)``: the configured one, else cfn's podman service."""
    if settings.docker_host:
        if not settings.docker_host.startswith(("unix://", "tcp://", "ssh://", "http://")):
            raise ConfigError(
                f"DOCKER_HOST {settings.docker_host!r} is not a Docker endpoint: use "
                "unix:///path/to.sock or tcp://host:port"
            )
        return settings.docker_host, False
    service = PodmanService(settings)
    if start:
        return service.start(), True
    return service.docker_host, True


def status(settings: Settings) -> EngineStatus:
    host, managed = docker_host(settings, start=False)
    pid = PodmanService(settings).pid() if managed else None
    info: dict[str, Any] | None = None
    if host.startswith("unix://"):
        info = _ping_unix(Path(host.removeprefix("unix://")))
    else:
        with contextlib.suppress(EngineUnavailableError):
            client = connect(settings, start=False)
            try:
                info = client.version()
            finally:
                client.close()
    return EngineStatus(
        running=info is not None,
        managed=managed,
        docker_host=host,
        pid=pid,
        version=str(info.get("Version")) if info else None,
        api_version=str(info.get("ApiVersion")) if info else None,
    )


def connect(settings: Settings, *, start: bool = True, timeout: int = 120) -> docker.DockerClient:
    """A docker SDK client on DOCKER_HOST or cfn's podman service (started if need be)."""
    import docker
    import docker.errors

    host, _managed = docker_host(settings, start=start)
    try:
        client = docker.DockerClient(base_url=host, timeout=timeout, version="auto")
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise EngineUnavailableError(
            f"no Docker API answers on {host}: {exc}"
            + ("" if settings.docker_host else " (run `cfn docker up`)")
        ) from None
    return client


def run_to_end(
    client: docker.DockerClient, image: str, *, timeout: float = 120.0, **options: Any
) -> tuple[int, bytes]:
    """Run a short container to its end: its exit status and its output (both streams).

    Not ``containers.run(detach=False)``: that follows the logs of a container which
    may already have ended, and Podman can leave such a follow unanswered until the
    client's read timeout (seen: 120 s for ``true``). Here the engine's wait says when
    it ended, the logs are read once after, and the container is removed either way.
    """
    import docker.errors
    import requests

    try:
        container = client.containers.run(image, detach=True, **options)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineUnavailableError(f"the engine did not start {image}: {exc}") from None
    try:
        status = container.wait(timeout=timeout)
        return int(status.get("StatusCode", -1)), bytes(container.logs(stdout=True, stderr=True))
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise EngineUnavailableError(
            f"a container of {image} did not end within {timeout:g} s: {exc}"
        ) from None
    finally:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            container.remove(force=True, v=True)
