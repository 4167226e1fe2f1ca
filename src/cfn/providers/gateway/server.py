"""Serving the LLM gateway: standalone (``cfn llm-gateway``), detached and reused.

Like the embedded Redis, cfn's own gateway is started on first need by
whatever spawns agents (``cfn run``, ``orchestrate``, ``spawn-agent``, the
portal, a worker) and reused by the next: ``ensure_gateway(settings)`` returns
its URL. It runs detached (``cfn.system.daemon``) with the environment of the
command that started it, which is where the provider keys are; agents get
only its URL and their own token. Its record (``<state>/llm-gateway/
instance.json``, 0600) holds a fingerprint of the settings it was started
with: a later command with other keys, routes or budget restarts it rather
than being served by stale ones. It exits by itself after
``CFN_LLM_GATEWAY_IDLE`` seconds without a request.

``CFN_LLM_GATEWAY_URL`` names an external gateway instead (another host's,
or the portal's under ``/llm``), and nothing is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from cfn.errors import CfnError

if TYPE_CHECKING:
    from cfn.coordination.connection import RedisManager
    from cfn.store.repository import Store
from cfn.providers.gateway.app import LlmGateway
from cfn.providers.gateway.tokens import LlmTokenAuthority
from cfn.settings import Settings, early
from cfn.system import forkwire
from cfn.system.daemon import record_of, stop_process, wait_until
from cfn.system.instances import llm_gateway_daemon
from cfn.system.proc import proc_alive, proc_start_ticks, signal_pid
from cfn.worktree.ports import PortRegistry, default_ports

START_TIMEOUT = 20.0
#: A request running longer than this no longer keeps an idle gateway up.
STUCK_AFTER = 900.0
#: How long open requests get when the gateway stops (then their connections close).
SHUTDOWN_GRACE = 5
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
STOP_TIMEOUT = 10.0
#: The gateway's port is the orchestrator's plus this (3010 in the main checkout).
PORT_OFFSET = 10
#: Settings that differ per agent or name the gateway itself: not part of its identity.
VOLATILE = frozenset({"cfn_llm_token", "cfn_mcp_token", "cfn_llm_gateway_url"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def fingerprint(settings: Settings) -> str:
    """A digest of every setting the gateway acts on (keys included, as a hash only)."""
    data: dict[str, object] = {}
    for name in sorted(type(settings).model_fields):
        if name in VOLATILE:
            continue
        value = getattr(settings, name)
        data[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
    providers_file = settings.cfn_providers_file or settings.project_root / ".claude" / (
        "providers.json"
    )
    with contextlib.suppress(OSError):
        data["_providers_file"] = hashlib.sha256(providers_file.read_bytes()).hexdigest()
    raw = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()


def build_gateway(
    settings: Settings, *, redis: RedisManager | None = None, store: Store | None = None
) -> LlmGateway:
    """The gateway app on this checkout's Redis (budget) and store (history): its own
    connections, or the caller's (the portal's), which the caller closes."""
    from cfn.coordination.connection import RedisManager
    from cfn.providers import LLMService
    from cfn.providers.gateway.recorder import BackgroundSinks, StoreRecorder
    from cfn.providers.usage import RedisLedger
    from cfn.store.repository import Store

    own_redis, own_store = redis is None, store is None
    redis = redis or RedisManager.from_settings(settings)
    store = store or Store.open(settings)
    ledger = RedisLedger(redis)
    service = LLMService(settings, ledger=ledger)
    history = BackgroundSinks([ledger, StoreRecorder(store, redis)])
    service.sinks = [history]
    gateway = LlmGateway(service, LlmTokenAuthority.from_settings(settings), store)

    async def close() -> None:
        await history.aclose()
        await service.aclose()
        if own_redis:
            await redis.close()
        if own_store:
            store.close()

    gateway.closers.append(close)
    return gateway


class _IdleWatch:
    """ASGI middleware noting the time of the last request.

    A request still running keeps the gateway up, for at most ``STUCK_AFTER``
    seconds: one whose caller and upstream both went away (an agent killed
    mid-call, its task's Redis stopped) must not keep it up forever.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.last = time.monotonic()
        self.running: dict[int, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = id(scope)
        self.last = self.running[key] = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self.running.pop(key, None)
            self.last = time.monotonic()

    def idle_for(self) -> float:
        now = time.monotonic()
        if any(now - started < STUCK_AFTER for started in self.running.values()):
            return 0.0
        return now - self.last


async def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int,
    record: bool = True,
    idle: float | None = None,
    ready: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the gateway until SIGINT/SIGTERM, cancellation or ``idle`` seconds unused."""
    import uvicorn

    host = host or settings.cfn_llm_gateway_host
    sock = _listen(host, port)
    port = int(sock.getsockname()[1])
    gateway = build_gateway(settings)
    watch = _IdleWatch(gateway.asgi)
    config = uvicorn.Config(
        watch,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    server = uvicorn.Server(config)
    daemon = llm_gateway_daemon(settings.state_dir)
    try:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if serving.done():
            await serving
            raise CfnError(f"the LLM gateway could not listen on {host}:{port}")
        if record:
            daemon.write_record(
                record_of(
                    os.getpid(),
                    host=host,
                    port=port,
                    url=f"http://{_client_host(host)}:{port}",
                    fingerprint=fingerprint(settings),
                )
            )
        if ready is not None:
            ready.set()
        if on_ready is not None:
            on_ready(f"http://{_client_host(host)}:{port}")
        limit = idle if idle is not None else settings.cfn_llm_gateway_idle
        while not serving.done():
            await asyncio.wait({serving}, timeout=min(5.0, limit))
            if watch.idle_for() >= limit:
                server.should_exit = True
                await serving
        await serving
    finally:
        await gateway.aclose()
        if record:
            daemon.clear_record(os.getpid())


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``port``, or on a free one when it is taken (another
    checkout's gateway, a test's): the record says which, and agents read it there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets it knows are TCP, and
    # without it a kept-alive reply waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            sock.close()
            raise CfnError(f"the LLM gateway cannot listen on {host}:{port}: {exc}") from None
        sock.bind((host, 0))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def answers(url: str, timeout: float = 1.0) -> bool:
    """True when a cfn LLM gateway answers ``GET /healthz`` at ``url``."""
    try:
        reply = httpx.get(f"{url}/healthz", timeout=timeout)
    except httpx.HTTPError:
        return False
    try:
        return reply.status_code == 200 and reply.json().get("service") == "cfn-llm-gateway"
    except ValueError:
        return False


def running_gateway(settings: Settings) -> dict[str, Any] | None:
    """This checkout's recorded gateway, if its process lives and it answers."""
    data = llm_gateway_daemon(settings.state_dir).read_record()
    pid, start, url = data.get("pid"), data.get("pid_start"), data.get("url")
    if not isinstance(url, str) or not proc_alive(pid, start if isinstance(start, int) else None):
        return None
    return data if answers(url) else None


def gateway_port(settings: Settings) -> int:
    """The port cfn's own gateway uses (recorded in <state>/ports.json)."""
    preferred = settings.cfn_llm_gateway_port or (
        (settings.cfn_orchestrator_port or default_ports(settings.worktree_branch).orchestrator)
        + PORT_OFFSET
    )
    return PortRegistry(settings.state_dir).resolve("llm-gateway", preferred)


def ensure_gateway(settings: Settings, *, containers: bool = False) -> str:
    """The URL agents call: CFN_LLM_GATEWAY_URL, or cfn's own gateway (started if need be).

    ``containers``: agents in containers will call it, through their network's
    gateway address, so a gateway on the loopback address alone will not do: it
    listens on every address instead (each request still needs an agent's token).
    """
    if settings.cfn_llm_gateway_url:
        return settings.cfn_llm_gateway_url.rstrip("/")
    daemon = llm_gateway_daemon(settings.state_dir)
    wanted = fingerprint(settings)
    host = settings.cfn_llm_gateway_host
    if containers and host in LOOPBACK:
        host = "0.0.0.0"  # noqa: S104
    with daemon.locked():
        current = running_gateway(settings)
        if current is not None:
            reaches = not containers or current.get("host") not in LOOPBACK
            if current.get("fingerprint") == wanted and reaches:
                return str(current["url"])
            start = current.get("pid_start")
            stop_process(int(current["pid"]), grace=STOP_TIMEOUT, start_ticks=start)
        port = gateway_port(settings)
        # The caller's settings (not only its environment: a library caller may pass
        # its own), which are also what the fingerprint was taken of.
        env = dict(os.environ)
        for name, value in settings.to_environment().items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        pid = _fork(settings, host, port, env, daemon.log_file)
        proc = None
        if pid is None:
            proc = daemon.spawn(
                [sys.executable, "-m", "cfn", "llm-gateway", "--port", str(port), "--host", host],
                env=env,
            )
            pid = proc.pid
        start = proc_start_ticks(pid)

        def started() -> bool:
            record = daemon.read_record()
            url = record.get("url")
            return record.get("pid") == pid and isinstance(url, str) and answers(url, 0.5)

        def exited() -> bool:
            return proc.poll() is not None if proc is not None else not proc_alive(pid, start)

        if wait_until(started, START_TIMEOUT, exited=exited):
            return str(daemon.read_record()["url"])
        if not exited():
            signal_pid(pid, signal.SIGTERM, group=True)
        raise CfnError(f"the LLM gateway did not start; see {daemon.log_file}: {daemon.log_tail()}")


def fork_request(host: str, port: int, cwd: str, env: dict[str, str]) -> bytes:
    """The request for a gateway forked from the agent server (cfn.providers.gateway.forked)."""
    payload = {"host": host, "port": port, "cwd": cwd, "env": env}
    return json.dumps(payload).encode() + b"\n"


def _fork(settings: Settings, host: str, port: int, env: dict[str, str], log: Path) -> int | None:
    """Fork the gateway from this checkout's agent server when it runs
    (cfn.providers.gateway.forked); None when it does not or refuses: then the
    gateway starts as its own Python."""
    if settings.cfn_agent_server != "auto":
        return None
    socket_path = str(settings.agent_server_dir / early.SERVER_SOCKET)
    if not os.path.exists(socket_path):
        return None
    payload = fork_request(host, port, str(settings.project_root), env)
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        pid, conn = forkwire.request_fork(socket_path, forkwire.LLM_GATEWAY, [log_fd], payload)
    except (OSError, ValueError):
        return None
    finally:
        os.close(log_fd)
    conn.close()  # the agent server reaps it
    return int(pid)


def run_forever(
    settings: Settings,
    *,
    host: str | None = None,
    port: int,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM or idle (``cfn llm-gateway`` and the forked gateway)."""

    async def main() -> None:
        task = asyncio.create_task(serve(settings, host=host, port=port, on_ready=on_ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


def stop_gateway(settings: Settings) -> bool:
    """Stop this checkout's own gateway; True when one was running."""
    return llm_gateway_daemon(settings.state_dir).stop_recorded(STOP_TIMEOUT)


def mint_agent_token(
    settings: Settings,
    agent_id: str,
    task_id: str,
    *,
    provider: str,
    model: str,
    providers: tuple[str, ...] = (),
) -> str:
    """An agent's gateway token, valid for its whole run (CFN_LLM_TOKEN_TTL)."""
    return LlmTokenAuthority.from_settings(settings).mint(
        agent_id,
        task_id,
        provider=provider,
        model=model,
        providers=providers,
        ttl=settings.cfn_llm_token_ttl + settings.agent_timeout,
    )


def agent_environment(
    settings: Settings,
    agent_id: str,
    task_id: str,
    *,
    provider: str,
    model: str,
    providers: tuple[str, ...] = (),
    containers: bool = False,
    url: str | None = None,
) -> dict[str, str]:
    """What an agent process is given to reach its LLM: the gateway's URL (``url``, when
    the caller has just made sure of it) and its token."""
    return {
        "CFN_LLM_GATEWAY_URL": url or ensure_gateway(settings, containers=containers),
        "CFN_LLM_TOKEN": mint_agent_token(
            settings, agent_id, task_id, provider=provider, model=model, providers=providers
        ),
    }
