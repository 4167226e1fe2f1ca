"""The ``claude-code`` agent backend: the real Claude Code CLI as a child process.

cfn's agent process runs ``claude -p`` in the agent's workspace, pointed at
cfn's LLM gateway (``ANTHROPIC_BASE_URL``, the agent's gateway token as
``ANTHROPIC_API_KEY``), reads its ``--output-format stream-json`` lines, and
turns them into ``Step`` records (what the agent did) and one ``Final`` (the
``result`` line). Confidence parsing of ``Final.text`` is the caller's job
(``cfn.agents.runtime.parse_final``); this module does not import the runtime.

Decisions, found against Claude Code 2.1.x:

- The brief goes on **stdin** (a 0600 file in the private config directory),
  never in argv: one argv string is capped at 128 KiB on Linux, and argv is
  readable by every user through ``/proc/<pid>/cmdline``. ``-p`` without a
  positional prompt reads the prompt from stdin. The appended system prompt
  (role instructions: short) stays an argument.
- The token goes only to the environment (``ANTHROPIC_API_KEY``, sent as
  ``x-api-key``); the parent's other secrets are removed first. The CLI passes
  its whole environment to the commands its Bash tool runs, so what is left
  there is visible to the model: hence the scrubbing.
- ``HOME`` is kept (git, pip and the project's tools need it);
  ``CLAUDE_CONFIG_DIR`` (settings, ``.claude.json``, sessions, shell snapshots)
  is a private per-agent directory, so the CLI never reads or writes ``~/.claude``.
- MCP tools are not deferred (``ENABLE_TOOL_SEARCH=false``): Claude Code 2.1 hides
  them behind its ToolSearch tool by default, which a model routed through a format
  translation cannot use; cfn's skill routing keeps the list short anyway.
- The Bash tool starts each command in a session of its own (``setsid``), so
  killing the CLI's process group alone would orphan them: a stop kills the
  group, then every process that descended from the CLI (and their groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cfn.errors import AgentSpawnError, ConfigError, WaitTimeoutError
from cfn.system.proc import (
    identities,
    proc_descendants,
    signal_pid,
    signal_tree,
    still_alive,
)
from cfn.system.sandbox import Sandbox, scrubbed

__all__ = [
    "ClaudeRun",
    "Final",
    "Step",
    "claude_argv",
    "claude_env",
    "find_claude",
    "parse_stream_line",
    "run_claude",
]

#: How long the CLI gets to stop its tools after SIGTERM before everything is SIGKILLed.
TERM_GRACE = 3.0
#: Longest stream-json line kept (a tool result can be large); longer ones are skipped.
MAX_LINE = 32 * 1024 * 1024
#: How much of the CLI's stderr goes into an error message.
STDERR_TAIL = 2000
#: Built-in tools that reach the internet; removed unless ``allowed_tools`` names them.
NETWORK_TOOLS = ("WebFetch", "WebSearch")

StepKind = Literal["text", "tool_use", "tool_result", "error", "system"]


# --- the binary ------------------------------------------------------------------------


def _bundled_claude() -> tuple[Path | None, str]:
    """The CLI shipped in the claude-agent-sdk wheel, found without importing the SDK."""
    try:
        spec = importlib.util.find_spec("claude_agent_sdk")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, "the claude-agent-sdk package (not installed)"
    package = Path(next(iter(spec.submodule_search_locations)))
    candidate = package / "_bundled" / "claude"
    return candidate, str(candidate)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_claude(configured: str | None) -> Path:
    """The Claude Code CLI to run.

    ``configured`` (CFN_CLAUDE_BIN: a path, or a command name looked up on PATH)
    when given, and then nothing else; otherwise ``claude`` on PATH, otherwise the
    CLI bundled with claude-agent-sdk. Missing everywhere: a ConfigError naming
    every place looked at.
    """
    if configured:
        if os.sep in configured:
            path = Path(configured).expanduser()
            if _executable(path):
                return path.resolve()
        else:
            found = shutil.which(configured)
            if found:
                return Path(found).resolve()
        raise ConfigError(
            f"CFN_CLAUDE_BIN={configured!r}: no executable Claude Code CLI there "
            f"(looked {'at that path' if os.sep in configured else 'for it on PATH'}). "
            "Point CFN_CLAUDE_BIN at the claude binary, or unset it to use `claude` on PATH "
            "or the one bundled with claude-agent-sdk."
        )
    looked = ["CFN_CLAUDE_BIN (not set)"]
    found = shutil.which("claude")
    if found:
        return Path(found).resolve()
    looked.append("`claude` on PATH")
    bundled, where = _bundled_claude()
    if bundled is not None and _executable(bundled):
        return bundled
    looked.append(where)
    raise ConfigError(
        "The Claude Code CLI was not found. Looked in: "
        + "; ".join(looked)
        + ". Install it (`pip install claude-agent-sdk` bundles one) or set CFN_CLAUDE_BIN."
    )


# --- one run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaudeRun:
    """Everything one CLI run needs. ``token`` never goes to argv, only to the env."""

    binary: Path
    workspace: Path
    #: cfn's brief (the user turn); passed on stdin.
    prompt: str
    #: Role instructions added to Claude Code's own system prompt.
    system_prompt_append: str
    model: str
    allowed_tools: tuple[str, ...]
    gateway_url: str
    token: str = field(repr=False)
    #: Private per agent: created 0700, holds the CLI's settings, sessions and our files.
    config_dir: Path
    #: ``{"mcpServers": {...}}`` (or just the servers mapping); written 0600 to config_dir.
    mcp_config: dict[str, Any] | None
    max_turns: int
    #: The environment to start from (secrets in it are dropped, see claude_env).
    base_env: Mapping[str, str] = field(repr=False)
    #: Where the CLI and every command its tools run are confined (None: not at all).
    sandbox: Sandbox | None = None

    @property
    def prompt_file(self) -> Path:
        return self.config_dir / "prompt.txt"

    @property
    def mcp_file(self) -> Path:
        return self.config_dir / "mcp.json"

    @property
    def stderr_file(self) -> Path:
        return self.config_dir / "claude.stderr"


def claude_argv(run: ClaudeRun) -> list[str]:
    """The CLI's argv. The prompt is not in it: it goes on stdin (see the module doc).

    Pure: the files named here (``--mcp-config``) are written by ``prepare``.
    """
    argv = [
        str(run.binary),
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
        "--model",
        run.model,
        "--append-system-prompt",
        run.system_prompt_append,
        "--allowedTools",
        ",".join(run.allowed_tools),
        "--max-turns",
        str(run.max_turns),
    ]
    allowed = {tool.split("(", 1)[0] for tool in run.allowed_tools}
    denied = [tool for tool in NETWORK_TOOLS if tool not in allowed]
    if denied:
        argv += ["--disallowedTools", ",".join(denied)]
    if run.mcp_config is not None:
        argv += ["--mcp-config", str(run.mcp_file), "--strict-mcp-config"]
    return argv


#: Variable names that hold a secret or would send the CLI's traffic (or credentials)
#: elsewhere: never inherited by the CLI, whose Bash tool hands its env to the model.
_SECRET_NAME = re.compile(
    r"""(
        _KEY$ | _AUTH_TOKEN$ | (^|_)TOKEN$ | SECRET | PASSWORD | PASSWD | (^|_)AUTH$
      | (^|_)CREDENTIALS?($|_) | _PRIVATE_KEY$ | _ACCESS_KEY($|_)
      | ^ANTHROPIC_ | ^CLAUDE_CODE_OAUTH | ^CLAUDE_CODE_USE_ | ^CLAUDECODE$
      | ^AWS_ | ^GOOGLE_ | ^GCLOUD_ | ^CLOUDSDK_ | ^AZURE_ | ^VERTEX_ | ^BEDROCK_
      | ^CFN_LLM_ | ^CFN_MCP_TOKEN$ | ^MCP_AUTH_TOKEN$ | ^REDIS_PASSWORD$ | ^REDISCLI_AUTH$
    )""",
    re.VERBOSE | re.IGNORECASE,
)
#: A URL with credentials in it (``redis://user:password@host``).
_URL_WITH_PASSWORD = re.compile(r"://[^/\s@]*:[^/\s@]*@")


def _is_secret(name: str, value: str) -> bool:
    return bool(_SECRET_NAME.search(name) or _URL_WITH_PASSWORD.search(value))


def claude_env(run: ClaudeRun) -> dict[str, str]:
    """``run.base_env`` without its secrets, plus what points the CLI at the gateway
    and keeps it from calling anywhere else (telemetry, updates, error reports)."""
    env = {
        name: value
        for name, value in scrubbed(run.base_env).items()
        if not _is_secret(name, value)
    }
    env.update(
        {
            "ANTHROPIC_BASE_URL": run.gateway_url,
            "ANTHROPIC_API_KEY": run.token,
            "CLAUDE_CONFIG_DIR": str(run.config_dir),
            # Every alias and background call (titles, summaries, subagents) on the
            # one model the gateway routes for this agent.
            "ANTHROPIC_MODEL": run.model,
            "ANTHROPIC_SMALL_FAST_MODEL": run.model,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": run.model,
            "ANTHROPIC_DEFAULT_SONNET_MODEL": run.model,
            "ANTHROPIC_DEFAULT_OPUS_MODEL": run.model,
            "CLAUDE_CODE_SUBAGENT_MODEL": run.model,
            # Nothing but the gateway: no telemetry, updates, error reports,
            # feature flags, marketplace installs, session-title side calls.
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
            "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
            "DO_NOT_TRACK": "1",
            # cfn's MCP tools in the tool list itself, not deferred behind ToolSearch:
            # the routed model may not be Claude (tool_reference blocks mean nothing
            # after a translation to another format), and skill routing already keeps
            # the list to the agent's own servers.
            "ENABLE_TOOL_SEARCH": "false",
        }
    )
    env.setdefault("PATH", os.defpath)
    env["PWD"] = str(run.workspace)
    return env


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT


def prepare(run: ClaudeRun) -> None:
    """Create the private config directory and the files claude_argv names."""
    run.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(run.config_dir, 0o700)
    _write_private(run.prompt_file, run.prompt)
    if run.mcp_config is not None:
        config = (
            run.mcp_config if "mcpServers" in run.mcp_config else {"mcpServers": run.mcp_config}
        )
        _write_private(run.mcp_file, json.dumps(config))


# --- the stream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing the agent did or saw, from one content block of a stream-json line."""

    kind: StepKind
    text: str = ""
    tool: str | None = None
    tool_id: str | None = None
    arguments: dict[str, Any] | None = None
    is_error: bool = False


