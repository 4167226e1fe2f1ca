"""What the LLM gateway adds to an LLM call and to a Claude Code agent run.

Every mode, in one run, reaches the same local stand-in server
(``tests.support.llm_servers``) with the same request and reply, so the
stand-in's own time is in every figure and the differences are the gateway's:

* ``json``    non-streaming calls, keep-alive ``httpx.AsyncClient`` on both paths:
              Anthropic Messages (``POST /v1/messages``, provider zai with
              ``ZAI_API_STYLE=anthropic``) and OpenAI chat (``POST
              /v1/chat/completions``, provider kimi), straight to the stand-in vs
              through the gateway. p50/p90 of the whole call, "added at p50".
* ``stream``  the same two formats with ``stream: true``: time to the first
              streamed token (Anthropic: the first ``text_delta`` event; OpenAI:
              the first chunk with non-empty ``delta.content``), and to the
              stream's end.
* ``claude``  one scripted Claude Code task (one Write tool call, then a final
              text with a confidence line): ``claude -p`` via
              ``cfn.agents.claude_code.run_claude`` with ``ANTHROPIC_BASE_URL`` =
              the stand-in (the baseline) vs = the gateway; and a whole cfn agent
              (``python -m cfn agent run --context FILE``, backend claude-code:
              Python start, Redis lock, heartbeats, the CLI, the report) pointed at
              the stand-in vs at the gateway; and the same agent as cfn runs one
              (``cfn agent as cfn spawns it``: the process spawner, its supervisor
              forked from the agent server and the agent from the supervisor, under
              AGENT_CPU_LIMIT with CFN_AGENT_CPU_BURST and CFN_AGENT_CPU_PERIOD_US)
              through the gateway, which is the issue's "a Claude Code agent run
              under cfn", compared with ``claude -p`` alone. Alternating, one run of
              each mode per round, after one warm-up round. Each run's CPU time is
              shown too (the CLI alone uses more than one CPU while it runs), and
              how often the agent's cpu group was throttled.

Processes: the load generator (this process), the stand-in and the gateway are
three processes, so neither server competes with the client for the GIL. The
stand-in runs ``stand_in()`` below in a child Python; the gateway is the real
``python -m cfn llm-gateway --port P`` with the provider keys and base URLs in
its environment only, a temporary state dir (its token secret, SQLite
history), our own redis-server (``tests.support.servers.RedisServer``) and no
budget (``CFN_TASK_BUDGET_USD`` unset); it records every call as it does in
production (``llm_calls``, ``llm:call`` events, the Redis ledger, off the
request path). Tokens are minted here with ``mint_agent_token`` from the same
state dir. Beside the latencies it prints the gateway process's CPU time per
call (/proc, user+sys, its off-path history writes included). ``--profile=FILE``
runs the gateway under cProfile and prints where its time went. Options go
with ``=`` (``python -m bench gateway --n=200 --rounds=3``): ``bench/__main__``
takes bare words for benchmark names. ``--n=0`` or ``--rounds=0`` skips a part;
``--no-cfn-agent`` runs only ``claude -p``; ``--issue-only`` only the issue's pair
(``claude -p`` alone and the agent as cfn spawns it).

Targets (the issue): < 2 ms added at p50 for a call and for the first streamed
token; a Claude Code agent run under cfn <= 1.2x ``claude -p`` alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import pstats
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from tests.support.llm_servers import LLMServer, Recorded, Reply, anthropic_sse, auto_reply
from tests.support.servers import RedisServer

from cfn.agents.claude_code import ClaudeRun, Step, find_claude, run_claude
from cfn.agents.context import AgentContext, generate_cli_context
from cfn.providers.gateway.server import mint_agent_token
from cfn.settings import Settings

console = Console(highlight=False)

ROOT = Path(__file__).resolve().parent.parent
ANTHROPIC = ("zai", "glm-4.6")
OPENAI = ("kimi", "kimi-latest")
#: Where the scripted model writes: named in the brief, found by the stand-in.
TARGET = re.compile(r"BENCH_TARGET=(/[\w./-]+)")
FINAL_TEXT = 'Wrote it.\n{"confidence": 0.9, "summary": "wrote hello.txt", "files": ["hello.txt"]}'
START_TIMEOUT = 30.0
#: Variables of this process that must not reach the gateway or the agents.
ISOLATE = (
    "ZAI_",
    "MOONSHOT_",
    "KIMI_",
    "OPENROUTER_",
    "ANTHROPIC_",
    "MAX_",
    "GEMINI_",
    "XAI_",
    "VLLM_",
    "OLLAMA_",
    "OPENAI_",
    "PROVIDER_ROUTES",
    "DEFAULT_PROVIDER",
    "HIGH_COMPLEXITY_PROVIDER",
    "COST_PROVIDER",
    "CFN_",
    "REDIS_",
    "CLAUDE",
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the stand-in (a child process) ------------------------------------------------------


def scripted_model(request: Recorded) -> Reply:
    """The main loop's turns (streamed, offering tools): a Write of the file the brief
    names, then, once a tool result came back, the final text. Stateless, so every run
    (and every concurrent one) gets the same script. Anything else: plain "ok"."""
    body = request.body
    if body.get("tools") and body.get("stream"):
        messages = body.get("messages") or [{}]
        content = messages[-1].get("content")
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            return anthropic_sse([FINAL_TEXT])
        found = TARGET.search(json.dumps(messages))
        path = found.group(1) if found else "/nonexistent/bench-target-missing.txt"
        arguments = json.dumps({"file_path": path, "content": "hello from the bench\n"})
        return anthropic_sse([""], tool_uses=[("toolu_w", "Write", arguments)])
    return auto_reply(request)


def stand_in() -> None:
    """Serve the stand-in until stdin closes; the first stdout line is its port."""
    with LLMServer() as server:
        server.default = scripted_model
        # The stand-in keeps every request it saw: not wanted over thousands of calls.
        server.requests = _Forgetful()
        print(server.port, flush=True)
        sys.stdin.read()


class _Forgetful(list[Recorded]):
    def append(self, item: Recorded) -> None:
        return None


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ISOLATE)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class Processes:
    stand_in: subprocess.Popen[str]
    stand_in_url: str
    gateway: subprocess.Popen[bytes]
    gateway_url: str
    env: dict[str, str]
    redis_url: str = ""


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not answer within {START_TIMEOUT} s")


@contextlib.contextmanager
def processes(tmp: Path, redis_url: str, profile: Path | None) -> Iterator[Processes]:
    stand = subprocess.Popen(
        [sys.executable, "-c", "from bench.bench_gateway import stand_in; stand_in()"],
        cwd=ROOT,
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    gateway: subprocess.Popen[bytes] | None = None
    try:
        assert stand.stdout is not None
        stand_url = f"http://127.0.0.1:{int(stand.stdout.readline())}"
        (tmp / "agents").mkdir(exist_ok=True)
        (tmp / "providers.json").write_text("{}")
        env = clean_env(
            CFN_STATE_DIR=str(tmp / ".cfn"),
            CFN_AGENTS_DIR=str(tmp / "agents"),
            CFN_PROVIDERS_FILE=str(tmp / "providers.json"),
            REDIS_URL=redis_url,
            ZAI_API_STYLE="anthropic",
            ZAI_ANTHROPIC_BASE_URL=stand_url,
            ZAI_BASE_URL=f"{stand_url}/v1",
            ZAI_API_KEY="zai-bench-key",
            KIMI_BASE_URL=f"{stand_url}/v1",
            MOONSHOT_API_KEY="kimi-bench-key",
            CFN_LLM_GATEWAY_IDLE="86400",
        )
        port = free_port()
        argv = [sys.executable]
        if profile is not None:
            argv += ["-m", "cProfile", "-o", str(profile)]
        argv += ["-m", "cfn", "llm-gateway", "--port", str(port), "--host", "127.0.0.1"]
        log = tmp / "gateway.log"
        with log.open("wb") as out:
            gateway = subprocess.Popen(argv, cwd=tmp, env=env, stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, gateway, log)
        yield Processes(stand, stand_url, gateway, url, env, redis_url)
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGINT)  # a clean exit: cProfile writes its file
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        if stand.stdin is not None:
            stand.stdin.close()
        try:
            stand.wait(10)
        except subprocess.TimeoutExpired:
            stand.kill()
            stand.wait()


# --- part 1 and 2: calls -----------------------------------------------------------------

Op = Callable[[], Awaitable[tuple[float, float]]]


def call_ops(
    procs: Processes, settings: Settings, clients: list[httpx.AsyncClient]
) -> dict[str, Op]:
    """(mode -> op); an op returns (ms to the first token or the reply, ms to the end)."""
    a_token = mint_agent_token(
        settings, "bench-1-1", "BGW", provider=ANTHROPIC[0], model=ANTHROPIC[1], providers=("zai",)
    )
    o_token = mint_agent_token(
        settings, "bench-1-1", "BGW", provider=OPENAI[0], model=OPENAI[1], providers=("kimi",)
    )
    direct = httpx.AsyncClient(base_url=procs.stand_in_url, timeout=30)
    gateway = httpx.AsyncClient(base_url=procs.gateway_url, timeout=30)
    clients += [direct, gateway]
    a_headers = {"x-api-key": a_token, "anthropic-version": "2023-06-01"}
    o_headers = {"authorization": f"Bearer {o_token}"}
    a_body: dict[str, Any] = {
        "model": ANTHROPIC[1],
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Say ok."}],
    }
    o_body: dict[str, Any] = {
        "model": OPENAI[1],
        "messages": [{"role": "user", "content": "Say ok."}],
    }

    def post(
        client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> Op:
        async def op() -> tuple[float, float]:
            t0 = time.perf_counter()
            reply = await client.post(path, json=body, headers=headers)
            reply.raise_for_status()
            reply.json()
            ms = (time.perf_counter() - t0) * 1000
            return ms, ms

        return op

    def anthropic_stream(client: httpx.AsyncClient) -> Op:
        body = {**a_body, "stream": True}

        async def op() -> tuple[float, float]:
            first = -1.0
            t0 = time.perf_counter()
            async with client.stream("POST", "/v1/messages", json=body, headers=a_headers) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if first < 0 and line.startswith("data:") and '"text_delta"' in line:
                        first = (time.perf_counter() - t0) * 1000
            assert first >= 0, "no text_delta in the stream"
            return first, (time.perf_counter() - t0) * 1000

        return op

    def openai_stream(client: httpx.AsyncClient) -> Op:
        body = {**o_body, "stream": True, "stream_options": {"include_usage": True}}

        async def op() -> tuple[float, float]:
            first = -1.0
            t0 = time.perf_counter()
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers=o_headers
            ) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if first < 0 and line.startswith("data:") and '"content"' in line:
                        data = line[5:].strip()
                        choices = json.loads(data).get("choices") or [{}]
                        if choices[0].get("delta", {}).get("content"):
                            first = (time.perf_counter() - t0) * 1000
            assert first >= 0, "no content delta in the stream"
            return first, (time.perf_counter() - t0) * 1000

        return op

    return {
        "anthropic json direct": post(direct, "/v1/messages", a_body, a_headers),
        "anthropic json gateway": post(gateway, "/v1/messages", a_body, a_headers),
        "openai json direct": post(direct, "/v1/chat/completions", o_body, o_headers),
        "openai json gateway": post(gateway, "/v1/chat/completions", o_body, o_headers),
        "anthropic stream direct": anthropic_stream(direct),
        "anthropic stream gateway": anthropic_stream(gateway),
        "openai stream direct": openai_stream(direct),
        "openai stream gateway": openai_stream(gateway),
    }


async def run_calls(
    procs: Processes, settings: Settings, n: int, warmup: int
) -> dict[str, tuple[list[float], list[float]]]:
    clients: list[httpx.AsyncClient] = []
    try:
        ops = call_ops(procs, settings, clients)
        results: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in ops}
        # Interleaved, one call of each mode per round: load from other processes on
        # the machine falls on every mode alike.
        for _ in range(warmup):
            for op in ops.values():
                await op()
        cpu = cpu_seconds(procs.gateway.pid)
        for _ in range(n):
            for mode, op in ops.items():
                first, total = await op()
                results[mode][0].append(first)
                results[mode][1].append(total)
        gateway_calls = n * sum(1 for mode in ops if mode.endswith("gateway"))
        per_call = (cpu_seconds(procs.gateway.pid) - cpu) * 1000 / gateway_calls
        results["gateway cpu"] = ([per_call], [per_call])
        return results
    finally:
        for client in clients:
            await client.aclose()


# --- part 3: agent runs --------------------------------------------------------------------


def children_cpu() -> float:
    """CPU seconds (user + sys) of this process's reaped children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: One agent run: (wall seconds, CPU seconds of the run's processes, CPU throttling events).
