"""MCP gateway overhead: the same tool call through the gateway and straight to its server.

Starts its own redis-server and, through cfn's launcher (``python -m
cfn.mcp.serve``, as ``cfn mcp up`` does), the Redis Tools server and the
gateway on free ports. One MCP client session (the SDK's streamable HTTP
client, the same kind of session both ways) to the gateway's
``/mcp/redis-tools`` and one to the server's ``/mcp``; each sample calls
``redis_ttl`` once on each, in alternating order, after a warm-up. The same
call is also made on one MCP session each way from a raw client (JSON-RPC
bytes over one kept-alive connection, no SDK): the SDK client's own 4-5 ms
of work per call shares the 2 cores with the gateway and the server, so the
raw pair shows the gateway's own cost more clearly. The seed's
``POST /execute`` is measured the same way (plain HTTP, no MCP session).

Where the time goes is measured alongside: a token check (the gateway and the
server each do one per request), ``AuditLog.record`` (the only audit work on
the request path), a bare loopback HTTP round trip (``GET /health``), and,
in a phase of its own after the timed rounds, the CPU time the gateway and
the server processes spend per call (from /proc/PID/stat): unlike the
latency, that figure does not depend on what else the machine is running.

Cgroup limits are off by default (``MCP_CGROUPS=off``): the seed's 0.25-CPU
quota for Redis Tools would measure the throttling, not the gateway.
``--cgroups`` keeps them.

    .venv/bin/python -m bench mcp [--samples=1000] [--warmup=100] [--cgroups] [--cpu-calls=500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from tests.support.servers import RedisServer, free_port

from cfn.mcp.audit import AuditLog
from cfn.mcp.launcher import Launcher
from cfn.mcp.tokens import TokenAuthority
from cfn.mcp.upstream import HttpPool
from cfn.settings import Settings
from cfn.store.repository import Store

TARGET_ADDED_P50_MS = 2.0
GATEWAY_AGENT = "bench-gateway"
DIRECT_AGENT = "bench-direct"
TOOL = "redis_ttl"
ARGS: dict[str, Any] = {"keys": ["bench:mcp:a", "bench:mcp:b"]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Session:
    """One SDK client session held open for the run."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> ClientSession:
        http = await self._stack.enter_async_context(
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {self.token}"}, timeout=httpx2.Timeout(30.0)
            )
        )
        streams = await self._stack.enter_async_context(
            streamable_http_client(self.url, http_client=http)
        )
        session = await self._stack.enter_async_context(ClientSession(streams[0], streams[1]))
        await session.initialize()
        return session

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


