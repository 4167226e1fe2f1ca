"""A real replicated Redis for fault tests: a master, a replica and a Sentinel.

``fail_over()`` SIGKILLs whichever node is master now, waits until the
Sentinel has promoted the replica, then starts the killed node again on its
old port as a replica of the new master (how an operator brings a failed
node back: the servers keep no data on disk, so a node restarted as a master
would come back empty and wipe its replica).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.servers import RedisServer, SentinelServer


def _wait(what: str, check: object, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s")


@dataclass
class SentinelCluster:
    workdir: Path
    master_name: str = "mymaster"
    nodes: dict[int, RedisServer] = field(default_factory=dict)
    sentinel: SentinelServer | None = None
    failovers: int = 0

    def start(self) -> SentinelCluster:
        master = self._node(RedisServer(self.workdir / "node-a"))
        replica = self._node(RedisServer(self.workdir / "node-b", replica_of=master.port))
        self.nodes = {master.port: master, replica.port: replica}
        self._wait_linked(replica.port, master.port)
        self.sentinel = SentinelServer(
            self.workdir / "sentinel", master.port, self.master_name
        ).start()
        self.wait_healthy()
        return self

    @staticmethod
    def _node(server: RedisServer) -> RedisServer:
        """Start ``server``; full syncs at once (the default waits 5 s for more replicas)."""
        server.start()
        client = server.client()
        try:
            client.config_set("repl-diskless-sync-delay", "0")
        finally:
            client.close()
        return server

    @property
    def env(self) -> dict[str, str]:
        """What a cfn process needs to reach the master through the Sentinel."""
        assert self.sentinel is not None
        return {
            "CFN_REDIS_SENTINELS": f"127.0.0.1:{self.sentinel.port}",
            "CFN_REDIS_SENTINEL_MASTER": self.master_name,
        }

    def master_port(self) -> int:
        assert self.sentinel is not None
        return self.sentinel.master_port_now()

    def master(self) -> redis.Redis:
        return self.nodes[self.master_port()].client()

    def _wait_linked(self, replica: int, master: int, timeout: float = 60.0) -> None:
        def linked() -> bool:
            client = self.nodes[replica].client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            return bool(
                info.get("role") == "slave"
                and info.get("master_port") == master
                and info.get("master_link_status") == "up"
            )

        _wait(f"replica {replica} not in sync with master {master}", linked, timeout)

    def _healthy(self) -> bool:
        """The Sentinel's master is a master and the other node its replica, in sync."""
        assert self.sentinel is not None
        master = self.master_port()
        (other,) = (port for port in self.nodes if port != master)
        if not self.sentinel.knows_replica(other):
            return False
        node = self.nodes[other].client()
        try:
            info = node.info("replication")
        finally:
            node.close()
        return bool(
            info.get("role") == "slave"
            and info.get("master_port") == master
            and info.get("master_link_status") == "up"
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        _wait("the Sentinel's master and replica are not in sync", self._healthy, timeout)

    def fail_over(self, timeout: float = 30.0) -> tuple[int, int]:
        """Kill the master, wait for the promotion, restart the old one as a replica.

        Returns ``(old master port, new master port)``.
        """
        old = self.master_port()
        self.nodes[old].kill()
        _wait(
            f"sentinel did not promote a replica after killing {old}",
            lambda: self.master_port() != old,
            timeout,
        )
        new = self.master_port()
        self.failovers += 1
        self.nodes[old] = self._node(RedisServer(self.nodes[old].workdir, port=old, replica_of=new))
        self.wait_healthy(2 * timeout)
        return old, new

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
        for node in self.nodes.values():
            node.stop()


def assert_each_reported_once(client: redis.Redis, task: str, team: Iterable[str]) -> None:
    """Every agent of ``team`` has its completion on ``client``'s server, once, with
    its payload's confidence (0.9, what the test LLM's agents report)."""
    team = list(team)
    entries = client.lrange(f"coord:{task}:complete", 0, -1)
    payloads = {a: client.lrange(f"coord:{task}:payload:{a}", 0, -1) for a in team}
    assert sorted(entries) == sorted(f"{a}:success" for a in team), entries
    for agent, items in payloads.items():
        assert len(items) == 1 and json.loads(items[0])["confidence"] == 0.9, (agent, items)
