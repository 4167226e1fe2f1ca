"""A small Compose driver on the docker SDK: ``up``, ``run``, ``down -v`` for cfn's files.

Neither ``docker compose`` (a Docker CLI plugin) nor podman-compose is
installed here, so cfn brings its own generated files up through the same
Docker API the container spawner uses. It covers what ``cfn compose generate``
writes and nothing more: services with image, command, entrypoint, environment,
volumes, networks (the service name as alias), ``deploy.resources`` limits and
reservations, ports, profiles, health checks and ``depends_on`` conditions;
networks (driver, internal, IPAM subnet) and named volumes; ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}`` and ``${VAR:?message}`` interpolation.
Names follow Compose: ``{project}_{network}``, ``{project}_{volume}``,
``{project}-{service}-1``, with Compose's labels, so ``docker compose -p
PROJECT down -v`` finds the same things.

Health checks: Podman runs a container's health check from a systemd timer,
which this machine does not have, so the driver runs the service's check
itself (``exec`` of its test command, every second, until it passes or the
wait runs out) wherever a ``service_healthy`` dependency or ``up --wait``
needs it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cfn.errors import CfnError, InvalidInputError
from cfn.system.limits import parse_cpu_limit, parse_memory_limit
from cfn.worktree.project import PROJECT_NAME_RE

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NETWORK_LABEL = "com.docker.compose.network"
VOLUME_LABEL = "com.docker.compose.volume"
ONEOFF_LABEL = "com.docker.compose.oneoff"
_VAR = re.compile(
    r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


class StackError(CfnError):
    """A compose stack could not be brought up, run or taken down."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution over every string in ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        current = env.get(name)
        if op in (":-", "-"):
            if current is None or (op == ":-" and current == ""):
                return str(interpolate(arg, env))
            return current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise InvalidInputError(f"{name} must be set: {arg or 'required variable'}")
            return current
        return current or ""

    return _VAR.sub(replace, value)


def _duration_ns(value: Any, default: float) -> int:
    if value is None:
        return int(default * 1e9)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(value).strip())
    if match is None:
        raise InvalidInputError(f"{value!r} is not a duration (e.g. 30s)")
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return int(float(match.group(1)) * scale * 1e9)


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    logs: str