Sample = tuple[float, float, int]


async def claude_once(
    procs: Processes, settings: Settings, tmp: Path, url: str, n: int
) -> Sample:
    run_dir = tmp / f"claude-{n}"
    workspace = run_dir / "workspace"
    home = run_dir / "home"
    workspace.mkdir(parents=True)
    home.mkdir()
    target = workspace / "hello.txt"
    token = mint_agent_token(
        settings, "impl-1-1", f"BC{n}", provider=ANTHROPIC[0], model=ANTHROPIC[1]
    )
    run = ClaudeRun(
        binary=find_claude(None),
        workspace=workspace,
        prompt=f"Write hello.txt. BENCH_TARGET={target}",
        system_prompt_append="You are impl-1, an implementer in a CFN Loop team.",
        model=ANTHROPIC[1],
        allowed_tools=("Read", "Write", "Edit", "Bash", "Glob", "Grep"),
        gateway_url=url,
        token=token,
        config_dir=run_dir / "claude-config",
        mcp_config=None,
        max_turns=8,
        base_env={"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"},
    )

    async def ignore(step: Step) -> None:
        return None

    cpu0 = children_cpu()
    t0 = time.perf_counter()
    final = await run_claude(run, ignore, timeout=120)
    elapsed = time.perf_counter() - t0
    if final.is_error or not target.exists():
        raise RuntimeError(f"the scripted claude run failed: {final}")
    return elapsed, children_cpu() - cpu0, 0


