"""The claude-code backend on real parts: the Claude Code CLI bundled with
claude-agent-sdk, run against the local Anthropic Messages stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest

from cfn.agents.claude_code import (
    ClaudeRun,
    Final,
    Step,
    claude_argv,
    claude_env,
    find_claude,
    parse_stream_line,
    run_claude,
)
from cfn.agents.runtime import parse_final
from cfn.errors import AgentSpawnError, ConfigError, WaitTimeoutError
from cfn.system.proc import proc_alive, proc_descendants, proc_group_members, proc_stat_fields
from cfn.system.sandbox import Sandbox
from cfn.system.sandbox import usable as sandbox_usable
from tests.support.llm_servers import LLMServer, Recorded, Reply, anthropic_sse, auto_reply

TOKEN = "cfn-gw-token-1234567890"
MODEL = "routed-test-model"
#: What the agent process's own environment may hold: none of it may reach the CLI.
SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-real-secret-aaaa",
    "ANTHROPIC_AUTH_TOKEN": "real-auth-token-bbbb",
    "ANTHROPIC_BASE_URL": "https://api.anthropic.example",
    "CLAUDE_CODE_OAUTH_TOKEN": "oauth-secret-cccc",
    "CFN_LLM_TOKEN": "cfn-llm-secret-dddd",
    "CFN_MCP_TOKEN": "cfn-mcp-secret-eeee",
    "REDIS_PASSWORD": "redis-secret-ffff",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-gggg",
    "GOOGLE_APPLICATION_CREDENTIALS": "/secret/google-hhhh.json",
    "MOONSHOT_API_KEY": "moonshot-secret-iiii",
    "GITHUB_TOKEN": "gh-secret-jjjj",
    "REDIS_URL": "redis://agent:url-secret-kkkk@127.0.0.1:6379/0",
}
BUDGET = 60.0


@pytest.fixture
def binary() -> Path:
    return find_claude(None)


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server


def script(llm: LLMServer, replies: list[Reply]) -> None:
    """The main loop's turns (requests offering tools) get ``replies`` in order, then
    "done"; anything else the CLI asks on the side gets the stand-in's plain answer."""
    queue = list(replies)

    def route(request: Recorded) -> Reply:
        if request.body.get("tools") and request.body.get("stream"):
            return queue.pop(0) if queue else anthropic_sse(["done"])
        return auto_reply(request)

    llm.default = route


def tool(tid: str, name: str, arguments: dict[str, Any]) -> Reply:
    return anthropic_sse([""], tool_uses=[(tid, name, json.dumps(arguments))])


def make_run(
    binary: Path, llm: LLMServer, tmp_path: Path, home: Path | None = None, **overrides: Any
) -> ClaudeRun:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    home = home or tmp_path / "home"
    home.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "binary": binary,
        "workspace": workspace,
        "prompt": "Task T1: write hello.txt and check python works.",
        "system_prompt_append": "You are impl-1, an implementer in a CFN Loop team.",
        "model": MODEL,
        "allowed_tools": ("Read", "Write", "Edit", "Bash", "Glob", "Grep"),
        "gateway_url": llm.anthropic_url,
        "token": TOKEN,
        "config_dir": tmp_path / "claude-config",
        "mcp_config": None,
        "max_turns": 8,
        "base_env": {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "REDIS_URL": "redis://cfn:T:impl-1-1:acl-pass@127.0.0.1:6379/0",
            **SECRETS,
        },
    }
    values.update(overrides)
    return ClaudeRun(**values)


class Collector:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    async def __call__(self, step: Step) -> None:
        self.steps.append(step)


def group_gone(pgid: int) -> bool:
    """No live (non-zombie) process left in the group."""
    return not any(proc_alive(pid) for pid in proc_group_members(pgid))


async def wait_for_file(path: Path, limit: float = BUDGET) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


# --- the scripted run ------------------------------------------------------------------