class ComposeStack:
    """One project's stack from one or more compose files (later files override)."""

    def __init__(
        self,
        client: docker.DockerClient,
        files: list[Path],
        project: str,
        *,
        env: Mapping[str, str] | None = None,
        profiles: tuple[str, ...] = (),
    ) -> None:
        if not PROJECT_NAME_RE.fullmatch(project):
            raise InvalidInputError(
                f"project name {project!r} must match {PROJECT_NAME_RE.pattern} (Compose's rule)"
            )
        if not files:
            raise InvalidInputError("give at least one compose file")
        self.client = client
        self.project = project
        self.profiles = profiles
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("COMPOSE_PROJECT_NAME", project)
        document: dict[str, Any] = {}
        for path in files:
            try:
                loaded = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise InvalidInputError(f"{path}: not a readable compose file ({exc})") from None
            if not isinstance(loaded, dict) or not isinstance(loaded.get("services"), dict):
                raise InvalidInputError(f"{path}: no services: mapping")
            document = _merge(document, interpolate(loaded, self.env))
        self.doc = document
        self.services: dict[str, dict[str, Any]] = document["services"]

    # --- names ---------------------------------------------------------------------------

    def network_name(self, name: str) -> str:
        spec = (self.doc.get("networks") or {}).get(name) or {}
        return str(spec.get("name") or f"{self.project}_{name}")

    def volume_name(self, name: str) -> str:
        spec = (self.doc.get("volumes") or {}).get(name) or {}
        return str(spec.get("name") or f"{self.project}_{name}")

    def container_name(self, service: str) -> str:
        return str(self.services[service].get("container_name") or f"{self.project}-{service}-1")

    def _labels(self, **extra: str) -> dict[str, str]:
        return {PROJECT_LABEL: self.project, **extra}

    # --- order ---------------------------------------------------------------------------

    def active(self, service: str) -> bool:
        profiles = self.services[service].get("profiles") or []
        return not profiles or any(p in self.profiles for p in profiles)

    def _depends(self, service: str) -> dict[str, str]:
        raw = self.services[service].get("depends_on") or {}
        if isinstance(raw, list):
            return {name: "service_started" for name in raw}
        return {
            name: str((spec or {}).get("condition", "service_started"))
            for name, spec in raw.items()
        }

    def order(self, wanted: list[str]) -> list[str]:
        ordered: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in ordered:
                return
            if name not in self.services:
                raise InvalidInputError(f"no service {name!r} in the compose files")
            if name in visiting:
                raise InvalidInputError(f"depends_on cycle through {name!r}")
            visiting.add(name)
            for dep in self._depends(name):
                visit(dep)
            visiting.discard(name)
            ordered.append(name)

        for name in wanted:
            visit(name)
        return ordered

    # --- resources -----------------------------------------------------------------------

    def _ensure_networks(self, names: set[str]) -> None:
        import docker.errors
        from docker.types import IPAMConfig, IPAMPool

        declared = self.doc.get("networks") or {}
        for name in sorted(names):
            spec = declared.get(name) or {}
            full = self.network_name(name)
            try:
                self.client.networks.get(full)
                continue
            except docker.errors.NotFound:
                pass
            pools = [
                IPAMPool(subnet=c["subnet"])
                for c in ((spec.get("ipam") or {}).get("config") or [])
                if c.get("subnet")
            ]
            self.client.networks.create(
                full,
                driver=spec.get("driver", "bridge"),
                internal=bool(spec.get("internal", False)),
                ipam=IPAMConfig(pool_configs=pools) if pools else None,
                labels=self._labels(**{NETWORK_LABEL: name}),
            )

    def _ensure_volumes(self, names: set[str]) -> None:
        import docker.errors

        for name in sorted(names):
            full = self.volume_name(name)
            try:
                self.client.volumes.get(full)
            except docker.errors.NotFound:
                self.client.volumes.create(full, labels=self._labels(**{VOLUME_LABEL: name}))

    def _service_networks(self, service: str) -> list[str]:
        raw = self.services[service].get("networks")
        if raw is None:
            return ["default"]
        return list(raw) if isinstance(raw, (list, dict)) else []

    def _volumes(self, service: str) -> tuple[dict[str, dict[str, str]], set[str]]:
        binds: dict[str, dict[str, str]] = {}
        named: set[str] = set()
        declared = self.doc.get("volumes") or {}
        for item in self.services[service].get("volumes") or []:
            if not isinstance(item, str):
                raise InvalidInputError(f"{service}: only short volume syntax is supported")
            source, _, rest = item.partition(":")
            target, _, mode = rest.partition(":")
            if source in declared:
                named.add(source)
                source = self.volume_name(source)
            elif source.startswith((".", "/", "~")):
                source = str(Path(os.path.expanduser(source)).resolve())
            else:
                raise InvalidInputError(f"{service}: volume {source!r} is not declared")
            binds[source] = {"bind": target, "mode": mode or "rw"}
        return binds, named

    def _healthcheck(self, service: str) -> dict[str, Any] | None:
        spec = self.services[service].get("healthcheck")
        if not spec or spec.get("disable"):
            return None
        return {
            "test": spec["test"],
            "interval": _duration_ns(spec.get("interval"), 30),
            "timeout": _duration_ns(spec.get("timeout"), 30),
            "retries": int(spec.get("retries", 3)),
        }

    def _create(
        self, service: str, name: str, command: list[str] | None, oneoff: bool
    ) -> Container:
        spec = self.services[service]
        networks = self._service_networks(service)
        self._ensure_networks(set(networks))
        binds, named = self._volumes(service)
        self._ensure_volumes(named)
        limits = ((spec.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        reserve = ((spec.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        ports: dict[str, Any] = {}
        for item in spec.get("ports") or []:
            host_part, _, container_port = str(item).rpartition(":")
            address, _, host_port = host_part.rpartition(":")
            ports[f"{container_port}/tcp"] = (
                (address, int(host_port)) if address else int(host_port)
            )
        kwargs: dict[str, Any] = {
            "name": name,
            "detach": True,
            "environment": {k: "" if v is None else str(v) for k, v in environment.items()},
            "volumes": binds,
            "labels": self._labels(
                **{SERVICE_LABEL: service, ONEOFF_LABEL: "True" if oneoff else "False"}
            ),
            "network": self.network_name(networks[0]),
            "ports": ports,
        }
        if command is not None or spec.get("command") is not None:
            kwargs["command"] = command if command is not None else spec["command"]
        if spec.get("entrypoint") is not None:
            kwargs["entrypoint"] = spec["entrypoint"]
        if limits.get("memory"):
            kwargs["mem_limit"] = parse_memory_limit(str(limits["memory"]), f"{service} memory")
        if limits.get("cpus"):
            cpus = parse_cpu_limit(str(limits["cpus"]), f"{service} cpus")
            kwargs["nano_cpus"] = round(cpus * 1e9)
        if reserve.get("memory"):
            kwargs["mem_reservation"] = parse_memory_limit(
                str(reserve["memory"]), f"{service} reserved memory"
            )
        # The service name as a DNS alias on every network (Compose's service discovery).
        kwargs["networking_config"] = {
            self.network_name(networks[0]): self.client.api.create_endpoint_config(
                aliases=[service]
            )
        }
        # The driver runs health checks itself (no systemd timers here for Podman's).
        container = self.client.containers.create(spec["image"], **kwargs)
        for extra in networks[1:]:
            self.client.networks.get(self.network_name(extra)).connect(container, aliases=[service])
        return container

    # --- waiting -------------------------------------------------------------------------

    def healthy(self, service: str) -> bool:
        """Run the service's health check once in its container (exit 0: healthy)."""
        check = self._healthcheck(service)
        container = self._get(self.container_name(service))
        if container is None:
            return False
        container.reload()
        if container.status != "running":
            return False
        if check is None:
            return True
        test = check["test"]
        if isinstance(test, str):
            argv = ["sh", "-c", test]
        elif test[0] == "CMD":
            argv = list(test[1:])
        elif test[0] == "CMD-SHELL":
            argv = ["sh", "-c", " ".join(test[1:])]
        else:
            return True  # NONE
        result = container.exec_run(argv)
        return result.exit_code == 0

    def wait_for(self, service: str, condition: str, deadline: float) -> None:
        while True:
            container = self._get(self.container_name(service))
            if container is not None:
                container.reload()
                if condition == "service_completed_successfully":
                    if container.status == "exited":
                        code = container.attrs["State"]["ExitCode"]
                        if code == 0:
                            return
                        raise StackError(f"{service} exited with code {code}")
                elif container.status == "exited":
                    raise StackError(
                        f"{service} exited (code {container.attrs['State']['ExitCode']}): "
                        + container.logs(tail=5).decode(errors="replace").strip()
                    )
                elif (condition == "service_started" and container.status == "running") or (
                    condition == "service_healthy" and self.healthy(service)
                ):
                    return
            if time.monotonic() > deadline:
                raise StackError(f"{service} did not become {condition.removeprefix('service_')}")
            time.sleep(1.0)

    def _get(self, name: str) -> Container | None:
        import docker.errors

        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    # --- the commands --------------------------------------------------------------------

    def up(
        self, services: list[str] | None = None, *, wait: bool = True, timeout: float = 180.0
    ) -> list[str]:
        """Create and start the services (and what they depend on); ``--wait`` for health."""
        deadline = time.monotonic() + timeout
        wanted = services or [s for s in self.services if self.active(s)]
        started: list[str] = []
        for service in self.order(wanted):
            for dep, condition in self._depends(service).items():
                self.wait_for(dep, condition, deadline)
            name = self.container_name(service)
            container = self._get(name)
            if container is None:
                container = self._create(service, name, None, oneoff=False)
            container.reload()
            if container.status != "running":
                container.start()
            started.append(service)
        if wait:
            for service in started:
                condition = "service_healthy" if self._healthcheck(service) else "service_started"
                self.wait_for(service, condition, deadline)
        return started

    def run(
        self, service: str, command: list[str] | None = None, *, timeout: float = 600.0
    ) -> RunResult:
        """``run --rm SERVICE [COMMAND]``: dependencies up, a one-off container, its exit."""
        if service not in self.services:
            raise InvalidInputError(f"no service {service!r} in the compose files")
        deps = [d for d in self.order([service]) if d != service]
        if deps:
            self.up(deps, wait=False, timeout=timeout)
        deadline = time.monotonic() + timeout
        for dep, condition in self._depends(service).items():
            self.wait_for(dep, condition, deadline)
        name = f"{self.project}-{service}-run-{secrets.token_hex(4)}"
        container = self._create(service, name, command, oneoff=True)
        try:
            container.start()
            status = container.wait(timeout=max(1.0, deadline - time.monotonic()))
            logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
            return RunResult(int(status.get("StatusCode", -1)), logs)
        finally:
            container.remove(force=True, v=True)  # --rm removes anonymous volumes too

    def exec(self, service: str, argv: list[str]) -> RunResult:
        container = self._get(self.container_name(service))
        if container is None:
            raise StackError(f"{service} is not running")
        result = container.exec_run(argv)
        output = result.output.decode(errors="replace") if isinstance(result.output, bytes) else ""
        return RunResult(int(result.exit_code or 0), output)

    def down(self, *, volumes: bool = False) -> dict[str, int]:
        """Remove the project's containers and networks (``-v``: its volumes too)."""
        label: dict[str, str | list[str] | bool] = {"label": f"{PROJECT_LABEL}={self.project}"}
        removed = {"containers": 0, "networks": 0, "volumes": 0}
        for container in self.client.containers.list(all=True, filters=label):
            container.remove(force=True, v=volumes)  # -v: anonymous volumes too
            removed["containers"] += 1
        for network in self.client.networks.list(filters=label):
            network.remove()
            removed["networks"] += 1
        if volumes:
            for volume in self.client.volumes.list(filters=label):
                volume.remove(force=True)
                removed["volumes"] += 1
        return removed


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
