"""A CFN Loop whose agents are real Claude Code processes, every LLM call through
cfn's LLM gateway: redis-server, SQLite, the agent server, the bundled CLI, and
the LLM stand-in playing a coding model (tests/support/coding_model.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfn.loop.app import run_loop
from cfn.providers.gateway.server import stop_gateway
from cfn.settings import Settings
from cfn.store.repository import Store
from tests.conftest import CFN
from tests.loop.conftest import options
from tests.support.coding_model import coding_model
from tests.support.llm_servers import LLMServer, Recorded, Reply, anthropic_sse

SECRET = "zai-secret-key-0b7e6d"


@pytest.fixture
def model() -> Iterator[LLMServer]:
    with LLMServer() as server:
        server.default = coding_model
        yield server


@pytest.fixture
def claude_settings(
    loop_settings: Settings, model: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    env = {
        "ZAI_API_STYLE": "anthropic",
        "ZAI_ANTHROPIC_BASE_URL": model.anthropic_url,
        "ZAI_BASE_URL": model.openai_url,
        "KIMI_BASE_URL": model.openai_url,
        "ZAI_API_KEY": SECRET,
        "DEFAULT_PROVIDER": "zai",
        "CFN_PROVIDERS_FILE": str(Path(loop_settings.state_dir).parent / "providers.json"),
    }
    Path(env["CFN_PROVIDERS_FILE"]).write_text("{}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    yield settings
    stop_gateway(settings)


def _secret_free(root: Path) -> list[str]:
    """Files under ``root`` that hold the provider key."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if SECRET.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