@pytest.mark.skipif(not sandbox_usable("auto"), reason="bwrap does not work here")
async def test_the_cli_and_its_commands_run_in_the_sandbox(
    binary: Path, llm: LLMServer, tmp_path: Path
) -> None:
    """Under bwrap the CLI still works (the gateway over the network, its config
    directory, the workspace), while a command its Bash tool runs is uid 1000 and finds
    neither the state directory nor a file outside the workspace, even by a symlink."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "secret").write_text("state-dir-secret-value")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside-secret-value")
    config = tmp_path / "claude-config"
    config.mkdir(mode=0o700)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "link").symlink_to(outside)
    box = Sandbox(
        workspace,
        network=True,
        writable=(config,),
        readable=(binary.resolve().parent,),
        hidden=(state,),
    )
    run = make_run(binary, llm, tmp_path, sandbox=box)
    command = (
        f"id -u; cat {state}/secret; cat {outside}; cat link; ls {tmp_path}; "
        "echo made-inside > inside.txt; echo REDIS=${REDIS_URL:-none}"
    )
    script(
        llm,
        [
            tool("toolu_b", "Bash", {"command": command, "description": "probe"}),
            anthropic_sse(['Done.\n{"confidence": 0.8, "summary": "probed"}']),
        ],
    )
    steps = Collector()
    final = await run_claude(run, steps, timeout=BUDGET)
    assert not final.is_error and final.subtype == "success", final
    output = next(s.text for s in steps.steps if s.kind == "tool_result")
    assert output.splitlines()[0] == "1000", output
    assert "state-dir-secret-value" not in output and "outside-secret-value" not in output
    assert "No such file or directory" in output
    assert "REDIS=none" in output
    assert (workspace / "inside.txt").read_text() == "made-inside\n"
    # What the CLI kept for itself went to its config directory, through the bind.
    assert (config / ".claude.json").exists()



async def test_a_scripted_run_writes_runs_and_reports(
    binary: Path, llm: LLMServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    mcp = {
        "mcpServers": {
            "cfn": {
                "type": "http",
                "url": "http://127.0.0.1:9/mcp",
                "headers": {"Authorization": "Bearer mcp-token-in-file"},
            }
        }
    }
    run = make_run(binary, llm, tmp_path, home=home, mcp_config=mcp)
    target = run.workspace / "hello.txt"
    script(
        llm,
        [
            tool("toolu_w", "Write", {"file_path": str(target), "content": "hello from claude\n"}),
            tool(
                "toolu_b",
                "Bash",
                {"command": "python3 -c 'print(6*7)'; env", "description": "check python"},
            ),
            anthropic_sse(['All done.\n{"confidence": 0.9, "summary": "wrote hello.txt"}']),
        ],
    )
    steps = Collector()
    started = time.monotonic()
    final = await run_claude(run, steps, timeout=BUDGET)
    elapsed = time.monotonic() - started

    assert target.read_text() == "hello from claude\n"
    assert isinstance(final, Final)
    assert not final.is_error and final.subtype == "success"
    assert final.text.splitlines()[-1] == '{"confidence": 0.9, "summary": "wrote hello.txt"}'
    assert parse_final(final.text) == {"confidence": 0.9, "summary": "wrote hello.txt"}
    assert final.num_turns == 3 and final.duration_ms > 0 and final.usage

    kinds = [(s.kind, s.tool) for s in steps.steps if s.kind != "system"]
    assert ("tool_use", "Write") in kinds and ("tool_use", "Bash") in kinds
    write = next(s for s in steps.steps if s.tool == "Write")
    assert write.tool_id == "toolu_w" and write.arguments == {
        "file_path": str(target),
        "content": "hello from claude\n",
    }
    results = {s.tool_id: s for s in steps.steps if s.kind == "tool_result"}
    assert set(results) == {"toolu_w", "toolu_b"}
    assert not results["toolu_w"].is_error and not results["toolu_b"].is_error
    bash_output = results["toolu_b"].text
    assert bash_output.startswith("42")
    texts = [s.text for s in steps.steps if s.kind == "text"]
    assert texts[-1] == final.text

    init = next(s for s in steps.steps if s.kind == "system" and s.text == "init")
    assert init.arguments is not None and init.arguments["model"] == MODEL
    assert [m["name"] for m in init.arguments["mcp_servers"]] == ["cfn"]

    # What reached the stand-in: the gateway token, the model, no secret of the parent.
    assert llm.requests, "the CLI never called the gateway"
    for request in llm.requests:
        assert request.headers.get("x-api-key") == TOKEN
        assert "authorization" not in request.headers
        if request.path.startswith("/v1/messages"):
            assert request.body["model"] == MODEL
        sent = json.dumps(request.headers) + json.dumps(request.body)
        for value in SECRETS.values():
            assert value not in sent
    # ... nor the model's commands (the Bash tool hands them the CLI's environment).
    for value in SECRETS.values():
        assert value not in bash_output
    assert f"ANTHROPIC_BASE_URL={llm.anthropic_url}" in bash_output

    # Private files: the config dir is 0700, the MCP config (a token inside) 0600;
    # the CLI kept its state there, not in $HOME.
    assert stat.S_IMODE(run.config_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(run.mcp_file.stat().st_mode) == 0o600
    assert json.loads(run.mcp_file.read_text()) == mcp
    assert not (home / ".claude").exists() and not (home / ".claude.json").exists()
    assert (run.config_dir / ".claude.json").exists()
    assert elapsed < BUDGET


async def test_max_turns_ends_the_run_with_an_error_result(
    binary: Path, llm: LLMServer, tmp_path: Path
) -> None:
    run = make_run(binary, llm, tmp_path, max_turns=1)
    script(llm, [tool(f"toolu_{n}", "Bash", {"command": "true"}) for n in range(5)])
    final = await run_claude(run, Collector(), timeout=BUDGET)
    assert final.is_error and final.subtype == "error_max_turns"


# --- stopping: timeout, cancellation, a CLI that dies ----------------------------------


def sleeper(llm: LLMServer) -> None:
    """The model starts a command that would run for 5 minutes, writing its pid,
    its process group and the CLI's pid first."""
    command = "echo $$ $(ps -o pgid= $$) $PPID > pids.txt; exec sleep 300"
    script(llm, [tool("toolu_s", "Bash", {"command": command, "description": "wait"})])


