"""Real servers for tests: redis-server (plain, replica, sentinel) on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

#: Below Linux's ephemeral range (32768-60999), so no outgoing connection can take a port
#: between free_port() and the server's bind; each pytest-xdist worker draws from its own
#: block, in turn, so no two workers (and no two servers of one worker) get the same port.
PORT_BASE = 20000
PORT_BLOCK = 1000
_next_port: list[int] = []


def _port_block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...; unset: no xdist
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    return PORT_BASE + (index % 12) * PORT_BLOCK


def free_port() -> int:
    """A port nothing listens on, from this process's block (the kernel's pick as fallback)."""
    block = _port_block()
    if not _next_port:
        # Another run may use the same block right now (another checkout): start at a
        # different place in it each time.
        _next_port.append(block + (os.getpid() * 7919) % PORT_BLOCK)
    for _ in range(PORT_BLOCK):
        port = _next_port[0]
        _next_port[0] = block + (port + 1 - block) % PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _answers_as(port: int, pid: int, password: str | None) -> bool:
    """True when the redis-server (or Sentinel) on ``port`` is process ``pid``: a server
    that lost the race for its port must not be mistaken for the one that won it."""
    request = b"INFO server\r\n"
    if password:
        request = f"AUTH {password}\r\n".encode() + request
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(request)
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return f"process_id:{pid}\r\n".encode() in reply


def _start_listening(
    argv: Callable[[], list[str]], port: Callable[[], int], password: str | None, what: str
) -> subprocess.Popen[bytes]:
    """Start a redis-server or Sentinel and wait until it is the one answering on its port.

    ``argv``/``port`` are read again on each try, so a caller may pick a new port when
    the process exits (its port was taken after free_port() found it free).
    """
    proc = subprocess.Popen(argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _PortTaken(f"{what} on port {port()} exited with {proc.returncode}")
        if _answers_as(port(), proc.pid, password):
            return proc
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise TimeoutError(f"{what} did not answer on port {port()} after 10 s")


class _PortTaken(RuntimeError):
    pass


PORT_TRIES = 5


@dataclass
class RedisServer:
    """A redis-server process of the test's own, in a temp dir.

    ``port`` left at 0 means "any free port" (chosen again if it is taken at start);
    a given port (a restart in the same place) is kept.
    """

    workdir: Path
    port: int = 0
    notify: str | None = "Klgxt"
    password: str | None = None
    replica_of: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    _any_port: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port()
            self._any_port = True

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server missing: run `make test`, which installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(PORT_TRIES):
            try:
                self.proc = _start_listening(
                    lambda: self._argv(binary), lambda: self.port, self.password, "redis-server"
                )
                return self
            except _PortTaken:
                if not self._any_port or attempt == PORT_TRIES - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _argv(self, binary: str) -> list[str]:
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
        return args

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
        binary = shutil.which("redis-sentinel") or shutil.which("redis-server")
        assert binary is not None
        for attempt in range(PORT_TRIES):
            try:
                self.proc = _start_listening(
                    lambda: self._argv(binary), lambda: self.port, None, "redis-sentinel"
                )
                return self
            except _PortTaken:
                if attempt == PORT_TRIES - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _argv(self, binary: str) -> list[str]:
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
        args = [binary, str(conf)]
        if binary.endswith("redis-server"):
            args.append("--sentinel")
        return args

    def knows_replica(self, port: int) -> bool:
        """Whether the Sentinel has found ``port`` as a healthy replica (it learns of
        replicas from the master's INFO, so a master killed before that is never failed
        over)."""
        client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        try:
            replicas = client.sentinel_slaves(self.master_name)
        finally:
            client.close()
        return any(
            int(item["port"]) == port
            and set(str(item.get("flags", "")).split(",")) == {"slave"}
            and item.get("master-link-status") == "ok"
            for item in replicas
        )

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


def outside_env() -> dict[str, str]:
    """This process's environment without its Redis and cfn settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CFN_"))}


def cfn_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment for running ``cfn`` as a subprocess, isolated to tmp_path."""
    env = outside_env()
    env["CFN_STATE_DIR"] = str(tmp_path / ".cfn")
    # An LLM gateway the command starts goes away soon after the test (default: 1 h).
    env["CFN_LLM_GATEWAY_IDLE"] = "20"
    env.update(extra)
    return env