@dataclass(frozen=True)
class Final:
    """The ``result`` line: the model's final reply and the run's figures."""

    text: str
    is_error: bool
    subtype: str
    num_turns: int
    duration_ms: int
    usage: dict[str, Any]
    #: The CLI's own estimate at Anthropic's prices: meaningless behind a gateway.
    cost: float | None
    #: Why the run failed, for the ``error_*`` subtypes (which carry no ``result``).
    errors: tuple[str, ...] = ()
    session_id: str | None = None


#: The ``system/init`` keys worth keeping in its Step (the line lists every skill too).
_INIT_KEYS = ("model", "tools", "mcp_servers", "permissionMode", "claude_code_version", "cwd")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _block_text(content: Any) -> str:
    """A tool_result's content: a string or a list of blocks (text, image...)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if isinstance(block, dict):
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                parts.append(f"[{block.get('type', 'block')}]")
    return "\n".join(parts)


def _message_steps(data: dict[str, Any]) -> list[Step]:
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    steps: list[Step] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            if data["type"] == "assistant" and block["text"]:
                steps.append(Step("text", block["text"]))
        elif kind == "tool_use":
            arguments = block.get("input")
            steps.append(
                Step(
                    "tool_use",
                    tool=str(block.get("name", "")),
                    tool_id=str(block.get("id", "")) or None,
                    arguments=arguments if isinstance(arguments, dict) else {},
                )
            )
        elif kind == "tool_result":
            steps.append(
                Step(
                    "tool_result",
                    _block_text(block.get("content")),
                    tool_id=str(block.get("tool_use_id", "")) or None,
                    is_error=block.get("is_error") is True,
                )
            )
    error = data.get("error")
    if data["type"] == "assistant" and isinstance(error, str) and error:
        text = " ".join(step.text for step in steps if step.kind == "text")
        steps = [Step("error", f"{error}: {text}" if text else error, is_error=True)]
    return steps


def _final(data: dict[str, Any]) -> Final:
    result = data.get("result")
    errors = data.get("errors")
    usage = data.get("usage")
    cost = data.get("total_cost_usd")
    session = data.get("session_id")
    return Final(
        text=result if isinstance(result, str) else "",
        is_error=data.get("is_error") is True or data.get("subtype") != "success",
        subtype=str(data.get("subtype", "")),
        num_turns=_int(data.get("num_turns")),
        duration_ms=_int(data.get("duration_ms")),
        usage=usage if isinstance(usage, dict) else {},
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (),
        session_id=session if isinstance(session, str) else None,
    )


def parse_stream_line(line: str) -> list[Step] | Final | None:
    """One stream-json line: its steps, the Final (the ``result`` line), or None for
    anything else (blank, not JSON, an unknown type). Never raises on the line's text."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == "result":
        return _final(data)
    if kind in ("assistant", "user"):
        return _message_steps(data)
    if kind == "system":
        subtype = str(data.get("subtype", ""))
        if subtype == "init":
            details = {key: data[key] for key in _INIT_KEYS if key in data}
        else:
            details = {k: v for k, v in data.items() if k not in ("type", "uuid", "session_id")}
        return [Step("system", subtype, arguments=details)]
    return None


