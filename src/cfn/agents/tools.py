"""The built-in tools an agent can use, confined to its workspace.

Every path is resolved (symlinks included) and must stay inside the
workspace; anything else is refused with a message the model can read. File
reads and command output are truncated to keep a conversation bounded.
``run_command`` runs ``bash -c`` in the workspace with a timeout and a clean
process group, so a command that hangs is killed with everything it started.
It is not a sandbox against a hostile model: agents run with the limits
their spawner gives them (cgroups, a container), not with fewer rights.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn.providers.types import ToolCall, ToolSpec

MAX_READ = 64 * 1024
MAX_WRITE = 1024 * 1024
MAX_OUTPUT = 16 * 1024
MAX_LIST = 500
DEFAULT_COMMAND_TIMEOUT = 60.0


class ToolError(Exception):
    """A tool call that cannot be done; its message goes back to the model."""


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [truncated, {len(text) - limit} more characters]"


@dataclass
class Workspace:
    """A directory the agent may read, write and run commands in."""

    root: Path
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    written: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    def resolve(self, relative: object) -> Path:
        if not isinstance(relative, str) or not relative or "\x00" in relative:
            raise ToolError("path must be a non-empty string")
        candidate = (self.root / relative).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise ToolError(f"path {relative!r} is outside the workspace; refused")
        return candidate

    # --- the tools ----------------------------------------------------------------

    def read_file(self, path: object) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file")
        data = target.read_bytes()[: MAX_READ + 1]
        return _truncate(data.decode("utf-8", errors="replace"), MAX_READ)

    def write_file(self, path: object, content: object) -> str:
        target = self.resolve(path)
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if len(content.encode()) > MAX_WRITE:
            raise ToolError(f"content over {MAX_WRITE} bytes; refused")
        if target == self.root or target.is_dir():
            raise ToolError(f"{path!r} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        rel = target.relative_to(self.root).as_posix()
        if rel not in self.written:
            self.written.append(rel)
        return f"wrote {len(content.encode())} bytes to {rel}"

    def list_files(self, path: object = ".") -> str:
        target = self.resolve(path or ".")
        if not target.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        entries: list[str] = []
        for dirpath, dirnames, filenames in os.walk(target):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                entries.append((Path(dirpath) / name).relative_to(self.root).as_posix())
                if len(entries) >= MAX_LIST:
                    return "\n".join(entries) + "\n… [more files not listed]"
        return "\n".join(entries) if entries else "(empty)"

    async def run_command(self, command: object, timeout: object = None) -> str:
        if not isinstance(command, str) or not command.strip():
            raise ToolError("command must be a non-empty string")
        limit = self.command_timeout
        if timeout is not None:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, int | float)
                or not math.isfinite(timeout)
                or timeout <= 0
            ):
                raise ToolError("timeout must be a positive, finite number of seconds")
            limit = min(float(timeout), self.command_timeout)
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(limit):
                out, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return f"exit: killed after {limit:g} s timeout"
        text = _truncate(out.decode("utf-8", errors="replace"), MAX_OUTPUT)
        return f"exit: {proc.returncode}\n{text}"


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "read_file",
        "Read a text file in the workspace.",
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    ),
    ToolSpec(
        "write_file",
        "Create or overwrite a text file in the workspace.",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    ),
    ToolSpec(
        "list_files",
        "List files under a directory of the workspace.",
        {"type": "object", "properties": {"path": {"type": "string"}}},
    ),
    ToolSpec(
        "run_command",
        "Run a bash command in the workspace (with a timeout).",
        {
            "type": "object",
            "properties": {"command": {"type": "string"}, "timeout": {"type": "number"}},
            "required": ["command"],
        },
    ),
)


async def execute(workspace: Workspace, call: ToolCall) -> str:
    """Run one tool call; any problem becomes an ``error: ...`` text for the model."""
    handlers: dict[str, Callable[[dict[str, Any]], Awaitable[str]]] = {
        "read_file": lambda a: _sync(workspace.read_file, a.get("path")),
        "write_file": lambda a: _sync(workspace.write_file, a.get("path"), a.get("content")),
        "list_files": lambda a: _sync(workspace.list_files, a.get("path", ".")),
        "run_command": lambda a: workspace.run_command(a.get("command"), a.get("timeout")),
    }
    handler = handlers.get(call.name)
    if handler is None:
        return f"error: unknown tool {call.name!r}"
    try:
        args = json.loads(call.arguments or "{}")
    except ValueError as exc:
        return f"error: arguments are not valid JSON ({exc})"
    if not isinstance(args, dict):
        return "error: arguments must be a JSON object"
    try:
        return await handler(args)
    except ToolError as exc:
        return f"error: {exc}"
    except OSError as exc:
        return f"error: {exc.strerror or exc}"


async def _sync(fn: Callable[..., str], *args: object) -> str:
    return fn(*args)
