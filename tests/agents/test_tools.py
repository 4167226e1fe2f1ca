from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from cfn.agents.tools import Workspace, execute
from cfn.providers.types import ToolCall
from cfn.system.sandbox import usable as sandbox_usable


def call(name: str, **args: object) -> ToolCall:
    return ToolCall(id="c1", name=name, arguments=json.dumps(args))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root, command_timeout=5)


async def test_write_read_list(ws: Workspace) -> None:
    assert await execute(
        ws, call("write_file", path="src/a.py", content="x = 1")
    ) == "wrote 5 bytes to src/a.py"
    assert await execute(ws, call("read_file", path="src/a.py")) == "x = 1"
    assert await execute(ws, call("list_files")) == "src/a.py"
    assert ws.written == ["src/a.py"]


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "a/../../x", "", "a\x00b"])
async def test_paths_outside_refused(ws: Workspace, path: str, tmp_path: Path) -> None:
    result = await execute(ws, call("write_file", path=path, content="pwned"))
    assert result.startswith("error:")
    assert not (tmp_path / "outside.txt").exists()
    assert (await execute(ws, call("read_file", path=path))).startswith("error:")


async def test_symlink_escape_refused(ws: Workspace, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (ws.root / "link").symlink_to(secret)
    result = await execute(ws, call("read_file", path="link"))
    assert "outside the workspace" in result and "top secret" not in result


async def test_run_command_in_workspace(ws: Workspace) -> None:
    result = await execute(ws, call("run_command", command="pwd; echo hi >&2; exit 3"))
    assert result.splitlines() == ["exit: 3", str(ws.root), "hi"]


async def test_run_command_timeout_kills_group(ws: Workspace) -> None:
    start = time.monotonic()
    result = await execute(ws, call("run_command", command="sleep 30 & sleep 30", timeout=0.5))
    assert result == "exit: killed after 0.5 s timeout"
    assert time.monotonic() - start < 5


async def test_bad_calls(ws: Workspace) -> None:
    assert (await execute(ws, call("rm_rf"))).startswith("error: unknown tool")
    bad = ToolCall(id="c", name="read_file", arguments="{not json")
    assert (await execute(ws, bad)).startswith("error: arguments are not valid JSON")
    assert (await execute(ws, call("write_file", path="a", content=3))).startswith("error:")
    assert (await execute(ws, call("run_command", command=" "))).startswith("error:")
    # NaN and infinity from a model's JSON: refused, not a command killed at once
    for timeout in (float("nan"), float("inf"), -1, 0, True, "5"):
        reply = await execute(ws, call("run_command", command="echo ran", timeout=timeout))
        assert reply.startswith("error: timeout must be"), (timeout, reply)


@pytest.mark.skipif(not sandbox_usable("auto"), reason="bwrap does not work here")
async def test_run_command_is_sandboxed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command the model runs sees the workspace, not cfn's state directory inside the
    checkout nor a file outside it, and gets no coordination credential; a timeout still
    ends everything it started."""
    checkout = tmp_path / "checkout"
    state = checkout / ".cfn"
    state.mkdir(parents=True)
    (state / "token-secret").write_text("state-secret")
    (tmp_path / "outside.txt").write_text("outside-secret")
    monkeypatch.setenv("REDIS_URL", "redis://cfn:T:impl-1-1:acl-secret@127.0.0.1:1/0")
    monkeypatch.setenv("CFN_MCP_TOKEN", "mcp-secret")
    ws = Workspace(checkout, command_timeout=5, sandbox_mode="on", hidden=(state,))
    result = await execute(
        ws,
        call(
            "run_command",
            command=f"id -u; ls -A .cfn | wc -l; cat {tmp_path}/outside.txt; env; echo made > f",
        ),
    )
    lines = result.splitlines()
    assert lines[:3] == ["exit: 0", "1000", "0"], result
    for secret in ("state-secret", "outside-secret", "acl-secret", "mcp-secret"):
        assert secret not in result
    assert (checkout / "f").read_text() == "made\n"
    marker = tmp_path / "checkout" / "late"
    start = time.monotonic()
    result = await execute(
        ws, call("run_command", command="(sleep 2; touch late) & sleep 30", timeout=0.5)
    )
    assert result == "exit: killed after 0.5 s timeout"
    assert time.monotonic() - start < 5
    await asyncio.sleep(2.5)
    assert not marker.exists()  # the background command went with the sandbox