def agent_task(
    settings: Settings, tmp: Path, task: str, redis_port: int
) -> tuple[AgentContext, Path, Path, str]:
    """One claude-code implementer's context (its workspace made), the file the scripted
    model writes, and the agent's gateway token."""
    workspace = tmp / task / "workspace"
    workspace.mkdir(parents=True)
    target = workspace / "hello.txt"
    context = generate_cli_context(
        task,
        "impl-1-1",
        settings=settings,
        redis_host="127.0.0.1",
        redis_port=redis_port,
        workspace=workspace,
        provider=ANTHROPIC[0],
        model=ANTHROPIC[1],
        backend="claude-code",
        role="implementer",
        loop=3,
        iteration=1,
        timeout=120,
        epic=f"Write hello.txt. BENCH_TARGET={target}",
    )
    token = mint_agent_token(settings, "impl-1-1", task, provider=ANTHROPIC[0], model=ANTHROPIC[1])
    return context, workspace, target, token


async def cfn_agent_once(
    procs: Processes, settings: Settings, tmp: Path, redis_port: int, url: str, n: int
) -> Sample:
    context, workspace, target, token = agent_task(settings, tmp, f"BA{n}", redis_port)
    path = context.write(settings.state_dir)
    env = {
        k: v
        for k, v in procs.env.items()
        if not k.startswith(("ZAI_", "KIMI_", "MOONSHOT_"))  # agents hold no provider key
    }
    env.update(CFN_LLM_GATEWAY_URL=url, CFN_LLM_TOKEN=token, HOME=str(workspace.parent))
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cfn",
        "agent",
        "run",
        "--context",
        str(path),
        cwd=workspace,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or not target.exists():
        raise RuntimeError(f"the cfn agent failed ({proc.returncode}): {err.decode()[-2000:]}")
    return elapsed, children_cpu() - cpu0, 0


