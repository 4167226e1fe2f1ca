"""cfn's own redis-server, started on first use when REDIS_URL is unset.

It lives under ``<state>/redis/`` (config, AOF, log, pid), listens on
127.0.0.1 only, requires a password generated once and kept in a 0600 file,
persists with AOF and has keyspace notifications on (collectors wake on them
instead of polling). Later calls find it by its recorded run id and reuse it.
Its files, start and stop are ``cfn.system.daemon``'s (``redis_daemon``), so
commands below this package (``cfn worktree remove``) can stop it from its
record alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cfn.errors import CfnError, RedisServerMissingError
from cfn.settings import Settings
from cfn.system.daemon import record_of, stop_process, wait_until
from cfn.system.instances import redis_daemon
from cfn.worktree.ports import PortRegistry, default_ports

NOTIFY_FLAGS = "Klgxt"  # keyspace events for list, generic (del), expired and stream (portal)
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class EmbeddedStatus:
    running: bool
    port: int | None
    pid: int | None
    data_dir: Path
    url: str | None
    memory_bytes: int | None = None
    keys: int | None = None
    aof_enabled: bool | None = None


class EmbeddedRedis:
    """Start, find, describe and stop the checkout's own redis-server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon = redis_daemon(settings.state_dir)
        self.dir = self.daemon.dir
        self.instance_file = self.daemon.record_file
        self.conf_file = self.dir / "redis.conf"
        assert self.daemon.pid_file is not None
        self.pid_file = self.daemon.pid_file
        self.log_file = self.daemon.log_file

    # --- state on disk --------------------------------------------------------

    def _instance(self) -> dict[str, Any]:
        return self.daemon.read_record()

    def _password(self) -> str:
        current = self._instance().get("password")
        if isinstance(current, str) and current:
            return current
        return secrets.token_urlsafe(32)

    @staticmethod
    def _url(port: int, password: str) -> str:
        return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"

    # --- probing ----------------------------------------------------------------

    def _probe(self, port: int, password: str) -> dict[str, Any] | None:
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            password=password,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            decode_responses=True,
        )
        try:
            info: dict[str, Any] = client.info()
            return info
        except redis.RedisError:
            return None
        finally:
            client.close()

    def is_ours(self, port: int) -> bool:
        data = self._instance()
        if data.get("port") != port or not data.get("password"):
            return False
        info = self._probe(port, str(data["password"]))
        return info is not None and info.get("run_id") == data.get("run_id")

    # --- lifecycle ----------------------------------------------------------------

    def ensure_running(self) -> str:
        """The URL of the running embedded Redis, starting it when needed."""
        with self.daemon.locked():
            data = self._instance()
            port = data.get("port")
            if isinstance(port, int) and self.is_ours(port):
                return self._url(port, str(data["password"]))
            return self._start()

    def _start(self) -> str:
        binary = shutil.which(self.settings.cfn_redis_server_bin)
        if binary is None:
            raise RedisServerMissingError(
                f"{self.settings.cfn_redis_server_bin!r} was not found on PATH, and cfn needs it "
                "to run its own Redis. Install it with `apt-get install redis-server` (or run "
                "`make run`, which does), or point REDIS_URL at a running Redis."
            )
        preferred = (
            self.settings.cfn_redis_port or default_ports(self.settings.worktree_branch).redis
        )
        port = PortRegistry(self.settings.state_dir).resolve("redis", preferred, self.is_ours)
        password = self._password()
        self._write_conf(port, password)
        self.daemon.clear_pid()
        try:
            proc = self.daemon.spawn([binary, str(self.conf_file)], cwd=self.dir)
        except OSError as exc:
            raise CfnError(f"redis-server failed to start on port {port}: {exc}") from None
        info: dict[str, Any] | None = None

        def answered() -> bool:
            nonlocal info
            info = self._probe(port, password)
            return info is not None and info.get("loading") in (0, "0", None)

        wait_until(answered, START_TIMEOUT, exited=lambda: proc.poll() is not None, interval=0.05)
        if proc.poll() is not None:
            raise CfnError(
                f"redis-server failed to start on port {port}: "
                f"{self.daemon.log_tail() or 'see ' + str(self.log_file)}"
            )
        if info is None:
            raise CfnError(
                f"redis-server did not answer on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s; "
                f"see {self.log_file}"
            )
        self.daemon.write_record(
            {
                **record_of(proc.pid),
                "port": port,
                "password": password,
                "run_id": info.get("run_id"),
            }
        )
        return self._url(port, password)

    def _write_conf(self, port: int, password: str) -> None:
        def q(path: Path) -> str:
            return json.dumps(str(path))  # redis.conf accepts double-quoted strings

        lines = [
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {port}",
            f"dir {q(self.dir)}",
            "daemonize no",  # started detached by cfn.system.daemon
            f"pidfile {q(self.pid_file)}",
            f"logfile {q(self.log_file)}",
            "appendonly yes",
            "appendfsync everysec",
            f"notify-keyspace-events {NOTIFY_FLAGS}",
            f"requirepass {password}",
        ]
        fd = os.open(self.conf_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def status(self) -> EmbeddedStatus:
        data = self._instance()
        port = data.get("port")
        if not isinstance(port, int) or not self.is_ours(port):
            return EmbeddedStatus(
                False, port if isinstance(port, int) else None, None, self.dir, None
            )
        info = self._probe(port, str(data["password"])) or {}
        keyspace = info.get("db0")
        keys = keyspace.get("keys") if isinstance(keyspace, dict) else 0
        return EmbeddedStatus(
            running=True,
            port=port,
            pid=info.get("process_id"),
            data_dir=self.dir,
            url=self._url(port, str(data["password"])),
            memory_bytes=info.get("used_memory"),
            keys=keys if isinstance(keys, int) else None,
            aof_enabled=bool(info.get("aof_enabled")),
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """Shut the server down (AOF is flushed); False when it was not running."""
        with self.daemon.locked():
            data = self._instance()
            port = data.get("port")
            if not isinstance(port, int) or not self.is_ours(port):
                return False
            pid = data.get("pid")
            # No retries: the connection closing is SHUTDOWN succeeding, and redis-py's
            # default retries would wait ~3.5 s on it.
            client = redis.Redis(
                host="127.0.0.1",
                port=port,
                password=str(data["password"]),
                socket_timeout=5.0,
                retry=Retry(NoBackoff(), 0),
            )
            with contextlib.suppress(redis.ConnectionError):
                client.shutdown()
            client.close()
            if isinstance(pid, int):
                start = data.get("pid_start")
                stop_process(
                    pid,
                    grace=timeout,
                    start_ticks=start if isinstance(start, int) else None,
                    signum=None,  # SHUTDOWN asked it already
                )
            return True

