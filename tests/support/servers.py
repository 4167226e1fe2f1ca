"""Real servers for tests: redis-server (plain, replica, sentinel) on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


@dataclass
class RedisServer:
    """A redis-server process of the test's own, in a temp dir."""

    workdir: Path
    port: int = field(default_factory=free_port)
    notify: str | None = "Klgxt"
    password: str | None = None
    replica_of: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server missing: run `make test`, which installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.workdir / "redis.log"),
        ]
        if self.notify is not None:
            args += ["--notify-keyspace-events", self.notify]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class SentinelServer:
    workdir: Path
    master_port: int
    master_name: str = "mymaster"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    down_after_ms: int = 2000

    def start(self) -> SentinelServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"sentinel-{self.port}.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {self.workdir}",
                    f"logfile {self.workdir / 'sentinel.log'}",
                    f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} 1",
                    # Not lower: the Sentinel pings every min(down-after, 1 s) and starts
                    # a new master's clock when it switches, so with 500 ms the first PING
                    # of a just-promoted master cannot be answered in time: it is judged
                    # down and failed over again, ~0.5 s after every failover (its log:
                    # +switch-master, then +sdown 500 ms later). 2 s leaves a margin.
                    f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.master_name} 2000",
                    f"sentinel parallel-syncs {self.master_name} 1",
                ]
            )
            + "\n"
        )
        binary = shutil.which("redis-sentinel") or shutil.which("redis-server")
        assert binary is not None
        args = [binary, str(conf)]
        if binary.endswith("redis-server"):
            args.append("--sentinel")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def master_port_now(self) -> int:
        client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        try:
            _host, port = client.sentinel_get_master_addr_by_name(self.master_name)
            return int(port)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


def cfn_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment for running ``cfn`` as a subprocess, isolated to tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CFN_"))}
    env["CFN_STATE_DIR"] = str(tmp_path / ".cfn")
    env.update(extra)
    return env