# --- the process -----------------------------------------------------------------------


def _signal_all(pgid: int, pids: set[int], signum: int) -> None:
    """``signum`` to the CLI's group, to each of ``pids`` and to their own groups."""
    signal_pid(pgid, signum, group=True)
    signal_tree(pids, signum)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the CLI and everything it started, a short grace, then SIGKILL."""
    pgid = proc.pid  # start_new_session: the CLI leads its own group
    tree = proc_descendants(pgid)
    known = identities(tree)  # by start time: a pid reused during the grace is not ours
    try:
        _signal_all(pgid, tree, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TERM_GRACE):
                await proc.wait()
    finally:
        # Whatever the CLI did not stop (or everything, when cancelled mid-grace);
        # processes started during the grace are found again.
        _signal_all(pgid, still_alive(known) | proc_descendants(pgid), signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TERM_GRACE):
            await proc.wait()


def _stderr_tail(run: ClaudeRun) -> str:
    try:
        with open(run.stderr_file, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - STDERR_TAIL))
            tail = handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    if run.token:
        tail = tail.replace(run.token, "[redacted]")
    return tail


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """The stream's lines, however long (up to MAX_LINE; longer ones are dropped)."""
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await stream.read(1 << 16)
        if not chunk:
            break
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if skipping:
                skipping = False
                continue
            yield line.decode("utf-8", "replace")
        if len(buffer) > MAX_LINE:
            buffer.clear()
            skipping = True
    if buffer and not skipping:
        yield bytes(buffer).decode("utf-8", "replace")


