"""Agent runtimes: ``base`` (the interface), ``process`` and ``container``.

``spawner_for`` is the one place that turns the settings into a runtime, so
the loop, the portal, ``cfn spawn-agent``, troubleshooting and health all
start, find and stop agents the same way. The runtime modules are imported
only when asked for: ``import cfn.agents.spawn`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cfn.agents.spawn.base import Spawner
    from cfn.settings import Settings

__all__ = ["spawner_for"]


def spawner_for(settings: Settings, *, redis_url: str | None = None) -> Spawner:
    """Containers when CFN_SPAWN_MODE=docker (or the seed's MODE=docker), else processes.

    Never guessed from an engine's socket lying around. ``redis_url`` is the
    admin URL the runtime hands to (and, for containers, opens to) its agents;
    without it, agents get only what their context and environment carry.
    """
    if settings.spawn_mode == "docker":
        from cfn.agents.spawn.container import ContainerSpawner

        return ContainerSpawner(settings, redis_url=redis_url)
    from cfn.agents.spawn.process import ProcessSpawner

    return ProcessSpawner(settings, redis_url=redis_url)