async def test_claude_code_team_writes_tests_and_reports_through_the_gateway(
    tmp_path: Path, claude_settings: Settings, model: LLMServer
) -> None:
    # The project's Claude Code subagent file for the implementers' role, unchanged
    # (tiers and tool lists as Claude Code writes them): its instructions reach the CLI.
    (tmp_path / "agents" / "coder.md").write_text(
        "---\nname: coder\ndescription: Writes code and runs its tests.\n"
        "tools: Read, Write, Edit, Bash\nmodel: sonnet\ncolor: blue\n---\n"
        "You are the coder. Marker: SUBAGENT-CODER-4711.\n"
    )
    opts = options(tmp_path, implementers=1, validators=1, backend="claude-code")
    outcome = await run_loop(claude_settings, options=opts)
    assert outcome.status == "succeeded" and outcome.decision == "PROCEED", outcome
    marked = [r for r in model.requests if "SUBAGENT-CODER-4711" in json.dumps(r.body)]
    assert marked, "the subagent file's instructions never reached the model"
    assert all(r.body.get("model") != "sonnet" for r in model.requests)
    workspace = Path(opts.workspace)
    assert "FizzBuzz" in (workspace / "fizzbuzz.py").read_text()
    with Store.open(claude_settings) as store:
        agents = {a.agent_id: a for a in store.list_agents("t1")}
        assert agents["impl-1-1"].status == "done" and agents["impl-1-1"].confidence == 0.92
        assert agents["val-1-1"].confidence == 0.9
        events = store.events("t1")
        steps = [json.loads(e.payload) for e in events if e.kind == "agent:step"]
        impl = [s for s in steps if s["agentId"] == "impl-1-1"]
        tools = [s.get("tool") for s in impl if s["kind"] == "tool_use"]
        assert tools[:2] == ["Write", "Bash"], impl
        results = [s for s in impl if s["kind"] == "tool_result"]
        assert any("checks pass" in s["text"] for s in results), results
        # The files it changed, by any tool: Write's fizzbuzz.py and Bash's check.log
        # (no tool argument names it), caches left out.
        changed = [s for s in impl if s["kind"] == "system" and "files changed" in s["text"]]
        assert len(changed) == 1, impl
        assert json.loads(changed[0]["args"])["files"] == ["check.log", "fizzbuzz.py"]
        assert any(s["agentId"] == "val-1-1" and s.get("tool") == "Read" for s in steps)
        updates = [json.loads(e.payload) for e in events if e.kind == "agent:update"]
        assert {u.get("backend") for u in updates if u.get("status") == "running"} == {
            "claude-code"
        }
        calls = store.llm_calls("t1")
        assert {c.agent_id for c in calls} >= {"impl-1-1", "val-1-1"}
        assert all(c.via == "gateway" and c.provider == "zai" for c in calls)
        assert any(e.kind == "llm:call" for e in events)
        # The key: never in what a command saw (the Bash step ran `env`), nor in any
        # file of the task: workspaces, agent logs, contexts, Claude Code's config dirs.
        assert all(SECRET not in s.get("text", "") + s.get("args", "") for s in steps)
        assert "CFN_LLM_TOKEN" not in "".join(s.get("text", "") for s in results)
    # `cfn logs impl-1-1` (its agent.log) has the same transcript, a line per step.
    log = claude_settings.state_dir / "tasks" / "t1" / "agents" / "impl-1-1" / "agent.log"
    assert "[tool_use] Write" in log.read_text() and "[tool_use] Bash" in log.read_text()
    shown = subprocess.run(
        [*CFN, "logs", "impl-1-1", "--task-id", "t1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert shown.returncode == 0, shown.stderr
    for line in ("[tool_use] Write", "[tool_use] Bash", "[tool_result]", "[text]"):
        assert line in shown.stdout, (line, shown.stdout[-2000:])
    assert SECRET not in shown.stdout
    assert _secret_free(workspace) == []
    assert _secret_free(claude_settings.state_dir / "tasks") == []
    # Every upstream call carried the key, and only the gateway sent them.
    assert model.requests and all(
        r.headers.get("authorization") == f"Bearer {SECRET}" for r in model.requests
    )


async def test_a_claude_code_reply_without_a_confidence_is_recorded_failed(
    tmp_path: Path, claude_settings: Settings, model: LLMServer
) -> None:
    def no_confidence(request: Recorded) -> Reply:
        reply = coding_model(request)
        if reply.events is not None:  # the final turn's text, minus its JSON line
            reply.events = [
                (name, data.replace('\\n{\\"confidence\\": 0.92', "\\n(no figure)"))
                for name, data in reply.events
            ]
        return reply

    model.default = no_confidence
    opts = options(tmp_path, implementers=1, validators=1, backend="claude-code", max_iterations=1)
    outcome = await run_loop(claude_settings, options=opts)
    assert outcome.status == "failed"
    with Store.open(claude_settings) as store:
        impl = {a.agent_id: a for a in store.list_agents("t1")}["impl-1-1"]
    assert impl.status == "failed" and impl.confidence is None
    assert "no JSON line with a confidence" in (impl.reason or "")


async def test_a_task_budget_stops_a_claude_code_agent_and_it_is_recorded_failed(
    tmp_path: Path,
    claude_settings: Settings,
    model: LLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The budget as the loop meets it: the gateway cfn starts for the task has
    CFN_TASK_BUDGET_USD, the implementer's Claude Code run is cut mid-stream, and
    its agent process reports the failure (the reason names the budget)."""
    monkeypatch.setenv("CFN_TASK_BUDGET_USD", "0.05")
    settings = Settings()

    def chatty(request: Recorded) -> Reply:
        if request.body.get("tools"):  # the main loop's turn: a long, expensive reply
            return anthropic_sse(["thinking about fizzbuzz " * 20] * 400, usage=(20_000, 20_000))
        return coding_model(request)

    model.default = chatty
    try:
        opts = options(
            tmp_path, implementers=1, validators=1, backend="claude-code", max_iterations=1
        )
        outcome = await run_loop(settings, options=opts)
    finally:
        stop_gateway(settings)
    assert outcome.status == "failed", outcome
    assert not (Path(opts.workspace) / "fizzbuzz.py").exists()
    with Store.open(settings) as store:
        impl = {a.agent_id: a for a in store.list_agents("t1")}["impl-1-1"]
        calls = store.llm_calls("t1")
        spent = store.llm_usage("t1").cost_usd
    assert impl.status == "failed" and "budget" in (impl.reason or "").lower(), impl
    assert any(c.status == "budget_stopped" and c.agent_id == "impl-1-1" for c in calls)
    assert spent < 0.05 * 1.5  # stopped near the budget, not after the whole reply


async def test_claude_code_agents_on_an_openai_format_provider_in_a_real_loop(
    tmp_path: Path,
    claude_settings: Settings,
    model: LLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same team with the routed provider speaking OpenAI Chat Completions: the
    gateway translates each Claude Code request (tools, streaming) and its reply."""
    monkeypatch.setenv("ZAI_API_STYLE", "openai")
    settings = Settings()
    try:
        opts = options(tmp_path, implementers=1, validators=1, backend="claude-code")
        outcome = await run_loop(settings, options=opts)
    finally:
        stop_gateway(settings)
    assert outcome.status == "succeeded" and outcome.decision == "PROCEED", outcome
    assert "FizzBuzz" in (Path(opts.workspace) / "fizzbuzz.py").read_text()
    upstream = {r.path for r in model.requests}
    assert upstream == {"/v1/chat/completions"}, upstream  # nothing spoke Anthropic upstream
    with Store.open(settings) as store:
        calls = store.llm_calls("t1")
    assert calls and all(c.provider == "zai" and c.via == "gateway" for c in calls)