def host_pids(pids_text: str, ancestor: int) -> str:
    """The sleeper's pids as the host sees them: a sandboxed CLI (cfn.system.sandbox)
    runs in a PID namespace of its own, where ``$$`` and ``$PPID`` are that namespace's.
    Mapped through the ``NSpid`` lines of the agent's descendants, while they live."""
    mapping: dict[int, int] = {}
    for pid in proc_descendants(ancestor):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                fields = line.split()
                if fields[:1] == ["NSpid:"] and len(fields) > 2:
                    mapping[int(fields[-1])] = pid
    if not mapping:
        return pids_text  # not sandboxed: the host's own pids already
    sleep_pid, _pgid, cli_pid = (int(x) for x in pids_text.split())
    host_sleep = mapping[sleep_pid]
    return f"{host_sleep} {proc_stat_fields(host_sleep, 5)[0]} {mapping[cli_pid]}"


def assert_all_gone(pids_text: str) -> None:
    sleep_pid, sleep_pgid, cli_pid = (int(x) for x in pids_text.split())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (
        group_gone(sleep_pgid) and group_gone(cli_pid) and not proc_alive(sleep_pid)
    ):
        time.sleep(0.05)
    assert not proc_alive(sleep_pid), "the tool's command survived"
    assert group_gone(sleep_pgid), "a process of the tool's group survived"
    assert group_gone(cli_pid), "a process of the CLI's group survived"
    with pytest.raises(ProcessLookupError):
        os.killpg(cli_pid, 0)


async def test_a_timeout_stops_the_cli_and_what_it_started(
    binary: Path, llm: LLMServer, tmp_path: Path
) -> None:
    run = make_run(binary, llm, tmp_path)
    sleeper(llm)
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError, match="did not finish within 8 s"):
        await run_claude(run, Collector(), timeout=8)
    assert time.monotonic() - started < 8 + 8
    pids = run.workspace / "pids.txt"
    assert pids.exists(), "the command had not started within the timeout (machine too slow?)"
    assert_all_gone(pids.read_text())


async def test_cancelling_stops_the_cli_and_what_it_started(
    binary: Path, llm: LLMServer, tmp_path: Path
) -> None:
    run = make_run(binary, llm, tmp_path)
    sleeper(llm)
    task = asyncio.create_task(run_claude(run, Collector(), timeout=BUDGET * 5))
    pids = await wait_for_file(run.workspace / "pids.txt")
    sleep_pid = int(pids.split()[0])
    assert proc_alive(sleep_pid)
    # The command runs in a session of its own: not in the CLI's process group.
    found = proc_stat_fields(sleep_pid, 6)
    assert found is not None and found[0] != int(pids.split()[2])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_all_gone(pids)


