"""The built-in tools an agent can use, confined to its workspace.

Every path must stay inside the workspace, and the kernel checks it when the
file is opened (``cfn.system.beneath``: ``openat2`` with ``RESOLVE_BENEATH``),
so a symlink swapped in by the agent's own command between a check and an open
cannot send a read or a write outside; anything else is refused with a message
the model can read. Reads are bounded (a huge file is not read whole), a FIFO
does not hang a read, and command output is truncated to keep a conversation
bounded.
``run_command`` runs ``bash -c`` in the workspace with a timeout and a clean
process group, so a command that hangs is killed with everything it started.
The command runs in a sandbox (``cfn.system.sandbox``, per ``CFN_SANDBOX``):
it sees the workspace, the system's programs and the network, not cfn's state
directory or the rest of the disk, and its environment holds no coordination
credential (the agent's Redis user, its MCP token) in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import posixpath
import signal
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn.providers.types import ToolCall, ToolSpec
from cfn.system.beneath import EscapeError, makedirs_beneath, open_beneath
from cfn.system.sandbox import Sandbox, SandboxUnavailableError, scrubbed, usable

MAX_READ = 64 * 1024
MAX_WRITE = 1024 * 1024
MAX_OUTPUT = 16 * 1024
MAX_LIST = 500
DEFAULT_COMMAND_TIMEOUT = 60.0


class ToolError(Exception):
    """A tool call that cannot be done; its message goes back to the model."""


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


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
    #: CFN_SANDBOX for ``run_command`` (auto, on, off), and what a command must not see.
    sandbox_mode: str = "off"
    hidden: tuple[Path, ...] = ()

    _fd: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    def sandbox(self) -> Sandbox | None:
        """Where ``run_command`` runs its commands (None: directly); decided on first use."""
        if not usable(self.sandbox_mode):
            return None
        return Sandbox(self.root, network=True, hidden=self.hidden)

    def relative(self, path: object) -> str:
        """``path`` as a normalised path relative to the workspace (an absolute one must
        name a place inside it); ToolError when it leaves the workspace on its face.
        Symlinks are the kernel's to check, when the file is opened (cfn.system.beneath)."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ToolError("path must be a non-empty string")
        text = path
        if posixpath.isabs(text):
            text = posixpath.relpath(posixpath.normpath(text), self.root.as_posix())
        normal = posixpath.normpath(text)
        if normal == ".." or normal.startswith("../"):
            raise ToolError(f"path {path!r} is outside the workspace; refused")
        return normal

    def _root_fd(self) -> int:
        """The workspace directory, opened once: every path is opened relative to it."""
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def _open(self, path: object, flags: int) -> tuple[str, int]:
        rel = self.relative(path)
        try:
            return rel, open_beneath(self._root_fd(), rel, flags)
        except EscapeError:
            raise ToolError(f"path {path!r} is outside the workspace; refused") from None

    # --- the tools ----------------------------------------------------------------

    def read_file(self, path: object) -> str:
        # O_NONBLOCK: a FIFO planted in the workspace must not hang the agent.
        _rel, fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolError(f"{path!r} is not a file")
            data = _read_at_most(fd, MAX_READ + 1)  # never the whole of a huge file
        finally:
            os.close(fd)
        return _truncate(data.decode("utf-8", errors="replace"), MAX_READ)

    def write_file(self, path: object, content: object) -> str:
        rel = self.relative(path)
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        data = content.encode()
        if len(data) > MAX_WRITE:
            raise ToolError(f"content over {MAX_WRITE} bytes; refused")
        if rel == ".":
            raise ToolError(f"{path!r} is a directory")
        parent = posixpath.dirname(rel)
        try:
            if parent:
                makedirs_beneath(self._root_fd(), parent)
        except EscapeError:
            raise ToolError(f"path {path!r} is outside the workspace; refused") from None
        except (FileExistsError, NotADirectoryError):
            raise ToolError(f"a parent of {path!r} is not a directory") from None
        try:
            _, fd = self._open(rel, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK)
        except IsADirectoryError:
            raise ToolError(f"{path!r} is a directory") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolError(f"{path!r} is not a regular file")
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        if rel not in self.written:
            self.written.append(rel)
        return f"wrote {len(data)} bytes to {rel}"

    def list_files(self, path: object = ".") -> str:
        rel, fd = self._open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
        entries: list[str] = []
        try:
            # fwalk: each directory opened relative to its parent, symlinks not followed.
            for dirpath, dirnames, filenames, _dir_fd in os.fwalk(".", dir_fd=fd):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    entries.append(posixpath.normpath(posixpath.join(rel, dirpath, name)))
                    if len(entries) >= MAX_LIST:
                        return "\n".join(entries) + "\n… [more files not listed]"
        except NotADirectoryError:
            raise ToolError(f"{path!r} is not a directory") from None
        finally:
            os.close(fd)
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
        argv = ["bash", "-c", command]
        sandbox = self.sandbox()
        if sandbox is not None:
            argv = sandbox.argv(argv)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.root,
            env=scrubbed(os.environ),
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
    except (ToolError, SandboxUnavailableError) as exc:
        return f"error: {exc}"
    except OSError as exc:
        return f"error: {exc.strerror or exc}"


async def _sync(fn: Callable[..., str], *args: object) -> str:
    return fn(*args)