class RawSession:
    """The same MCP session with no SDK on the client side: JSON-RPC bytes over one
    kept-alive connection (cfn.mcp.upstream), so the client's own cost is small."""

    def __init__(self, pool: HttpPool, path: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.pool = pool
        self.path = path
        self.headers = headers

    @classmethod
    async def open(cls, base: str, path: str, token: str) -> RawSession:
        pool = HttpPool(base)
        headers = [(b"authorization", f"Bearer {token}".encode()),
                   (b"content-type", b"application/json"),
                   (b"accept", b"application/json, text/event-stream")]  # fmt: skip
        init = json.dumps(
            {"jsonrpc": "2.0", "id": 0, "method": "initialize",
             "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "bench", "version": "1"}}}
        ).encode()  # fmt: skip
        reply = await pool.request(b"POST", path.encode(), headers, init)
        if reply.status != 200:
            raise RuntimeError(f"initialize at {base}{path}: HTTP {reply.status}")
        headers += [(b"mcp-session-id", reply.headers["mcp-session-id"].encode()),
                    (b"mcp-protocol-version", b"2025-11-25")]  # fmt: skip
        session = cls(pool, path.encode(), headers)
        await session.post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', 202)
        return session

    async def post(self, body: bytes, status: int = 200) -> None:
        reply = await self.pool.request(b"POST", self.path, self.headers, body)
        if reply.status != status or b'"isError":true' in reply.body:
            raise RuntimeError(f"{TOOL} failed: HTTP {reply.status} {reply.body[:200]!r}")


async def _timed(fn: Callable[[], Awaitable[None]]) -> float:
    began = time.perf_counter()
    await fn()
    return (time.perf_counter() - began) * 1000


async def measure(
    gateway: str, server: str, tokens: tuple[str, str], samples: int, warmup: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        "mcp direct": [], "mcp gateway": [], "mcp raw direct": [], "mcp raw gateway": [],
        "execute direct": [], "execute gateway": [], "http /health direct": [],
    }  # fmt: skip
    gateway_token, direct_token = tokens
    body = {"tool": "redis", "action": "ttl", **ARGS}
    raw_call = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": TOOL, "arguments": ARGS}}
    ).encode()  # fmt: skip
    async with (
        Session(gateway + "/mcp/redis-tools", gateway_token) as via_gateway,
        Session(server + "/mcp", direct_token) as direct,
        httpx.AsyncClient(timeout=30) as http,
    ):
        raw_gateway = await RawSession.open(gateway, "/mcp/redis-tools", gateway_token)
        raw_direct = await RawSession.open(server, "/mcp", direct_token)

        async def call(session: ClientSession) -> None:
            result = await session.call_tool(TOOL, ARGS)
            if result.is_error:
                raise RuntimeError(f"{TOOL} failed: {result.content}")

        async def execute(base: str, token: str) -> None:
            reply = await http.post(
                base + "/execute", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            reply.raise_for_status()

        async def health() -> None:
            (await http.get(server + "/health")).raise_for_status()

        probes: dict[str, Callable[[], Awaitable[None]]] = {
            "mcp direct": lambda: call(direct),
            "mcp gateway": lambda: call(via_gateway),
            "mcp raw direct": lambda: raw_direct.post(raw_call),
            "mcp raw gateway": lambda: raw_gateway.post(raw_call),
            "execute direct": lambda: execute(server, direct_token),
            "execute gateway": lambda: execute(gateway, gateway_token),
            "http /health direct": health,
        }
        names = list(probes)
        for i in range(warmup + samples):
            # Rotate the order each sample: neither path always runs first (or after a GC).
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                elapsed = await _timed(probes[name])
                if i >= warmup:
                    out[name].append(elapsed)
        await raw_gateway.pool.aclose()
        await raw_direct.pool.aclose()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_call(
    gateway: str, server: str, tokens: tuple[str, str], pids: dict[str, int], calls: int
) -> dict[str, float]:
    """Milliseconds of CPU per call: the gateway's and the server's, each way."""
    out: dict[str, float] = {}
    async with (
        Session(gateway + "/mcp/redis-tools", tokens[0]) as via_gateway,
        Session(server + "/mcp", tokens[1]) as direct,
    ):
        for label, session in (("gateway", via_gateway), ("direct", direct)):
            for _ in range(20):
                await session.call_tool(TOOL, ARGS)
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            for _ in range(calls):
                await session.call_tool(TOOL, ARGS)
            for name, pid in pids.items():
                out[f"{name} ({label})"] = (cpu_seconds(pid) - before[name]) / calls * 1000
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def audit_durations(settings: Settings) -> dict[tuple[str, str], list[float]]:
    """Durations (ms) of the run's ``redis_ttl`` audit rows by (via, agent)."""
    out: dict[tuple[str, str], list[float]] = {}
    with Store.open(settings) as store:
        for agent in (GATEWAY_AGENT, DIRECT_AGENT):
            for row in store.mcp_audit(agent_id=agent, limit=1_000_000):
                if row.tool == TOOL and row.outcome == "ok":
                    out.setdefault((row.via, agent), []).append(row.duration_ms)
    return out


def in_process_costs(authority: TokenAuthority, token: str, tmp: Path) -> dict[str, float]:
    """Microseconds per token check and per ``AuditLog.record`` (the hot-path parts)."""
    n = 5000
    began = time.perf_counter()
    for _ in range(n):
        claims = authority.verify(token)
    verify_us = (time.perf_counter() - began) / n * 1e6

    async def records() -> float:
        audit = AuditLog(tmp / "audit.jsonl", via="gateway")
        began = time.perf_counter()
        for _ in range(n):
            audit.record(server="redis-tools", tool=TOOL, claims=claims, outcome="ok",
                         duration=0.001)  # fmt: skip
        spent = (time.perf_counter() - began) / n * 1e6
        await audit.aclose()
        return spent

    return {"verify": verify_us, "record": asyncio.run(records())}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench mcp")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--cgroups", action="store_true", help="keep the seed's cgroup limits")
    parser.add_argument("--cpu-calls", type=int, default=500, help="calls per CPU-time phase")
    args = parser.parse_args(argv)
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis = RedisServer(root / "redis").start()
        env = {
            "CFN_STATE_DIR": str(root / ".cfn"),
            "REDIS_URL": redis.url,
            "MCP_AUTH_TOKEN": secrets.token_hex(32),
            "MCP_REDIS_TOOLS_PORT": str(free_port()),
            "MCP_GATEWAY_PORT": str(free_port()),
            "MCP_PLAYWRIGHT_PORT": str(free_port()),
            "MCP_N8N_PORT": str(free_port()),
            "MCP_SECURITY_SCANNER_PORT": str(free_port()),
            "MCP_CGROUPS": "auto" if args.cgroups else "off",
        }
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        settings = Settings()
        launcher = Launcher(settings)
        try:
            launcher.up(["redis-tools", "gateway"], env=env)
            authority = TokenAuthority.from_settings(settings)
            tokens = (
                authority.mint(GATEWAY_AGENT, "bench", ["redis-management"], ttl=3600),
                authority.mint(DIRECT_AGENT, "bench", ["redis-management"], ttl=3600),
            )
            began = time.perf_counter()
            results = asyncio.run(
                measure(
                    launcher.url("gateway"), launcher.url("redis-tools"), tokens,
                    args.samples, args.warmup,
                )
            )  # fmt: skip
            wall = time.perf_counter() - began
            load_after = load()
            state = launcher.read_state()
            pids = {"gateway": state["gateway"].pid, "server": state["redis-tools"].pid}
            cpu = asyncio.run(
                cpu_per_call(
                    launcher.url("gateway"), launcher.url("redis-tools"), tokens, pids,
                    args.cpu_calls,
                )
            )  # fmt: skip
            costs = in_process_costs(authority, tokens[0], root)
        finally:
            launcher.down()  # the servers flush their audit batches as they stop
            redis.stop()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        audited = audit_durations(settings)
    print(f"{TOOL} over MCP streamable HTTP (SDK client), {args.samples} samples per path after "
          f"{args.warmup} warm-up, interleaved, {wall:.1f} s; cgroups "
          f"{'on' if args.cgroups else 'off'}")  # fmt: skip
    print(f"{'path':<22}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for name, values in results.items():
        print(f"{name:<22}{pct(values, 0.5):>9.3f}{pct(values, 0.9):>9.3f}"
              f"{pct(values, 0.99):>9.3f}{statistics.fmean(values):>9.3f}")  # fmt: skip
    added = pct(results["mcp gateway"], 0.5) - pct(results["mcp direct"], 0.5)
    paired = statistics.median(
        g - d for g, d in zip(results["mcp gateway"], results["mcp direct"], strict=True)
    )
    added_exec = pct(results["execute gateway"], 0.5) - pct(results["execute direct"], 0.5)
    added_raw = pct(results["mcp raw gateway"], 0.5) - pct(results["mcp raw direct"], 0.5)
    verdict = "met" if added < TARGET_ADDED_P50_MS else "MISSED"
    ratio = pct(results["mcp gateway"], 0.5) / pct(results["mcp direct"], 0.5)
    print(f"added by the gateway, MCP: p50 {added:+.3f} ms (median of paired differences "
          f"{paired:+.3f} ms; gateway/direct p50 ratio {ratio:.2f}); target < "
          f"{TARGET_ADDED_P50_MS:g} ms: {verdict}")  # fmt: skip
    print(f"added by the gateway, /execute: p50 {added_exec:+.3f} ms; MCP from a raw client "
          f"(no SDK): p50 {added_raw:+.3f} ms")  # fmt: skip
    print(f"in-process: token check {costs['verify']:.1f} us, AuditLog.record "
          f"{costs['record']:.2f} us per call")  # fmt: skip
    # Where the gateway's MCP time goes, from the audit rows (each side times its own part).
    tool_gw = audited.get(("direct", GATEWAY_AGENT), [])
    upstream = audited.get(("gateway", GATEWAY_AGENT), [])
    tool_direct = audited.get(("direct", DIRECT_AGENT), [])
    if tool_gw and upstream and tool_direct:
        client_gw = pct(results["mcp gateway"], 0.5)
        print(f"audit rows in the SQL store: {sum(map(len, audited.values()))}; p50 of their "
              f"durations: the tool on the server {pct(tool_direct, 0.5):.3f} ms (direct) / "
              f"{pct(tool_gw, 0.5):.3f} ms (via the gateway)")  # fmt: skip
        print(f"gateway path, p50: client -> gateway and back, outside the forward "
              f"{client_gw - pct(upstream, 0.5):.3f} ms; the gateway's forward (hop, server, "
              f"tool) {pct(upstream, 0.5):.3f} ms, of which the tool itself "
              f"{pct(tool_gw, 0.5):.3f} ms")  # fmt: skip
    print(f"CPU per MCP call, {args.cpu_calls} calls each way: through the gateway: gateway "
          f"{cpu['gateway (gateway)']:.3f} ms, server {cpu['server (gateway)']:.3f} ms; "
          f"direct: server {cpu['server (direct)']:.3f} ms (gateway idle: "
          f"{cpu['gateway (direct)']:.3f} ms)")  # fmt: skip
    print(f"load average (1/5/15 min) before {load_before}, after the timed rounds "
          f"{load_after}, at the end {load()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