async def test_a_cli_ignoring_sigterm_is_killed_with_its_detached_children(
    llm: LLMServer, tmp_path: Path
) -> None:
    fake = tmp_path / "claude"
    fake.write_text(
        "#!/bin/sh\n"
        "trap '' TERM\n"
        "setsid sh -c 'echo $$ > \"$CLAUDE_CONFIG_DIR/detached.pid\"; exec sleep 300' &\n"
        'echo \'{"type":"system","subtype":"init","model":"m"}\'\n'
        "sleep 300\n"
    )
    fake.chmod(0o755)
    run = make_run(fake, llm, tmp_path)
    with pytest.raises(WaitTimeoutError):
        await run_claude(run, Collector(), timeout=1)
    detached = int((run.config_dir / "detached.pid").read_text())
    deadline = time.monotonic() + 5
    while proc_alive(detached) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not proc_alive(detached), "a child in a session of its own survived"
    assert group_gone(detached)


async def test_a_cli_that_dies_without_a_result_is_an_error_without_the_token(
    llm: LLMServer, tmp_path: Path
) -> None:
    fake = tmp_path / "claude"
    fake.write_text(
        "#!/bin/sh\n"
        'echo \'{"type":"system","subtype":"init","model":"m"}\'\n'
        'echo "boom: key was $ANTHROPIC_API_KEY" >&2\n'
        "exit 3\n"
    )
    fake.chmod(0o755)
    run = make_run(fake, llm, tmp_path)
    steps = Collector()
    with pytest.raises(AgentSpawnError) as caught:
        await run_claude(run, steps, timeout=BUDGET)
    message = str(caught.value)
    assert "status 3" in message and "boom: key was [redacted]" in message
    assert TOKEN not in message
    assert [s.text for s in steps.steps] == ["init"]


async def test_the_prompt_goes_on_stdin_and_the_token_only_to_the_environment(
    llm: LLMServer, tmp_path: Path
) -> None:
    fake = tmp_path / "claude"
    fake.write_text(
        "#!/bin/sh\n"
        'cat > "$CLAUDE_CONFIG_DIR/stdin.seen"\n'
        'printf "%s\\n" "$@" > "$CLAUDE_CONFIG_DIR/argv.seen"\n'
        'pwd > "$CLAUDE_CONFIG_DIR/cwd.seen"\n'
        'echo \'{"type":"result","subtype":"success","is_error":false,"num_turns":1,'
        '"duration_ms":5,"result":"fine","usage":{},"total_cost_usd":0}\'\n'
    )
    fake.chmod(0o755)
    prompt = "line one\n" + "x" * 200_000  # over one argv string's 128 KiB limit
    run = make_run(fake, llm, tmp_path, prompt=prompt)
    final = await run_claude(run, Collector(), timeout=BUDGET)
    assert final.text == "fine" and not final.is_error and final.cost == 0
    assert (run.config_dir / "stdin.seen").read_text() == prompt
    argv = (run.config_dir / "argv.seen").read_text()
    assert TOKEN not in argv and "line one" not in argv
    assert (run.config_dir / "cwd.seen").read_text().strip() == str(run.workspace.resolve())


# --- argv, environment, the binary ------------------------------------------------------


def test_argv_flags(tmp_path: Path) -> None:
    run = ClaudeRun(
        binary=Path("/opt/claude"),
        workspace=tmp_path,
        prompt="THE BRIEF",
        system_prompt_append="ROLE",
        model="m1",
        allowed_tools=("Read", "Bash(git *)", "mcp__cfn"),
        gateway_url="http://127.0.0.1:1",
        token=TOKEN,
        config_dir=tmp_path / "cfg",
        mcp_config={"cfn": {"type": "http", "url": "http://127.0.0.1:2/mcp"}},
        max_turns=7,
        base_env={},
    )
    argv = claude_argv(run)
    assert argv[:2] == ["/opt/claude", "-p"]
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--output-format"] == "stream-json" and "--verbose" in argv
    assert pairs["--permission-mode"] == "acceptEdits"
    assert pairs["--model"] == "m1" and pairs["--append-system-prompt"] == "ROLE"
    assert pairs["--allowedTools"] == "Read,Bash(git *),mcp__cfn"
    assert pairs["--max-turns"] == "7"
    assert pairs["--disallowedTools"] == "WebFetch,WebSearch"
    assert pairs["--mcp-config"] == str(tmp_path / "cfg" / "mcp.json")
    assert argv[-1] == "--strict-mcp-config"
    assert "THE BRIEF" not in argv and TOKEN not in " ".join(argv)
    assert TOKEN not in repr(run)
    no_mcp = claude_argv(
        ClaudeRun(**{**run.__dict__, "mcp_config": None, "allowed_tools": ("WebFetch",)})
    )
    assert "--mcp-config" not in no_mcp and "--strict-mcp-config" not in no_mcp
    assert dict(itertools.pairwise(no_mcp))["--disallowedTools"] == "WebSearch"