async def run_claude(
    run: ClaudeRun, on_step: Callable[[Step], Awaitable[None]], *, timeout: float
) -> Final:
    """Run the CLI once; ``on_step`` sees each step as it happens; returns the Final.

    The CLI and everything it starts are stopped (SIGTERM, a short grace, SIGKILL)
    when ``timeout`` seconds pass (WaitTimeoutError) or the caller is cancelled
    (CancelledError goes on). A CLI that ends without a result line raises
    AgentSpawnError with its exit status and the tail of its stderr.
    """
    prepare(run)
    started = time.monotonic()
    # Raw descriptors (no blocking file objects in a coroutine); the child keeps its copies.
    stdin = os.open(run.prompt_file, os.O_RDONLY)
    try:
        stderr = os.open(run.stderr_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            argv = claude_argv(run)
            if run.sandbox is not None:
                argv = run.sandbox.argv(argv, cwd=run.workspace)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=run.workspace,
                env=claude_env(run),
                stdin=stdin,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        except OSError as exc:
            raise AgentSpawnError(
                f"Could not start the Claude Code CLI {run.binary}: {exc}"
            ) from exc
        finally:
            os.close(stderr)
    finally:
        os.close(stdin)
    assert proc.stdout is not None
    final: Final | None = None
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            async for line in _lines(proc.stdout):
                parsed = parse_stream_line(line)
                if isinstance(parsed, Final):
                    final = parsed
                elif parsed:
                    for step in parsed:
                        await on_step(step)
            code = await proc.wait()
    except TimeoutError:
        await _stop(proc)
        if not deadline.expired():
            raise
        raise WaitTimeoutError(
            f"The Claude Code run in {run.workspace} did not finish within {timeout:g} s; "
            "it and every process it started were stopped."
        ) from None
    except BaseException:
        await _stop(proc)
        raise
    finally:
        # A clean exit can leave a tool's background process in the CLI's group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if final is not None:
        return final
    tail = _stderr_tail(run)
    raise AgentSpawnError(
        f"The Claude Code CLI exited with status {code} after "
        f"{time.monotonic() - started:.1f} s without a result"
        + (f"; its stderr ends with:\n{tail}" if tail else " (nothing on stderr).")
    )
