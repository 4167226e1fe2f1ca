"""cfn's own redis-server, started on first use when REDIS_URL is unset.

It lives under ``<state>/redis/`` (config, AOF, log, pid), listens on
127.0.0.1 only, requires a password generated once and kept in a 0600 file,
persists with AOF and has keyspace notifications on (collectors wake on them
instead of polling). Later calls find it by its recorded run id and reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cfn.errors import CfnError, RedisServerMissingError
from cfn.settings import Settings
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
        self.dir = settings.state_dir / "redis"
        self.instance_file = self.dir / "instance.json"
        self.conf_file = self.dir / "redis.conf"
        self.pid_file = self.dir / "redis.pid"
        self.log_file = self.dir / "redis.log"

    # --- state on disk --------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "start.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _instance(self) -> dict[str, Any]:
        try:
            data = json.loads(self.instance_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _password(self) -> str:
        current = self._instance().get("password")
        if isinstance(current, str) and current:
            return current
        return secrets.token_urlsafe(32)

    def _save_instance(self, data: dict[str, Any]) -> None:
        tmp = self.instance_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, self.instance_file)

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
        with self._locked():
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
        self.pid_file.unlink(missing_ok=True)
        proc = subprocess.run(
            [binary, str(self.conf_file)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise CfnError(
                f"redis-server failed to start on port {port}: "
                f"{(proc.stderr or proc.stdout).strip() or 'see ' + str(self.log_file)}"
            )
        deadline = time.monotonic() + START_TIMEOUT
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            info = self._probe(port, password)
            if info is not None and info.get("loading") in (0, "0", None):
                break
            time.sleep(0.05)
        if info is None:
            raise CfnError(
                f"redis-server did not answer on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s; "
                f"see {self.log_file}"
            )
        self._save_instance(
            {
                "port": port,
                "password": password,
                "run_id": info.get("run_id"),
                "pid": info.get("process_id"),
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
            "daemonize yes",
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
        with self._locked():
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
            deadline = time.monotonic() + timeout
            while isinstance(pid, int) and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if isinstance(pid, int) and _alive(pid):
                os.kill(pid, signal.SIGKILL)
            return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