def test_environment_drops_secrets_and_points_at_the_gateway(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/a", "LANG": "C.UTF-8", "CLAUDECODE": "1"}
    base |= SECRETS | {"AGENT_ID": "impl-1", "CLAUDE_CODE_USE_BEDROCK": "1"}
    base |= {"CFN_STATE_DIR": "/state", "REDIS_URL": "redis://u:acl@h:1", "REDISCLI_AUTH": "acl"}
    base |= {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "8000", "PGPASSWORD": "pg-secret"}
    run = ClaudeRun(
        binary=Path("/opt/claude"),
        workspace=tmp_path,
        prompt="p",
        system_prompt_append="s",
        model="m1",
        allowed_tools=("Read",),
        gateway_url="http://127.0.0.1:5/gw",
        token=TOKEN,
        config_dir=tmp_path / "cfg",
        mcp_config=None,
        max_turns=3,
        base_env=base,
    )
    env = claude_env(run)
    for value in [*SECRETS.values(), "pg-secret"]:
        assert value not in env.values()
    assert "CLAUDE_CODE_USE_BEDROCK" not in env and "CLAUDECODE" not in env
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:5/gw"
    assert env["ANTHROPIC_API_KEY"] == TOKEN
    assert [k for k in env if k.startswith("ANTHROPIC_") and env[k] == TOKEN] == [
        "ANTHROPIC_API_KEY"
    ]
    assert env["CLAUDE_CONFIG_DIR"] == str(tmp_path / "cfg")
    assert env["HOME"] == "/home/a" and env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8"
    assert env["AGENT_ID"] == "impl-1" and env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "8000"
    # No coordination credential nor cfn's own settings for the model's commands.
    assert not {"CFN_STATE_DIR", "REDIS_URL", "REDISCLI_AUTH"} & set(env)
    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL"):
        assert env[name] == "m1"
    for name in (
        "DISABLE_TELEMETRY",
        "DISABLE_AUTOUPDATER",
        "DISABLE_ERROR_REPORTING",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    ):
        assert env[name] == "1"


def _without_sdk(real: Callable[..., ModuleSpec | None]) -> Callable[..., ModuleSpec | None]:
    def find_spec(name: str, *args: Any) -> ModuleSpec | None:
        return None if name == "claude_agent_sdk" else real(name, *args)

    return find_spec


def test_finding_the_binary(binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert binary.is_file() and os.access(binary, os.X_OK)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    # Nothing on PATH: the bundled one.
    assert find_claude(None).name == "claude"
    assert "_bundled" in str(find_claude(None))
    # On PATH: that one, before the bundled one.
    mine = bin_dir / "claude"
    mine.write_text("#!/bin/sh\n")
    mine.chmod(0o755)
    assert find_claude(None) == mine.resolve()
    # Configured: as a path, or a command name on PATH.
    assert find_claude(str(binary)) == binary.resolve()
    assert find_claude("claude") == mine.resolve()
    with pytest.raises(ConfigError, match="CFN_CLAUDE_BIN='/nowhere/claude'"):
        find_claude("/nowhere/claude")
    with pytest.raises(ConfigError, match=r"'no-such-claude'.*PATH"):
        find_claude("no-such-claude")


def test_a_missing_binary_names_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", _without_sdk(importlib.util.find_spec))
    with pytest.raises(ConfigError) as caught:
        find_claude(None)
    message = str(caught.value)
    assert "CFN_CLAUDE_BIN" in message and "`claude` on PATH" in message
    assert "claude-agent-sdk" in message


# --- parsing the stream -----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "not json",
        "[SandboxDebug] something",
        "{truncated",
        "[1, 2]",
        '"a string"',
        '{"type": "stream_event", "event": {}}',
        '{"type": "rate_limit_event"}',
        '{"no_type": true}',
        "{" * 5000,
    ],
)
def test_garbage_parses_to_none(line: str) -> None:
    assert parse_stream_line(line) is None