async def cfn_agent_spawned(
    settings: Settings, tmp: Path, redis_url: str, redis_port: int, url: str, n: int
) -> Sample:
    """A claude-code agent the way cfn starts one: the process spawner (forked from the
    agent server, supervised, cgroup-limited), given the gateway's URL and a token."""
    from cfn.agents.spawn import spawner_for

    context, _workspace, target, token = agent_task(settings, tmp, f"BS{n}", redis_port)
    spawner = spawner_for(settings, redis_url=redis_url)
    t0 = time.perf_counter()
    handle = await spawner.spawn(context, env={"CFN_LLM_GATEWAY_URL": url, "CFN_LLM_TOKEN": token})
    info = await handle.wait()
    elapsed = time.perf_counter() - t0
    if not target.exists():
        raise RuntimeError(f"the spawned cfn agent failed: {info}")
    return elapsed, info.cpu_seconds or 0.0, int(info.record.get("cpu_throttled") or 0)


async def run_agents(
    procs: Processes,
    settings: Settings,
    tmp: Path,
    redis_port: int,
    rounds: int,
    full: bool,
    issue_only: bool = False,
) -> dict[str, list[Sample]]:
    counter = iter(range(1_000_000))
    modes: dict[str, Callable[[], Awaitable[Sample]]] = {
        "claude -p direct": lambda: claude_once(
            procs, settings, tmp, procs.stand_in_url, next(counter)
        ),
        "claude -p via gateway": lambda: claude_once(
            procs, settings, tmp, procs.gateway_url, next(counter)
        ),
    }
    if issue_only:
        del modes["claude -p via gateway"]
    elif full:
        modes["cfn agent direct"] = lambda: cfn_agent_once(
            procs, settings, tmp, redis_port, procs.stand_in_url, next(counter)
        )
        modes["cfn agent via gateway"] = lambda: cfn_agent_once(
            procs, settings, tmp, redis_port, procs.gateway_url, next(counter)
        )
    if full or issue_only:
        modes["cfn agent as cfn spawns it"] = lambda: cfn_agent_spawned(
            settings, tmp, procs.redis_url, redis_port, procs.gateway_url, next(counter)
        )
    results: dict[str, list[Sample]] = {mode: [] for mode in modes}
    for op in modes.values():  # warm-up: the CLI's binary and Python's imports into cache
        await op()
    for _ in range(rounds):
        for mode, op in modes.items():
            results[mode].append(await op())
    return results


