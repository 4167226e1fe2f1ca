"""The container engine for tests: Podman's Docker API and cfn's images, built once.

The images are built (or found up to date) by the same ImageBuilder `cfn docker build`
uses, with the checkout's own ``.cfn`` as the cache (the base image and the wheels), so
only the first run on a machine pays for debootstrap and pip.
"""

from __future__ import annotations

import fcntl
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from cfn.settings import Settings, find_project_root

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class Engine:
    settings: Settings
    client: docker.DockerClient
    docker_host: str


def build_images(settings: Settings, client: docker.DockerClient) -> None:
    """Build cfn's images, or find them up to date, one build at a time on this machine.

    pytest-xdist workers (and tests/conftest.py's early build in the controller) share
    the checkout's .cfn (the build context) and the engine's image tags; whoever comes
    second waits on the lock and finds the images up to date.
    """
    from cfn.deploy.images import ImageBuilder

    lock = settings.state_dir / "images" / "build.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        ImageBuilder(settings, client).build()


def image_settings() -> Settings:
    return Settings(cfn_state_dir=find_project_root() / ".cfn")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    from cfn.system.podman import connect, docker_host

    settings = image_settings()
    client = connect(settings)
    build_images(settings, client)
    host, _managed = docker_host(settings)
    try:
        yield Engine(settings, client, host)
    finally:
        client.close()


@pytest.fixture
def project(engine: Engine) -> Iterator[str]:
    """A throwaway Compose project; its containers, networks and volumes go afterwards."""
    name = f"cfntest-{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        client = engine.client
        label = {"label": f"com.docker.compose.project={name}"}
        for container in client.containers.list(all=True, filters=label):
            container.remove(force=True)
        for container in client.containers.list(all=True, filters={"label": f"cfn.project={name}"}):
            container.remove(force=True)
        for network in client.networks.list(filters=label):
            network.remove()
        for volume in client.volumes.list(filters=label):
            volume.remove(force=True)
