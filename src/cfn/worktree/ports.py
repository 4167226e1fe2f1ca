"""Port allocation for the main checkout and for worktrees.

The seed gives two formulas. ``calculate_ports`` (first two hex digits of the
sha256 of ``echo "$BRANCH"``, mod 1000) keeps every port in range: the offset
is at most 255. The other (``cut -c1-4`` added as a *decimal* number) breaks
on hashes with letters and, read as hex, adds up to 65535 and overflows the
port range; we use ``calculate_ports``.

The main checkout uses the seed's defaults (Redis 6379, PostgreSQL 5432,
orchestrator 3000); a worktree uses 6379 / 5432 / 3001 plus its offset. When
the port is taken by something that is not ours, we take the next free one
and record the choice in ``.cfn/ports.json`` so every later command agrees.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cfn.errors import ConfigError, PortUnavailableError

log = logging.getLogger(__name__)

MAIN_REDIS, MAIN_POSTGRES, MAIN_ORCHESTRATOR = 6379, 5432, 3000
WORKTREE_REDIS, WORKTREE_POSTGRES, WORKTREE_ORCHESTRATOR = 6379, 5432, 3001
SERVICES = ("redis", "postgres", "orchestrator")
SCAN_LIMIT = 200


@dataclass(frozen=True)
class Ports:
    redis: int
    postgres: int
    orchestrator: int

    def get(self, service: str) -> int:
        if service not in SERVICES:
            raise ConfigError(f"unknown service {service!r}; expected one of {SERVICES}")
        port: int = getattr(self, service)
        return port


def branch_offset(branch: str) -> int:
    """The seed's offset: ``$((0x$(echo "$branch" | sha256sum | cut -c1-2) % 1000))``."""
    digest = hashlib.sha256((branch + "\n").encode()).hexdigest()
    return int(digest[:2], 16) % 1000


def calculate_ports(branch: str) -> Ports:
    """The seed's ``calculate_ports``: Redis, PostgreSQL, orchestrator ports of a worktree."""
    offset = branch_offset(branch)
    return Ports(
        redis=WORKTREE_REDIS + offset,
        postgres=WORKTREE_POSTGRES + offset,
        orchestrator=WORKTREE_ORCHESTRATOR + offset,
    )


def default_ports(branch: str | None) -> Ports:
    """The main checkout's defaults, or the worktree's ports for ``branch``."""
    if branch:
        return calculate_ports(branch)
    return Ports(MAIN_REDIS, MAIN_POSTGRES, MAIN_ORCHESTRATOR)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (we could bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortRegistry:
    """The ports this checkout uses, kept in ``<state>/ports.json``.

    Each entry records the port the service asked for and the one it got, so a
    changed preference (CFN_REDIS_PORT, a different branch) is noticed.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "ports.json"
        self._lock_path = state_dir / "ports.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self) -> dict[str, dict[str, int]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.path} is not valid JSON ({exc}); delete it to reset"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path} must hold a JSON object; delete it to reset")
        entries: dict[str, dict[str, int]] = {}
        for service, entry in raw.items():
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("port"), int)
                and isinstance(entry.get("preferred"), int)
            ):
                entries[service] = {"port": entry["port"], "preferred": entry["preferred"]}
        return entries

    def _write(self, entries: dict[str, dict[str, int]]) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def resolve(
        self,
        service: str,
        preferred: int,
        is_ours: Callable[[int], bool] = lambda _port: False,
    ) -> int:
        """The port ``service`` should use: recorded, preferred, or the next free one.

        A port is usable when it is free or when ``is_ours`` says the listener
        is our own server (so a running embedded Redis is reused, not moved).
        """
        with self._locked():
            entries = self.read()
            entry = entries.get(service)
            candidates: list[int] = []
            if entry and entry["preferred"] == preferred:
                candidates.append(entry["port"])
            candidates.append(preferred)
            for port in candidates:
                if is_ours(port) or port_is_free(port):
                    chosen = port
                    break
            else:
                chosen = self._scan(preferred, is_ours)
                log.warning(
                    "port %d for %s is in use by another program; using %d (recorded in %s)",
                    preferred,
                    service,
                    chosen,
                    self.path,
                )
            if entries.get(service) != {"port": chosen, "preferred": preferred}:
                entries[service] = {"port": chosen, "preferred": preferred}
                self._write(entries)
            return chosen

    @staticmethod
    def _scan(preferred: int, is_ours: Callable[[int], bool]) -> int:
        for port in range(preferred + 1, min(preferred + SCAN_LIMIT, 65536)):
            if is_ours(port) or port_is_free(port):
                return port
        raise PortUnavailableError(
            f"no free port in {preferred}..{preferred + SCAN_LIMIT - 1}; free one or set the "
            "service's CFN_*_PORT"
        )
