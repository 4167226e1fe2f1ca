"""Commands a model drives, run where they see only what their task needs (bubblewrap).

An agent's model may be hostile (a prompt injection in a file it read is enough),
and whatever its tools let it run runs with the agent's rights. A command it
drives (the builtin runtime's ``run_command``, the Claude Code CLI with its Bash
and file tools, the Security Scanner's bandit and detect-secrets on a workspace
it wrote) therefore runs under ``bwrap`` (Debian's ``bubblewrap``):

- **Its own namespaces** (``--unshare-all``): user, mount, PID, IPC, UTS, cgroup
  and, unless the command needs it, network. In its user namespace it is uid and
  gid 1000 with no capabilities on the machine; ``--new-session`` keeps it off the
  caller's terminal and ``--die-with-parent`` ends it with its caller.
- **A file system of bound paths only**: the system directories (``/usr`` and the
  merged-usr links) and a few files of ``/etc`` (users, name resolution, CA
  certificates) read-only; the interpreter and the virtual environment read-only;
  the workspace (read-write or read-only) and whatever else the caller names;
  fresh ``/proc``, ``/dev`` and ``/tmp``. cfn's state directory (token secrets,
  databases, other agents' contexts and logs), ``$HOME``, other workspaces and the
  rest of the disk are not there. A symlink in the workspace that points outside
  it dangles, so a scanner or a tool cannot be steered out by one.
- **The environment its caller gives it**, passed as bwrap's own environment, never
  on its command line (``/proc/<pid>/cmdline`` is readable by every user). Callers
  remove coordination credentials first (:func:`scrubbed`).

Why bubblewrap: it needs no daemon and no image, starts in a few milliseconds,
and works as root and as a plain user (unprivileged user namespaces); Podman is
there too, but an agent already in a container would need nested containers.

``CFN_SANDBOX`` (cfn.settings) chooses: ``auto`` uses bwrap where it works (one
probe per process) and runs commands directly otherwise, saying so once in the
log; ``on`` refuses to run a command without it; ``off`` never uses it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cfn.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "SANDBOX_GID",
    "SANDBOX_UID",
    "Sandbox",
    "SandboxUnavailableError",
    "bwrap_path",
    "scrubbed",
    "usable",
    "warm",
]

SANDBOX_UID = 1000
SANDBOX_GID = 1000
#: Read-only system paths, bound when they exist (merged-usr links recreated as links).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
#: What of /etc a command needs: users and groups (names, no hashes), name resolution,
#: CA certificates, the dynamic linker's cache, Debian's alternatives, the time zone.
ETC_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/gitconfig",
)
#: Variables a sandboxed command never gets: how the agent reaches Redis and cfn's
#: gateways as itself (its ACL password, its MCP token), and cfn's own secrets.
CREDENTIAL_PREFIXES = ("REDIS", "CFN_", "SENTINEL")
CREDENTIAL_NAMES = frozenset({"REDISCLI_AUTH", "PGPASSWORD", "DATABASE_URL"})
PROBE_TIMEOUT = 10.0


class SandboxUnavailableError(ConfigError):
    """bwrap is required (``CFN_SANDBOX=on``) but missing or not working here."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def _probe(bwrap: str) -> str | None:
    """None when ``bwrap`` can make a sandbox here, else why not (once per process)."""
    try:
        probe = [
            bwrap, "--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
            "--die-with-parent", *_system_binds(), "--proc", "/proc", "--dev", "/dev", "true",
        ]  # fmt: skip
        proc = subprocess.run(
            probe,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode != 0:
        return proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
    return None


def usable(mode: str) -> bool:
    """Whether commands are to be sandboxed under ``mode`` (``auto``, ``on``, ``off``).

    ``on`` raises SandboxUnavailableError when bwrap is missing or does not work.
    """
    if mode == "off":
        return False
    bwrap = bwrap_path()
    why = "bwrap is not installed (Debian: bubblewrap)" if bwrap is None else _probe(bwrap)
    if why is None:
        return True
    if mode == "on":
        raise SandboxUnavailableError(f"a sandbox is required (CFN_SANDBOX=on) but {why}")
    _warn_once(why)
    return False


def warm() -> None:
    """Probe bwrap now (what a preloaded server does, so that its forks need not)."""
    bwrap = bwrap_path()
    if bwrap is not None:
        _probe(bwrap)


@functools.cache
def _warn_once(why: str) -> None:
    log.warning("commands run without a sandbox (CFN_SANDBOX=auto): %s", why)


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    return args


def scrubbed(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without coordination credentials and cfn's settings (see the module)."""
    return {
        k: v
        for k, v in env.items()
        if not k.startswith(CREDENTIAL_PREFIXES) and k not in CREDENTIAL_NAMES
    }


def _interpreter_paths() -> tuple[Path, ...]:
    """This Python (its installation and the virtual environment): tools such as bandit
    run with it, and a workspace's own scripts may too."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    return tuple(sorted(paths))


@dataclass(frozen=True)
class Sandbox:
    """What a sandboxed command sees: ``workspace`` (read-write unless ``read_only``),
    the extra ``writable`` and ``readable`` paths, and the network when ``network``.
    ``hidden`` paths (cfn's state directory) are covered by an empty tmpfs wherever
    they lie inside a bound path (a workspace that is the checkout holding ``.cfn``)."""

    workspace: Path
    read_only: bool = False
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    network: bool = False
    home: str = "/tmp/home"  # noqa: S108 - the sandbox's own private tmpfs, not the host's

    def argv(self, command: Sequence[str], *, cwd: Path | None = None) -> list[str]:
        """``bwrap ... -- command``: run it with ``env=`` of the caller's choice (bwrap
        passes its own environment on, ``HOME`` set to the sandbox's)."""
        bwrap = bwrap_path()
        if bwrap is None:
            raise SandboxUnavailableError("bwrap is not installed (Debian: bubblewrap)")
        args = [
            bwrap,
            "--unshare-all",
            *(["--share-net"] if self.network else []),
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
            "--die-with-parent", "--new-session",
            *_system_binds(),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",  # noqa: S108 (its own)
            "--dir", self.home, "--setenv", "HOME", self.home,
        ]  # fmt: skip
        bound: list[Path] = []
        for path in _interpreter_paths():
            if path.exists():
                args += ["--ro-bind", str(path), str(path)]
                bound.append(path)
        workspace = str(self.workspace)
        args += ["--ro-bind" if self.read_only else "--bind", workspace, workspace]
        bound.append(self.workspace)
        for hidden in self.hidden:
            if any(hidden != b and hidden.is_relative_to(b) for b in bound):
                args += ["--tmpfs", str(hidden)]
        # After the tmpfs: a path of the caller's may lie inside a hidden one (an
        # agent's own Claude Code config directory in the state directory).
        for path in self.readable:
            if path.exists():
                args += ["--ro-bind", str(path), str(path)]
        for path in self.writable:
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", str(cwd or self.workspace), "--", *command]
        return args