# --- reports -------------------------------------------------------------------------------


def report_calls(results: dict[str, tuple[list[float], list[float]]], n: int, at: str) -> bool:
    met = True
    table = Table(
        title=f"One LLM call, direct vs through the gateway, {n} calls per mode (ms)",
        caption="stream: p50..p99 to the first token; end: to the last byte",
    )
    for col in ("call", "path", "p50", "p90", "p99", "added p50", "end p50", "end +"):
        table.add_column(col, justify="left" if col in ("call", "path") else "right")
    for call in ("anthropic json", "openai json", "anthropic stream", "openai stream"):
        base_first, base_total = results[f"{call} direct"]
        for path in ("direct", "gateway"):
            first, total = results[f"{call} {path}"]
            added = statistics.median(first) - statistics.median(base_first)
            end_added = statistics.median(total) - statistics.median(base_total)
            if path == "gateway":
                met = met and added < 2.0
            table.add_row(
                call.replace("anthropic", "anth").replace("openai", "oai"),
                path,
                f"{statistics.median(first):.3f}",
                f"{pct(first, 0.9):.3f}",
                f"{pct(first, 0.99):.3f}",
                "-" if path == "direct" else f"{added:+.3f}",
                f"{statistics.median(total):.3f}",
                "-" if path == "direct" else f"{end_added:+.3f}",
            )
    console.print(table)
    cpu = results["gateway cpu"][0][0]
    console.print(f"gateway process CPU per call (user+sys, history writes included): {cpu:.3f} ms")
    console.print(f"load average at the end (1, 5, 15 min): {at}")
    return met


def whole_cpu(mode: str) -> bool:
    """Whether a mode's CPU figure counts everything: ``claude -p`` (a child we wait for)
    and the spawned agent (its cgroup's own count); not ``cfn agent run``, whose
    sandboxed CLI's processes are not waited for by anyone wait4 reports on."""
    return mode.startswith("claude") or mode.endswith("spawns it")