def test_odd_messages_never_raise() -> None:
    for line in (
        '{"type": "assistant"}',
        '{"type": "assistant", "message": "x"}',
        '{"type": "assistant", "message": {"content": [1, null, {"type": "image"}]}}',
        '{"type": "user", "message": {"content": [{"type": "tool_result", "content": 5}]}}',
    ):
        assert isinstance(parse_stream_line(line), list)
    final = parse_stream_line('{"type": "result"}')
    assert isinstance(final, Final) and final.is_error and final.text == ""


def test_stream_shapes() -> None:
    assistant = {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "/a"}},
            ]
        },
    }
    assert parse_stream_line(json.dumps(assistant)) == [
        Step("text", "Let me look."),
        Step("tool_use", tool="Read", tool_id="t1", arguments={"file_path": "/a"}),
    ]
    user = {
        "type": "user",
        "message": {
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "a"}, {"type": "image"}],
                },
                {"type": "tool_result", "tool_use_id": "t2", "content": "no", "is_error": True},
            ]
        },
    }
    assert parse_stream_line(json.dumps(user)) == [
        Step("tool_result", "a\n[image]", tool_id="t1"),
        Step("tool_result", "no", tool_id="t2", is_error=True),
    ]
    failed = {
        "type": "assistant",
        "error": "authentication_failed",
        "message": {"content": [{"type": "text", "text": "Invalid API key"}]},
    }
    assert parse_stream_line(json.dumps(failed)) == [
        Step("error", "authentication_failed: Invalid API key", is_error=True)
    ]
    result = {
        "type": "result",
        "subtype": "error_max_turns",
        "is_error": False,
        "num_turns": 4,
        "duration_ms": 1200,
        "usage": {"input_tokens": 3},
        "total_cost_usd": 0.5,
        "errors": ["Reached maximum number of turns (3)"],
        "session_id": "s1",
    }
    final = parse_stream_line(json.dumps(result))
    assert final == Final(
        text="",
        is_error=True,
        subtype="error_max_turns",
        num_turns=4,
        duration_ms=1200,
        usage={"input_tokens": 3},
        cost=0.5,
        errors=("Reached maximum number of turns (3)",),
        session_id="s1",
    )


# --- under cfn's supervisor: a stop reaches the CLI's commands without cgroups -----------


async def test_a_supervisor_stop_ends_a_claude_code_agent_in_order(
    binary: Path, llm: LLMServer, tmp_path: Path
) -> None:
    """The agent process turns its supervisor's SIGTERM into a cancellation: the CLI and
    its Bash command (a session of its own) are stopped, the agent's lock released at
    once (not left to its TTL), and the process still ends by SIGTERM, as recorded."""
    import redis as redis_sync

    from cfn import keys
    from cfn.agents.context import generate_cli_context
    from cfn.agents.spawn.process import ProcessSpawner
    from cfn.coordination import acl
    from cfn.settings import Settings
    from tests.support.servers import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        settings = Settings(
            cfn_state_dir=tmp_path / ".cfn",
            cfn_agents_dir=tmp_path / "agents",
            cfn_agent_cgroups="off",
            cfn_agent_kill_grace=10.0,
        )
        (tmp_path / "agents").mkdir()
        workspace = tmp_path / "workspace"
        workspace.mkdir()
        context = generate_cli_context(
            "ccstop",
            "impl-1-1",
            settings=settings,
            redis_host="127.0.0.1",
            redis_port=server.port,
            workspace=workspace,
            backend="claude-code",
            model=MODEL,
            timeout=120,
        )
        sleeper(llm)
        spawner = ProcessSpawner(settings, redis_url=server.url)
        handle = await spawner.spawn(
            context,
            env={
                "CFN_LLM_GATEWAY_URL": llm.anthropic_url,
                "CFN_LLM_TOKEN": TOKEN,
                "CFN_CLAUDE_BIN": str(binary),
                "HOME": str(tmp_path),
            },
        )
        pids = host_pids(await wait_for_file(workspace / "pids.txt"), handle.pid)
        lock = keys.lock(acl.lock_resource("ccstop", "impl-1-1"))
        client = redis_sync.Redis.from_url(server.url)
        assert client.exists(lock)
        await handle.stop()
        info = await handle.wait()
        assert info.signal == 15 and info.status == "killed", info
        assert not client.exists(lock), "the lock was left to expire"
        client.close()
        assert_all_gone(pids)
    finally:
        server.stop()