def report_agents(results: dict[str, list[Sample]], rounds: int, at: str) -> bool:
    table = Table(
        title=f"A scripted Claude Code task (Write, then the final text), {rounds} rounds",
        caption="CPU s: the CLI's alone, or the whole agent's cgroup as cfn spawns it "
        "(user + sys; '-' for a plain `cfn agent run`, whose sandboxed CLI's CPU time "
        "does not reach wait4); "
        "throttled: CFS periods in which the agent's cpu group hit its quota",
    )
    for col in ("mode", "median s", "min s", "max s", "CPU s", "throttled", "ratio"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    met = True
    wall = {mode: [s[0] for s in samples] for mode, samples in results.items()}
    claude = statistics.median(wall["claude -p direct"])
    for mode, samples in results.items():
        # A mode's baseline is its direct twin; the agent as cfn spawns it has none:
        # it is compared with `claude -p` alone, the issue's figure.
        twin = mode.replace("via gateway", "direct")
        base = wall[twin] if twin != mode and twin in wall else wall["claude -p direct"]
        ratio = statistics.median(wall[mode]) / statistics.median(base)
        table.add_row(
            mode,
            f"{statistics.median(wall[mode]):.3f}",
            f"{min(wall[mode]):.3f}",
            f"{max(wall[mode]):.3f}",
            f"{statistics.median(s[1] for s in samples):.3f}" if whole_cpu(mode) else "-",
            str(sum(s[2] for s in samples)) if mode.endswith("spawns it") else "-",
            "-" if mode.endswith("direct") else f"{ratio:.3f}x",
        )
    console.print(table)
    if "cfn agent as cfn spawns it" in wall:
        # The issue's figure: a Claude Code agent run under cfn vs `claude -p` alone.
        cfn = statistics.median(wall["cfn agent as cfn spawns it"])
        met = cfn / claude <= 1.2
        console.print(
            f"a claude-code agent as cfn runs it vs claude -p alone: {cfn / claude:.3f}x "
            "(target <= 1.2x)"
        )
    console.print(f"load average at the end (1, 5, 15 min): {at}")
    return met


def report_profile(path: Path, top: int) -> None:
    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    console.print(f"[bold]gateway process profile ({path})[/bold]")
    console.print(buffer.getvalue(), markup=False)


# --- main ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as name:
        tmp = Path(name)
        redis_server = RedisServer(tmp / "redis").start()
        profile = Path(args.profile).resolve() if args.profile else None
        met_calls = met_agents = True
        try:
            with processes(tmp, redis_server.url, profile) as procs:
                settings = Settings(
                    cfn_state_dir=tmp / ".cfn",
                    cfn_agents_dir=tmp / "agents",
                    cfn_providers_file=tmp / "providers.json",
                    redis_url=redis_server.url,
                )
                console.print(
                    f"stand-in pid {procs.stand_in.pid}, gateway pid {procs.gateway.pid} "
                    f"({procs.gateway_url}), load before: {load()}"
                )
                if args.n:
                    calls = await run_calls(procs, settings, args.n, args.warmup)
                    met_calls = report_calls(calls, args.n, load())
                if args.rounds:
                    agents = await run_agents(
                        procs,
                        settings,
                        tmp,
                        redis_server.port,
                        args.rounds,
                        not args.no_cfn_agent,
                        args.issue_only,
                    )
                    met_agents = report_agents(agents, args.rounds, load())
        finally:
            redis_server.stop()
        if args.n:
            console.print(
                "target < 2 ms added at p50 (every call and first token): "
                + ("met" if met_calls else "MISSED")
            )
        if args.rounds:
            console.print(
                "target <= 1.2x wall time (under cfn vs claude -p alone): "
                + ("met" if met_agents else "MISSED")
            )
        if profile is not None and profile.exists():
            report_profile(profile, args.profile_top)
    return 0  # a missed target is reported, not a failure (docs/benchmarks.md)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench gateway")
    parser.add_argument("--n", type=int, default=500, help="calls per mode (0: skip)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="agent runs per mode (0: skip)")
    parser.add_argument(
        "--no-cfn-agent", action="store_true", help="only claude -p, not the whole cfn agent"
    )
    parser.add_argument(
        "--issue-only",
        action="store_true",
        help="only the issue's pair: claude -p alone and the agent as cfn spawns it",
    )
    parser.add_argument("--profile", help="run the gateway under cProfile, writing this file")
    parser.add_argument("--profile-top", type=int, default=30)
    args = parser.parse_args(argv)
    return asyncio.run(run(args))
